"""Plot entropy, reward and validation pass@k of one or more runs from their TensorBoard event files.

    python tools/plot_runs.py RUN_DIR [RUN_DIR ...] --out DIR [--smooth 0.6]

Each RUN_DIR is searched recursively for ``events.out.tfevents.*`` files (all versions under it are merged by
step; a later file wins on a repeated step). Runs are labelled by their directory name. Written PNGs:

- ``entropy.png``: ``policy/entropy`` vs step;
- ``reward.png``: ``rollout/reward_mean`` vs step;
- ``val_pass_at_k.png``: every ``val/pass@k`` tag vs step;
- ``reward_vs_entropy.png`` / ``val_pass1_vs_entropy.png``: the accuracy-vs-entropy trajectory (x = entropy,
  y = reward mean or val pass@1 at the nearest logged step), one line per run, as in the paper's Figure 1.

A plot whose tags no run has is skipped with a message. A RUN_DIR without event files is an error naming it.
"""

from __future__ import annotations

import argparse
import bisect
import re
import sys
from collections.abc import Sequence
from pathlib import Path

Series = tuple[list[int], list[float]]
ENTROPY, REWARD, PASS1 = "policy/entropy", "rollout/reward_mean", "val/pass@1"
PASS_AT_K = re.compile(r"^val/pass@(\d+)$")


def find_event_dirs(run_dir: Path) -> list[Path]:
    """Directories under ``run_dir`` (itself included) that hold TensorBoard event files, sorted."""
    return sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*") if p.is_file()})


def load_scalars(run_dir: Path) -> dict[str, Series]:
    """All scalar tags of a run: tag → (steps, values) sorted by step, merged over its event directories."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dirs = find_event_dirs(run_dir)
    if not dirs:
        raise FileNotFoundError(f"no TensorBoard event files (events.out.tfevents.*) under run dir {run_dir}")
    merged: dict[str, dict[int, tuple[float, float]]] = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            points = merged.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                if ev.step not in points or ev.wall_time >= points[ev.step][0]:
                    points[ev.step] = (ev.wall_time, float(ev.value))
    return {tag: ([s for s in sorted(p)], [p[s][1] for s in sorted(p)]) for tag, p in merged.items()}


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style exponential smoothing (weight 0 = none)."""
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def value_at(series: Series, step: int) -> float:
    """The value of ``series`` at the logged step nearest to ``step``."""
    steps, values = series
    i = bisect.bisect_left(steps, step)
    candidates = [j for j in (i - 1, i) if 0 <= j < len(steps)]
    return values[min(candidates, key=lambda j: abs(steps[j] - step))]


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, prefixed with the parent's name where two runs share a name."""
    names = [p.resolve().name for p in run_dirs]
    return [
        f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n
        for p, n in zip(run_dirs, names, strict=True)
    ]


def _figure(title: str, xlabel: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_vs_step(runs: dict[str, dict[str, Series]], tag: str, path: Path, smooth: float) -> Path | None:
    """One line per run of ``tag`` against the logged step; None (with a message) when no run has it."""
    have = {label: s[tag] for label, s in runs.items() if tag in s}
    if not have:
        print(f"skip {path.name}: no run has the tag {tag!r}")
        return None
    fig, ax = _figure(tag, "step", tag)
    for label, (steps, values) in have.items():
        ax.plot(steps, ema(values, smooth), label=label)
    return _save(fig, path)


def plot_pass_at_k(runs: dict[str, dict[str, Series]], path: Path, smooth: float) -> Path | None:
    """Every ``val/pass@k`` tag of every run against the step."""
    lines = []
    for label, scalars in runs.items():
        ks = sorted((int(m.group(1)), tag) for tag in scalars if (m := PASS_AT_K.match(tag)))
        lines += [(label, tag, scalars[tag]) for _, tag in ks]
    if not lines:
        print(f"skip {path.name}: no run has a val/pass@k tag")
        return None
    fig, ax = _figure("validation pass@k", "step", "pass@k")
    for label, tag, (steps, values) in lines:
        ax.plot(
            steps, ema(values, smooth), marker="o", markersize=3, label=f"{label} {tag.removeprefix('val/')}"
        )
    return _save(fig, path)


def plot_vs_entropy(runs: dict[str, dict[str, Series]], ytag: str, path: Path) -> Path | None:
    """Trajectory of ``ytag`` against ``policy/entropy`` (at the nearest logged step), one line per run."""
    have = {label: s for label, s in runs.items() if ytag in s and ENTROPY in s}
    if not have:
        print(f"skip {path.name}: no run has both {ENTROPY!r} and {ytag!r}")
        return None
    fig, ax = _figure(f"{ytag} vs entropy", ENTROPY, ytag)
    for label, scalars in have.items():
        steps, ys = scalars[ytag]
        xs = [value_at(scalars[ENTROPY], s) for s in steps]
        (line,) = ax.plot(xs, ys, marker="o", markersize=2, label=label)
        ax.annotate("start", (xs[0], ys[0]), fontsize=7, color=line.get_color())
    return _save(fig, path)


def plot_runs(run_dirs: Sequence[Path], out: Path, smooth: float = 0.0) -> list[Path]:
    """Write every plot the runs' tags allow into ``out``; returns the written paths."""
    runs = {label: load_scalars(d) for label, d in zip(run_labels(run_dirs), run_dirs, strict=True)}
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_vs_step(runs, ENTROPY, out / "entropy.png", smooth),
        plot_vs_step(runs, REWARD, out / "reward.png", smooth),
        plot_pass_at_k(runs, out / "val_pass_at_k.png", smooth),
        plot_vs_entropy(runs, REWARD, out / "reward_vs_entropy.png"),
        plot_vs_entropy(runs, PASS1, out / "val_pass1_vs_entropy.png"),
    ]
    return [p for p in written if p is not None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the PNGs")
    parser.add_argument(
        "--smooth", type=float, default=0.0, help="EMA smoothing weight in [0, 1) for curves vs step"
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.smooth < 1.0:
        parser.error(f"--smooth must be in [0, 1), got {args.smooth}")
    for d in args.run_dirs:
        if not d.is_dir():
            print(f"error: run dir {d} does not exist or is not a directory", file=sys.stderr)
            return 2
    try:
        written = plot_runs(args.run_dirs, args.out, args.smooth)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in written:
        print(f"wrote {p}")
    if not written:
        print("nothing plotted: none of the expected tags were found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
