"""Same-base pairs and the fair lab's pre-registered claims: a method against the base it modifies, per seed,
with paired bootstrap intervals over the validation prompts (``lab_records.paired_bootstrap``).

Pure functions over the lab's runs (``{(method, seed): run}`` with ``run["first"]`` / ``run["last"]`` the first
and last validation's per-prompt records and ``run["entropy_change_pct"]``), tested on hand-made runs.

The claims, fixed before the runs (docs/results.md, "The fair lab"), for a method M and its base B over the
seeds both ran: (a) M's pass@16 ≥ B's (mean over seeds of the per-prompt difference ≥ 0; the interval is
reported); (b) M's pass@1 ≥ B's − 0.05; (c) M's validation entropy change, averaged over seeds, within ±15%.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # tools/ is a folder of scripts
import lab_records as lr

PASS16_MARGIN, PASS1_MARGIN, ENTROPY_BAND_PCT = 0.0, 0.05, 15.0


def _common_seeds(runs: dict, base: str, method: str) -> list:
    return sorted(s for (m, s) in runs if m == method and (base, s) in runs)


def prompt_differences(runs: dict, base: str, method: str, k: int, which: str = "last") -> list[list[float]]:
    """Per seed (both ran it), method − base in pass@k on each prompt both validated."""
    diffs = []
    for s in _common_seeds(runs, base, method):
        mine, theirs = lr.per_prompt(runs[method, s][which], k), lr.per_prompt(runs[base, s][which], k)
        diffs.append([mine[i] - theirs[i] for i in mine if i in theirs])
    return diffs


def paired_difference(
    runs: dict, base: str, method: str, k: int, which: str = "last", n_boot: int = 4000
) -> tuple[float, float, float, int]:
    """(mean, low, high, seeds) of method − base in pass@k over the prompts both validated, per seed."""
    diffs = prompt_differences(runs, base, method, k, which)
    mean, low, high = lr.paired_bootstrap(diffs, n_boot=n_boot)
    return mean, low, high, len(diffs)


def seed_differences(runs: dict, base: str, method: str) -> dict[str, list[float]]:
    """Per seed: method − base in mean pass@1 and pass@16 over the shared prompts, and in the entropy change (%)."""
    out = {
        f"pass@{k}": [sum(d) / len(d) for d in prompt_differences(runs, base, method, k) if d]
        for k in (1, 16)
    }
    out["entropy change %"] = [
        runs[method, s]["entropy_change_pct"] - runs[base, s]["entropy_change_pct"]
        for s in _common_seeds(runs, base, method)
    ]
    return out


def seed_noise_section(runs: dict, pairs: Sequence[tuple[str, str]]) -> str:
    """Markdown: each pair's per-seed differences with their seed-level 95% t interval, and the reading the
    sweep registered: an effect on a metric only where that interval excludes 0."""
    lines = [
        "| base → method | seeds | Δ pass@1 | Δ pass@16 | Δ entropy change (points) | reading |",
        "|---|---|---|---|---|---|",
    ]
    for base, method in pairs:
        diffs = seed_differences(runs, base, method)
        if not diffs["entropy change %"]:
            continue
        cells, effects = [], []
        for name, values in diffs.items():
            mean, low, high = lab.seed_interval(values)
            fmt = "{:+.1f}" if name.startswith("entropy") else "{:+.3f}"
            per_seed = ", ".join(fmt.format(v) for v in values)
            interval = "" if math.isnan(low) else f" [{fmt.format(low)}, {fmt.format(high)}]"
            cells.append(f"{fmt.format(mean)}{interval} ({per_seed})")
            if not math.isnan(low) and (low > 0 or high < 0):
                effects.append(name)
        reading = (
            "effect on " + ", ".join(effects) if effects else "no effect distinguishable from seed noise"
        )
        lines.append(
            f"| {base} → {method} | {len(diffs['entropy change %'])} | "
            + " | ".join(cells)
            + f" | {reading} |"
        )
    return "\n".join(lines)


def claims(runs: dict, base: str, method: str, n_boot: int = 4000) -> dict:
    """The three pre-registered claims for ``method`` against ``base``: values, intervals, holds or not."""
    d16 = paired_difference(runs, base, method, 16, n_boot=n_boot)
    d1 = paired_difference(runs, base, method, 1, n_boot=n_boot)
    seeds = _common_seeds(runs, base, method)
    changes = [runs[method, s]["entropy_change_pct"] for s in seeds]
    mean_change = sum(changes) / len(changes) if changes else math.nan
    return {
        "seeds": seeds,
        "a": {"diff": d16[:3], "holds": math.isfinite(d16[0]) and d16[0] >= PASS16_MARGIN},
        "b": {"diff": d1[:3], "holds": math.isfinite(d1[0]) and d1[0] >= -PASS1_MARGIN},
        "c": {"change": mean_change, "per_seed": changes,
              "holds": math.isfinite(mean_change) and abs(mean_change) <= ENTROPY_BAND_PCT},
    }  # fmt: skip


def _interval(mean: float, low: float, high: float) -> str:
    return "–" if not math.isfinite(mean) else f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def pair_table(
    runs: dict, pairs: Sequence[tuple[str, str]], ks: Sequence[int] = lr.KS, n_boot: int = 4000
) -> str:
    """Markdown: one line per (base, method) pair, the paired difference in pass@k at the last validation
    (mean over seeds [95% interval]) and both entropy changes (mean over seeds)."""
    header = ["base → method", "seeds", *(f"Δ pass@{k}" for k in ks), "entropy change % base / method"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for base, method in pairs:
        seeds = _common_seeds(runs, base, method)
        if not seeds:
            continue
        cells = [f"{base} → {method}", str(len(seeds))]
        cells += [_interval(*paired_difference(runs, base, method, k, n_boot=n_boot)[:3]) for k in ks]
        hb = sum(runs[base, s]["entropy_change_pct"] for s in seeds) / len(seeds)
        hm = sum(runs[method, s]["entropy_change_pct"] for s in seeds) / len(seeds)
        cells.append(f"{hb:+.1f} / {hm:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_section(runs: dict, pairs: Sequence[tuple[str, str]], n_boot: int = 4000) -> str:
    """Markdown: each pre-registered claim of each pair as holds / does not hold, with its numbers."""
    word = {True: "**holds**", False: "**does not hold**"}
    lines = [
        "| base → method | seeds | (a) Δ pass@16 ≥ 0 | (b) Δ pass@1 ≥ −0.05 | (c) entropy change within ±15% |",
        "|---|---|---|---|---|",
    ]
    for base, method in pairs:
        c = claims(runs, base, method, n_boot=n_boot)
        if not c["seeds"]:
            continue
        per_seed = ", ".join(f"{v:+.0f}" for v in c["c"]["per_seed"])
        lines.append(
            f"| {base} → {method} | {len(c['seeds'])} | {_interval(*c['a']['diff'])}: {word[c['a']['holds']]} | "
            f"{_interval(*c['b']['diff'])}: {word[c['b']['holds']]} | {c['c']['change']:+.1f}% "
            f"(seeds {per_seed}): {word[c['c']['holds']]} |"
        )
    return "\n".join(lines)


#: the fair lab's per-prompt columns (``record_summary``), shown in their own table
FAIR_COLUMNS = (
    *((f"pass_at_{k}", f"pass@{k}") for k in lr.KS),
    ("pass_at_16_initial", "pass@16 at start"),
    ("coverage_rare", "rare prompts solved"),
    ("distinct_correct_per_prompt", "distinct correct / prompt"),
    ("entropy_answer", "H answer tokens"),
    ("entropy_rest", "H other tokens"),
    ("entropy_change_pct", "entropy change % (val)"),
    ("reward_final", "final reward"),
    ("shaping_neg_ratio", "wrong answers' \\|A'\\|/\\|A\\|"),
    ("shaping_neg_zeroed_frac", "wrong-answer tokens zeroed"),
)


def record_summary(res: dict) -> dict:
    """The per-prompt columns of a run (pass@k for k = 1..16, coverage of the rarely solved prompts, entropy on
    answer / other tokens) from its first, middle and last validation; none for a run without records."""
    groups = {int(i): r for i, r in res.get("val_groups", {}).items()}
    if len(groups) < 2:
        return {}
    its = sorted(groups)
    out = lr.summarize(groups[its[0]], groups[its[-1]])
    if len(its) > 2:
        middle = groups[its[len(its) // 2]]
        out |= {f"pass_at_{k}_mid": lr.pass_at_k_mean(middle, k) for k in (1, 16)}
    return out


def pair_runs(results: dict) -> dict:
    """``{(method, seed): {"first", "last", "entropy_change_pct"}}`` of the runs that have records."""
    runs = {}
    for (name, seed), res in results.items():
        groups = {int(i): r for i, r in res.get("val_groups", {}).items()}
        if len(groups) >= 2:
            change = lab.summarize_run(res["series"])["entropy_change_pct"]
            runs[name, seed] = {
                "first": groups[min(groups)],
                "last": groups[max(groups)],
                "entropy_change_pct": change,
            }
    return runs


def parse_pairs(items: list[str], names: Sequence[str]) -> list[tuple[str, str]]:
    """``BASE:METHOD`` items → pairs; both must be run names (a method, or a method with its ``--vary`` suffix,
    e.g. ``dapo[eps_high=0.28]``)."""
    out = []
    for item in items:
        base, sep, method = item.partition(":")
        if not sep or base not in names or method not in names:
            raise SystemExit(
                f"compare_methods: --pairs needs BASE:METHOD of run names ({', '.join(names)}), got {item!r}"
            )
        out.append((base, method))
    return out


def fair_sections(rows: list[dict], runs: dict, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The table's fair-lab sections (Markdown lines): per-prompt columns, the pairs and the claims."""
    if not pairs or not runs:
        return []
    return [
        "Per-prompt columns at the last validation (mean ± std over seeds; rare prompts = those the untrained "
        "model solved at most 2 times in 16, solved = at least once):",
        "",
        lab.method_table(rows, FAIR_COLUMNS),
        "",
        "Same-base pairs: method − base on the same seed and the same held-out prompts, mean over seeds "
        "[95% paired bootstrap interval over prompts], at the last validation:",
        "",
        pair_table(runs, pairs),
        "",
        'Pre-registered claims (docs/results.md, "The fair lab"):',
        "",
        claims_section(runs, pairs),
        "",
        "Seed noise: per-seed differences (method − base, on the same seed), their mean [95% t interval over "
        "seeds] (per-seed values); an effect only where the interval excludes 0:",
        "",
        seed_noise_section(runs, pairs),
        "",
    ]


