"""The method lab's PNGs (``tools/compare_methods.py`` calls ``plot_lab``): curves with seeds as bands, bars, and
the entropy-vs-reward trade-off.

As a command it draws the trade-off of chosen runs from one or more labs' ``runs.csv`` (e.g. a ζ-bound sweep made
of several invocations) and prints their Markdown table:

    python tools/lab_plots.py tradeoff --csv docs/lab/zeta_sweep/runs.csv --csv docs/lab/arithmetic/runs.csv \
        --methods grpo "repo_r[zeta_max=0.2]" repo_r --rename repo_r=repo_r[zeta_max=0.5] --out tradeoff.png
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # tools/lab.py: the lab's arithmetic


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bands(
    curves: list[dict], method: str, key: str, relative: bool
) -> tuple[list[int], list[float], list, list]:
    """Iterations, mean over seeds, min and max over seeds of ``key`` (relative to each seed's iteration 0)."""
    by_seed: dict[int, list[float]] = {}
    for row in curves:
        if row["method"] == method:
            by_seed.setdefault(row["seed"], []).append(float(row[key]))
    if relative:
        by_seed = {s: [v / vs[0] for v in vs] if vs[0] else vs for s, vs in by_seed.items()}
    length = min(len(v) for v in by_seed.values())
    cols = [[vs[i] for vs in by_seed.values()] for i in range(length)]
    return (
        list(range(length)),
        [sum(c) / len(c) for c in cols],
        [min(c) for c in cols],
        [max(c) for c in cols],
    )


def _draw_bands(ax, curves: list[dict], methods: list[str], key: str, relative: bool) -> None:
    """One line per method on ``ax``: the mean over seeds of ``key``, with the min–max over seeds as a band."""
    for method in methods:
        xs, mean, low, high = _bands(curves, method, key, relative)
        (line,) = ax.plot(xs, mean, label=method)
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)


