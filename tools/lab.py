"""The method lab's arithmetic: one run's per-iteration series → its summary row, rows → mean ± std per method.

Pure functions over plain lists and dicts (no torch, no files), used by ``tools/compare_methods.py`` and
``tools/lab_plots.py`` (the package does not import it) and tested on hand-made series. Conventions, stated once:

- ``entropy_change_pct`` compares the token entropy of the validation after the last update with the one before
  the first, on the same held-out prompts (more samples than a rollout, and no prompt-to-prompt noise: one
  rollout of 4 prompts varies by ±10% on SmolLM2); the controllers' H* is that same initial validation entropy;
- ``rollout_entropy_change_pct`` compares the rollouts instead: the mean over the last ``END_WINDOW``
  iterations against iteration 0 (the rollout before any update); the entropy curves are per rollout too;
- "final" reward means the mean over the last ``END_WINDOW`` iterations;
- validation values come from the first (iteration-0 baseline) and the last validation of the run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

END_WINDOW = 5
ENTROPY, REWARD = "policy/entropy", "rollout/reward_mean"
DISTINCT_CORRECT = "diversity/distinct_correct"
COEFFICIENTS = ("ctrl/zeta", "ctrl/eps_high", "ctrl/entropy_coef", "ctrl/beta")
PASS_AT_K = re.compile(r"^val/pass@(\d+)$")
SHAPING = ("neg_ratio", "neg_zeroed_frac", "neg_flipped_frac", "pos_ratio")

#: summary columns shown in the method table, with their headers (mean ± std over seeds)
TABLE_COLUMNS = (
    ("reward_final", "final reward"),
    ("val_pass1_final", "val pass@1"),
    ("val_passG_final", "val pass@G"),
    ("distinct_correct_final", "distinct correct / group"),
    ("entropy_change_pct", "entropy change % (val)"),
    ("rollout_entropy_change_pct", "entropy change % (rollouts)"),
    ("entropy_min_ratio", "lowest entropy / H0"),
    ("entropy_cumulative", "cumulative entropy / H0"),
    ("coef_final", "final ζ / ε_high / β"),
    ("wall_min", "wall min"),
)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def tail_mean(values: Sequence[float], window: int = END_WINDOW) -> float:
    """Mean of the last ``window`` values (all of them when there are fewer)."""
    return _mean(list(values)[-window:])


def summarize_run(series: dict[str, list[float]], wall_s: float = math.nan) -> dict[str, float | str]:
    """One run's summary from its per-iteration series (tag → values in step order; validation tags hold one
    value per validation)."""
    h = series.get(ENTROPY, [])
    r = series.get(REWARD, [])
    if not h or not r:
        raise ValueError(f"a lab run needs {ENTROPY!r} and {REWARD!r} series; got {sorted(series)}")
    h0 = h[0]
    out: dict[str, float | str] = {
        "iterations": float(len(h)),
        "entropy_initial": h0,
        "entropy_end": tail_mean(h),
        "rollout_entropy_change_pct": 100.0 * (tail_mean(h) / h0 - 1.0) if h0 else math.nan,
        "entropy_min_ratio": min(h) / h0 if h0 else math.nan,
        "entropy_cumulative": _mean([v / h0 for v in h]) if h0 else math.nan,
        "reward_initial": r[0],
        "reward_final": tail_mean(r),
        "distinct_correct_final": tail_mean(series.get(DISTINCT_CORRECT, [])),
        "clipfrac_upper": _mean(series.get("policy/clipfrac_upper", [])),
        "clipfrac_lower": _mean(series.get("policy/clipfrac_lower", [])),
        "clip_decision_diff": _mean(series.get("policy/clip_decision_diff", [])),
        # what an advantage transform did, averaged over iterations (REPO-R: policy/shaping/*; NaN without one)
        **{f"shaping_{k}": _mean(series.get(f"policy/shaping/{k}", [])) for k in SHAPING},
        "wall_min": wall_s / 60.0,
    }
    val_h = series.get("val/entropy", [])
    out["val_entropy_initial"] = val_h[0] if val_h else math.nan
    out["val_entropy_final"] = val_h[-1] if val_h else math.nan
    out["entropy_change_pct"] = (
        100.0 * (val_h[-1] / val_h[0] - 1.0) if len(val_h) > 1 and val_h[0] else math.nan
    )
    ks = sorted(int(m.group(1)) for tag in series if (m := PASS_AT_K.match(tag)))
    for name, k in (("pass1", 1 if 1 in ks else None), ("passG", ks[-1] if ks else None)):
        values = series.get(f"val/pass@{k}", []) if k is not None else []
        out[f"val_{name}_initial"] = values[0] if values else math.nan
        out[f"val_{name}_final"] = values[-1] if values else math.nan
    out["val_G"] = float(ks[-1]) if ks else math.nan
    coef = next((tag for tag in COEFFICIENTS if series.get(tag)), None)
    out["coef_name"] = coef.removeprefix("ctrl/") if coef else ""
    out["coef_final"] = series[coef][-1] if coef else math.nan
    return out


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std, count) of the finite values; std is 0 for one value, NaN for none."""
    kept = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not kept:
        return math.nan, math.nan, 0
    m = _mean(kept)
    std = math.sqrt(sum((v - m) ** 2 for v in kept) / (len(kept) - 1)) if len(kept) > 1 else 0.0
    return m, std, len(kept)


