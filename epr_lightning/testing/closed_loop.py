"""The closed-loop toy of ``tests/test_closed_loop.py``, shared with ``tools/entropy_sweep.py``.

A tiny random char model (``configs/tiny_cpu.yaml``) on ``CharacterTask`` (62 rewarded letters and digits out of
~100 characters), 4 prompts × 4 samples × 12 tokens per iteration, 2 PPO epochs of 2 minibatches, AdamW lr 2e-4,
sampling (and log-prob/entropy) temperature 0.1: H0 ≈ 3.4 nats. ``run_quiet`` trains in-process and returns an
``EntropyTrace`` of every iteration.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def quiet_args(root: str | Path, configs: Sequence[str], *extra: str) -> list[str]:
    """CLI args for an in-process run of ``configs``: no logger, progress bar, checkpoints, trainer callbacks or
    validation (the caller reads its own callbacks)."""
    args = [a for c in configs for a in ("--config", str(c))]
    return args + [
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.callbacks", "[]",
        "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(root),
        *extra,
    ]  # fmt: skip


def quiet_tiny_args(root: str | Path, method: str, *extra: str) -> list[str]:
    """``quiet_args`` for ``configs/tiny_cpu.yaml`` + ``configs/method/<method>.yaml`` (or ``method`` itself when it
    is a YAML path, e.g. one of the fair lab's settings)."""
    config = method if method.endswith(".yaml") else f"configs/method/{method}.yaml"
    return quiet_args(root, ["configs/tiny_cpu.yaml", config], *extra)


def seed_args(seed: int, tiny_model: bool = False) -> list[str]:
    """One seed for Lightning and the engine's sampling (and, with ``tiny_model``, ``TinyModel``'s initialisation)."""
    args = [
        f"--seed_everything={seed}",
        f"--model.init_args.sampling.seed={seed}",  # seed_everything does not set the engine's sampling seed
    ]
    return args + [f"--model.init_args.policy.init_args.seed={seed}"] if tiny_model else args


def toy_args(root: str | Path, method: str, seed: int = 0, iterations: int = 20, *extra: str) -> list[str]:
    """The closed-loop toy for ``configs/method/<method>.yaml`` (the module docstring); ``extra`` come last."""
    return quiet_tiny_args(
        root,
        method,
        *seed_args(seed, tiny_model=True),
        "--data.init_args.task", "epr_lightning.tasks.CharacterTask",
        f"--data.init_args.task.init_args.target_chars={ALNUM}",
        "--data.init_args.batches_per_epoch", str(iterations),
        "--model.init_args.sampling.temperature=0.1",
        "--model.init_args.optimizer.init_args.lr=2e-4",
        "--model.init_args.ppo_epochs=2",
        "--model.init_args.num_minibatches=2",
        *extra,
    )  # fmt: skip


class EntropyTrace(pl.Callback):
    """Per iteration: π_old's token-mean entropy, the mean reward, the coefficient the first controller set for
    the iteration (before it ran), and the record's metrics; ``warnings`` is filled by ``run_quiet``."""

    def __init__(self) -> None:
        self.entropy: list[float] = []
        self.reward: list[float] = []
        self.coef: list[float] = []
        self.metrics: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.controller: Any = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.controllers:
            self.controller = pl_module.controllers[0]
            self.coef.append(self.controller.coef)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = outputs["record"]
        self.entropy.append(record.token_mean_entropy())
        self.reward.append(float(record.rewards.float().mean()))
        self.metrics.append(dict(record.metrics))

    def late_mean(self, metric: str, last: int = 5) -> float:
        """Mean of ``metric`` over the last ``last`` iterations (NaN when it was never logged)."""
        values = [float(m[metric]) for m in self.metrics[-last:] if metric in m]
        return sum(values) / len(values) if values else float("nan")


def run_quiet(args: list[str]) -> EntropyTrace:
    """Build the CLI from ``args``, train in this process and return the trace (warnings recorded, not shown)."""
    from epr_lightning.cli import build_cli

    cli = build_cli(args, run=False)
    trace = EntropyTrace()
    cli.trainer.callbacks.append(trace)  # type: ignore[attr-defined]  # set by Lightning's callback connector
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.trainer.fit(cli.model, cli.datamodule)
    trace.warnings = [str(w.message) for w in caught]
    return trace
