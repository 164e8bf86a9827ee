"""The method lab's PNGs (``tools/compare_methods.py`` calls ``plot_lab``): curves with seeds as bands, and bars."""

from __future__ import annotations

import math
from pathlib import Path

from epr_lightning import lab


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


def plot_curves(
    path: Path, curves: list[dict], methods: list[str], key: str, relative: bool, title: str
) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for method in methods:
        xs, mean, low, high = _bands(curves, method, key, relative)
        (line,) = ax.plot(xs, mean, label=method)
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
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
    if sequential:
        cols = (("reward_auc", "task-B reward AUC"), ("iters_to_threshold", "iterations to threshold"),
                ("entropy_b_initial", "entropy at task-B start"))  # fmt: skip
        plot_bars(out / "sequential.png", sequential, cols)