#: two-sided 95% quantiles of Student's t for 1..10 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile: the table for df ≤ 10, the Cornish–Fisher expansion above (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"t_quantile_975 needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t interval of the mean of per-seed values (mean ± t·sd/√n). It measures the
    spread between training runs, which the prompt bootstrap does not; with fewer than 2 finite values the
    interval is NaN."""
    mean, sd, n = mean_std(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def fmt_mean_std(values: Iterable[float], digits: int = 2) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "–"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def method_table(rows: list[dict], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    """A Markdown table: one line per method (in first-seen order), mean ± std over its seeds per column."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    header = ["method", "seeds"] + [title for _, title in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        cells = [method, str(len(mine))]
        for key, _ in columns:
            digits = 1 if key.endswith("_pct") or key == "wall_min" else 2 if key != "coef_final" else 3
            cells.append(fmt_mean_std([row.get(key, math.nan) for row in mine], digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def holds_entropy(
    rows: list[dict], method: str, band_pct: float, baseline: str, reward_margin: float
) -> dict:
    """The core claim: ``method``'s entropy change is within ±``band_pct`` on every seed, and its final reward
    (mean over seeds) is at least ``baseline``'s mean − ``reward_margin``. Per-seed rows are returned as well."""
    by_seed = {row["seed"]: row for row in rows if row["method"] == baseline}
    mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
    seeds = [
        {
            "seed": row["seed"],
            "entropy_change_pct": row["entropy_change_pct"],
            "reward_final": row["reward_final"],
            "baseline_reward_final": by_seed[row["seed"]]["reward_final"]
            if row["seed"] in by_seed
            else math.nan,
            "baseline_entropy_change_pct": (
                by_seed[row["seed"]]["entropy_change_pct"] if row["seed"] in by_seed else math.nan
            ),
            "in_band": abs(row["entropy_change_pct"]) <= band_pct,
        }
        for row in mine
    ]
    reward = mean_std(r["reward_final"] for r in mine)[0]
    base_reward = mean_std(r["reward_final"] for r in by_seed.values())[0]
    reward_ok = math.isfinite(reward) and math.isfinite(base_reward) and reward >= base_reward - reward_margin
    return {
        "seeds": seeds,
        "reward": reward,
        "baseline_reward": base_reward,
        "in_band": bool(seeds) and all(s["in_band"] for s in seeds),
        "reward_ok": reward_ok,
        "holds": bool(seeds) and all(s["in_band"] for s in seeds) and reward_ok,
    }


def sequential_summary(rewards: Sequence[float], threshold: float) -> dict[str, float]:
    """Trainability on task B: the reward AUC (mean reward over the iterations run) and the first iteration whose
    reward reaches ``threshold`` (NaN when it never does within the run)."""
    if not rewards:
        raise ValueError("no task-B rewards to summarize")
    first = next((i for i, v in enumerate(rewards) if v >= threshold), None)
    return {
        "reward_auc": _mean(list(rewards)),
        "iters_to_threshold": float(first) if first is not None else math.nan,
        "reached": float(first is not None),
        "reward_first": rewards[0],
        "reward_last": tail_mean(rewards),
    }