def sequential_claims(sequential: list[dict], base: str) -> list[str]:
    """Markdown lines: the sequential test's claims (docs/results.md, "The fair lab"), from the task-B runs'
    validation pass@1 (``val_pass1_b_start``: B's iteration 0, before any B update; ``val_pass1_b_end``).

    (d) the premise: after task A, ``base`` writes B's behaviour less often than the untrained model (the
    ``<base>_from_base`` control) at B's iteration 0, on the seed mean. (e) for each other method M: M's B pass@1
    at B's iteration 0 and at its end are at least ``base``'s (seed means). Per-seed values are shown."""
    control = f"{base}_from_base"
    by = {}
    for row in sequential:
        by.setdefault(row["method"], {})[row["seed"]] = row
    if base not in by or not all("val_pass1_b_start" in r for rs in by.values() for r in rs.values()):
        return []
    word = {True: "**holds**", False: "**does not hold**"}

    def mean_of(method: str, key: str, seeds: list) -> tuple[float, str]:
        values = [by[method][s][key] for s in seeds]
        return sum(values) / len(values), ", ".join(f"{v:.3f}" for v in values)

    lines = ["Sequential claims (task B's validation pass@1; seed mean, per-seed values in parentheses):", ""]
    if control in by:
        seeds = sorted(set(by[base]) & set(by[control]))
        b, b_seeds = mean_of(base, "val_pass1_b_start", seeds)
        c, c_seeds = mean_of(control, "val_pass1_b_start", seeds)
        lines.append(f"- (d) the premise, {base} after A below the untrained model at B's start: {b:.3f} ({b_seeds}) "
                     f"vs {c:.3f} ({c_seeds}): {word[b < c]}")  # fmt: skip
    for method in by:
        if method in (base, control):
            continue
        seeds = sorted(set(by[base]) & set(by[method]))
        cells = []
        for key, when in (("val_pass1_b_start", "at B's start"), ("val_pass1_b_end", "at B's end")):
            m, m_seeds = mean_of(method, key, seeds)
            b, b_seeds = mean_of(base, key, seeds)
            cells.append(f"{when} {m:.3f} ({m_seeds}) vs {b:.3f} ({b_seeds}): {word[m >= b]}")
        lines.append(f"- (e) {method} ≥ {base} after A, " + "; ".join(cells))
    return [*lines, ""]
