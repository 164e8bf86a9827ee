"""Does a knob move entropy, and which way? Train once per value × seed and print where the entropy ended.

Each run prints one row: the value, the seed, H0 (π_old's entropy at iteration 0), the end entropy / H0, the lowest
entropy / H0, the mean reward of the first and last iterations, the upper/lower clip fractions over the last five
iterations and the first controller's last coefficient. A knob a controller can steer needs a clear, monotone
effect here; ADAPO's ε_high on the closed-loop toy shows none (``tests/test_closed_loop.py``).

Usage:
    # the closed-loop toy (tiny random model, seconds per run), fixed ε_high of the DAPO loss:
    python tools/entropy_sweep.py --method dapo \\
        --vary model.init_args.objective.init_args.loss.init_args.eps_high=0.05,0.2,0.28,1.0 --seeds 0 1 2
    # your own configs (every run trains them in this process, without logger or checkpoints):
    python tools/entropy_sweep.py --config configs/demo.yaml --config configs/method/dapo.yaml \\
        --vary model.init_args.objective.init_args.loss.init_args.eps_high=0.2,1.0 --seeds 0
Further CLI arguments for every run go after ``--``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from epr_lightning.testing.closed_loop import quiet_args, run_quiet, seed_args, toy_args  # noqa: E402

HEADER = ("value", "seed", "H0", "end/H0", "min/H0", "reward first→last", "clip up", "clip low", "coef")


def parse_vary(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    key = key.strip().removeprefix("--")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not items:
        raise SystemExit(f"entropy_sweep: --vary needs KEY=V1,V2,..., got {text!r}")
    return key, items


def row(value: str, seed: int, trace) -> tuple[str, ...]:
    h = trace.entropy
    coef = trace.controller.coef if trace.controller is not None else math.nan
    return (
        value,
        str(seed),
        f"{h[0]:.3f}",
        f"{h[-1] / h[0]:.2f}",
        f"{min(h) / h[0]:.2f}",
        f"{trace.reward[0]:.2f}→{trace.reward[-1]:.2f}",
        f"{trace.late_mean('policy/clipfrac_upper'):.3f}",
        f"{trace.late_mean('policy/clipfrac_lower'):.3f}",
        f"{coef:.4g}",
    )


def main(argv: list[str] | None = None) -> list[tuple[str, ...]]:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--vary", required=True, help="KEY=V1,V2,... (a CLI key, e.g. model.init_args.ppo_epochs=1,2)"
    )
    p.add_argument("--method", default="dapo", help="configs/method/<method>.yaml on the closed-loop toy")
    p.add_argument("--config", action="append", default=[], help="train these configs instead of the toy")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, default=20, help="toy only (your configs set their own)")
    args = p.parse_args(argv)
    key, values = parse_vary(args.vary)
    for name in (
        "lightning.pytorch",
        "lightning.fabric",
    ):  # no "GPU available", tips, "Seed set", "fit stopped"
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.argv = sys.argv[:1]  # the runs get their args explicitly (LightningCLI warns when both are present)
    if not args.config:
        os.chdir(ROOT)  # the toy's configs are paths relative to the repository
    rows = []
    print(" | ".join(HEADER), flush=True)
    with tempfile.TemporaryDirectory(prefix="entropy_sweep-") as root:
        for value in values:
            for seed in args.seeds:
                setting = [f"--{key}={value}", *extra]
                if args.config:
                    cli_args = quiet_args(root, args.config, *seed_args(seed), *setting)
                else:
                    cli_args = toy_args(root, args.method, seed, args.iterations, *setting)
                rows.append(row(value, seed, run_quiet(cli_args)))
                print(" | ".join(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