def plot_curves(
    path: Path, curves: list[dict], methods: list[str], key: str, relative: bool, title: str
) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _draw_bands(ax, curves, methods, key, relative)
    if relative:
        ax.axhspan(0.85, 1.15, color="grey", alpha=0.12, label="±15% of initial")
    ax.set_xlabel("rollout iteration")
    ax.set_ylabel(f"{key} / initial" if relative else key)
    ax.set_title(title + " (mean over seeds; band = min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(path: Path, rows: list[dict], columns=lab.TABLE_COLUMNS) -> None:
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    columns = [c for c in columns if any(math.isfinite(r.get(c[0], math.nan)) for r in rows)]
    ncols = 3
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, columns, strict=False):
        stats = [lab.mean_std(r.get(key, math.nan) for r in rows if r["method"] == m) for m in methods]
        ax.bar(
            range(len(methods)),
            [s[0] for s in stats],
            yerr=[0 if s[2] < 2 else s[1] for s in stats],
            capsize=3,
        )
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(
    path: Path,
    rows: list[dict],
    x: str = "reward_final",
    y: str = "entropy_change_pct",
    band_pct: float = 15.0,
) -> None:
    """One point per method: mean over seeds of ``x`` (final reward) against ``y`` (entropy change %), with the
    seeds' standard deviations as error bars and the ±``band_pct`` band of the core claim shaded."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.axhspan(-band_pct, band_pct, color="grey", alpha=0.12, label=f"±{band_pct:g}% of initial entropy")
    for method in dict.fromkeys(r["method"] for r in rows):
        mx, sx, n = lab.mean_std(r.get(x, math.nan) for r in rows if r["method"] == method)
        my, sy, _ = lab.mean_std(r.get(y, math.nan) for r in rows if r["method"] == method)
        if n == 0 or not math.isfinite(my):
            continue
        ax.errorbar(mx, my, xerr=sx if n > 1 else None, yerr=sy if n > 1 else None, fmt="o", capsize=3,
                    label=f"{method} ({n} seed{'s' if n > 1 else ''})")  # fmt: skip
    ax.set_xlabel("final reward (mean of the last 5 iterations)")
    ax.set_ylabel("entropy change % (val, end vs start)")
    ax.set_title("entropy kept vs reward (mean over seeds; bars = std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_rows(paths: list[str], methods: list[str] | None, rename: dict[str, str]) -> list[dict]:
    """``runs.csv`` rows (numbers as floats) of ``methods`` (all when None), renamed, first occurrence of each
    (method, seed) kept, in the order of ``methods``."""
    rows: dict[tuple[str, str], dict] = {}
    for path in paths:
        with open(path, newline="") as f:
            for raw in csv.DictReader(f):
                row: dict = {}
                for k, v in raw.items():
                    try:
                        row[k] = (
                            float(v) if k not in ("method", "seed", "code", "config_hash", "coef_name") else v
                        )
                    except ValueError:
                        row[k] = v
                row["method"] = rename.get(row["method"], row["method"])
                rows.setdefault((row["method"], row["seed"]), row)
    order = methods or list(dict.fromkeys(m for m, _ in rows))
    return [row for m in order for (method, _), row in rows.items() if method == m]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="the entropy-vs-reward trade-off of chosen lab runs")
    p.add_argument("command", choices=["tradeoff"])
    p.add_argument("--csv", action="append", required=True, help="a lab's runs.csv (repeatable)")
    p.add_argument("--methods", nargs="+", help="methods (after --rename) to show, in this order")
    p.add_argument("--rename", nargs="*", default=[], help="OLD=NEW method names (e.g. to name a default)")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    rename = dict(item.split("=", 1) for item in args.rename)
    rows = read_rows(args.csv, args.methods, rename)
    if not rows:
        raise SystemExit(f"lab_plots: no rows of {args.methods} in {args.csv}")
    plot_tradeoff(Path(args.out), rows)
    print(lab.method_table(rows))


def plot_lab(
    out: Path, rows: list[dict], curves: list[dict], sequential: list[dict], pair: tuple[str, str]
) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    plot_curves(out / "entropy.png", curves, methods, "entropy", True, "token entropy")
    plot_curves(out / "reward.png", curves, methods, "reward", False, "rollout reward")
    shown = [m for m in pair if m in methods]
    if len(shown) == 2:
        plot_curves(out / f"pair_{shown[0]}_{shown[1]}.png", curves, shown, "entropy", True, "token entropy")
    plot_bars(out / "summary.png", rows)
    plot_tradeoff(out / "tradeoff.png", rows)
    if sequential:
        cols = (("reward_auc", "task-B reward AUC"), ("iters_to_threshold", "iterations to threshold"),
                ("entropy_b_initial", "entropy at task-B start"))  # fmt: skip
        plot_bars(out / "sequential.png", sequential, cols)


def plot_toolworld(out: Path, runs: list[dict], curves: list[dict]) -> None:
    """ToolWorld's learning test (``tools/toolworld_lab.py``): ``curves.png``, train reward, policy entropy and the
    share of groups with mixed rewards per iteration (seeds as bands); ``success.png``, validation success per
    difficulty at the warm start and at the end of each method's runs (mean over seeds, seeds as dots)."""
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in curves))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title) in zip(axes, (("reward", "train reward"), ("entropy", "policy entropy (nats/token)"),
                                       ("mixed_groups", "groups with mixed rewards")), strict=True):  # fmt: skip
        _draw_bands(ax, curves, methods, key, False)
        ax.set(xlabel="rollout iteration", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "ToolWorld from the SFT warm start (mean over seeds; band = min–max over seeds)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    levels = sorted(
        {k.split("_")[2] for r in runs for k in r if k.startswith("val_success_d") and k.endswith("_end")}
    )
    fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 3.8), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        for i, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
            mine = [r for r in runs if r["method"] == method]
            iters = float(mine[0]["iterations"])
            pts = [[float(r[f"val_success_{level}_{when}"]) for r in mine] for when in ("start", "end")]
            (line,) = ax.plot([0, iters], [sum(p) / len(p) for p in pts], marker="o", label=method)
            for x, p in zip((0, iters), pts, strict=True):
                ax.scatter([x + 0.3 * i] * len(p), p, color=line.get_color(), s=12, alpha=0.5)
        ax.set(
            xlabel="rollout iteration", ylabel="validation success", title=f"level {level[1:]}", ylim=(0, 1)
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "success.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
