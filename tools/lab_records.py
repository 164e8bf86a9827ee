"""Per-prompt validation records (``callbacks.ValidationRecords``) → the fair lab's metrics and paired intervals.

Pure functions over lists of records (dicts with ``id``, ``n``, ``c``, ``answers``, ``correct``, ``entropy_sum``,
``tokens``, ``answer_entropy_sum``, ``answer_tokens``), tested on hand-made records:

- ``pass_at_k_mean``: unbiased pass@k (Chen et al. 2021) averaged over prompts;
- ``rare_ids`` / ``coverage``: the prompts the untrained model solves at most ``max_solved`` times in n, and the
  share of them a policy solves at least once;
- ``entropy_split``: token entropy on the answer tokens and on the rest;
- ``paired_bootstrap``: a 95% interval for a per-prompt difference averaged over prompts and seeds (its
  seed-level companion, a t interval over per-seed values, is ``lab.seed_interval``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from epr_lightning.callbacks import read_validation_records
from epr_lightning.metrics import distinct_correct as group_distinct_correct
from epr_lightning.metrics import pass_at_k

KS = (1, 2, 4, 8, 16)
Record = dict


def load_records(log_dir: str | Path) -> dict[int, list[Record]]:
    """iteration → records of every ``val_groups/iteration_<i>.jsonl`` of a run."""
    paths = sorted(Path(log_dir).glob("val_groups/iteration_*.jsonl"))
    return {int(path.stem.split("_")[1]): read_validation_records(path) for path in paths}


def pass_at_k_mean(records: Sequence[Record], k: int) -> float:
    """Unbiased pass@k averaged over prompts (NaN when a prompt has fewer than k samples, or no prompts)."""
    values = [prompt_pass_at_k(r, k) for r in records]
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return sum(values) / len(values)


def rare_ids(records: Sequence[Record], max_solved: int = 2) -> set[str]:
    """Ids of the prompts solved at most ``max_solved`` times (of their n samples)."""
    return {r["id"] for r in records if r["c"] <= max_solved}


def coverage(records: Sequence[Record], ids: set[str]) -> float:
    """Share of the prompts in ``ids`` solved at least once (NaN when none of them is in ``records``)."""
    mine = [r for r in records if r["id"] in ids]
    return sum(r["c"] > 0 for r in mine) / len(mine) if mine else math.nan


def distinct_correct(records: Sequence[Record]) -> float:
    """Mean number of distinct correct answers per prompt."""
    if not records:
        return math.nan
    return sum(group_distinct_correct(r["answers"], r["correct"]) for r in records) / len(records)


def entropy_split(records: Sequence[Record]) -> tuple[float, float]:
    """(entropy per answer token, entropy per other completion token), pooled over all samples."""
    h, n = sum(r["entropy_sum"] for r in records), sum(r["tokens"] for r in records)
    ha, na = sum(r["answer_entropy_sum"] for r in records), sum(r["answer_tokens"] for r in records)
    return (ha / na if na else math.nan), ((h - ha) / (n - na) if n - na else math.nan)


def summarize(
    first: Sequence[Record], last: Sequence[Record], rare: set[str] | None = None
) -> dict[str, float]:
    """A run's per-prompt columns: pass_at_k (the last validation) for k in KS (up to n), the same at the start,
    coverage of the rarely-solved prompts (from ``first`` unless ``rare`` is given), distinct correct answers,
    entropy on answer / other tokens and the entropy change of the whole completion."""
    rare = rare_ids(first) if rare is None else rare
    out: dict[str, float] = {}
    for k in KS:
        out[f"pass_at_{k}"] = pass_at_k_mean(last, k)
        out[f"pass_at_{k}_initial"] = pass_at_k_mean(first, k)
    out["rare_prompts"] = float(len(rare))
    out["coverage_rare"] = coverage(last, rare)
    out["coverage_rare_initial"] = coverage(first, rare)
    out["distinct_correct_per_prompt"] = distinct_correct(last)
    out["entropy_answer"], out["entropy_rest"] = entropy_split(last)
    out["entropy_answer_initial"], out["entropy_rest_initial"] = entropy_split(first)
    return out


def prompt_pass_at_k(record: Record, k: int) -> float:
    """One prompt's unbiased pass@k (NaN when it has fewer than k samples)."""
    return pass_at_k(record["n"], record["c"], k) if record["n"] >= k else math.nan


def per_prompt(records: Sequence[Record], k: int) -> dict[str, float]:
    """id → that prompt's unbiased pass@k (NaN when it has fewer than k samples)."""
    return {r["id"]: prompt_pass_at_k(r, k) for r in records}


def paired_bootstrap(
    diffs: Sequence[Sequence[float]], n_boot: int = 4000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high) of the mean over seeds of the mean over prompts of a per-prompt difference.

    ``diffs[s][p]`` is the difference for prompt p in seed s (the method minus its base, on the same prompts). The
    interval is the percentile bootstrap: prompts are resampled with replacement within each seed, ``n_boot``
    times; seeds stay as they are (with 3 seeds, resampling them says little).
    """
    groups = [list(d) for d in diffs if len(d)]
    if not groups:
        return math.nan, math.nan, math.nan
    mean = sum(sum(d) / len(d) for d in groups) / len(groups)
    rng = random.Random(seed)
    stats = []
    for _ in range(n_boot):
        total = 0.0
        for d in groups:
            total += sum(d[rng.randrange(len(d))] for _ in range(len(d))) / len(d)
        stats.append(total / len(groups))
    stats.sort()
    tail = (1.0 - level) / 2.0
    low = stats[max(0, math.floor(tail * n_boot))]
    high = stats[min(n_boot - 1, math.ceil((1.0 - tail) * n_boot) - 1)]
    return mean, low, high
