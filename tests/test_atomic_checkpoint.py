"""Atomic checkpoint writes, RolloutCheckpoint's schedule, the CLI's reliability defaults, RNG state round trip."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from epr_lightning.checkpointing import (
    AtomicCheckpointIO,
    RolloutCheckpoint,
    capture_rng_state,
    install_atomic_checkpoint_io,
    restore_rng_state,
)

ROOT = Path(__file__).resolve().parents[1]

# A child process writes version 0 of a checkpoint, then starts writing version 1 with a torch.save that
# stops half-way (after writing some bytes) and signals the parent, which SIGKILLs it mid-write.
CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    from epr_lightning.checkpointing import AtomicCheckpointIO

    target, marker = Path(sys.argv[1]), Path(sys.argv[2])
    io = AtomicCheckpointIO()
    io.save_checkpoint({"version": 0, "w": torch.arange(100_000.0)}, target)
    real_save = torch.save

    def stalling_save(obj, f, *args, **kwargs):
        import io as _io
        buf = _io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        if hasattr(f, "write"):
            f.write(data[: len(data) // 2]); f.flush()
        else:
            with open(f, "wb") as h:
                h.write(data[: len(data) // 2]); h.flush()
        marker.write_text("half written")
        time.sleep(600)

    torch.save = stalling_save
    io.save_checkpoint({"version": 1, "w": torch.zeros(100_000)}, target)
    """
)


def kill_mid_write(tmp_path: Path) -> Path:
    target, marker = tmp_path / "last.ckpt", tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(marker)], cwd=ROOT)
    try:
        # the child imports torch and lightning first: slow on a busy machine
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, f"child exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "child never reached the write"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    return target


def test_kill_during_atomic_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    target = kill_mid_write(tmp_path)
    loaded = AtomicCheckpointIO().load_checkpoint(target)
    assert loaded["version"] == 0
    torch.testing.assert_close(loaded["w"], torch.arange(100_000.0))
    # the kill hit the write: half of version 1 sits in the hidden temp file (never a `last` candidate)
    leftovers = [p for p in tmp_path.iterdir() if p.name not in ("last.ckpt", "marker")]
    assert [p.name.startswith(".last.ckpt.tmp-") for p in leftovers] == [True]
    assert 0 < leftovers[0].stat().st_size < target.stat().st_size


def test_failed_save_leaves_previous_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)
    with pytest.raises(Exception, match="(?i)pickle"):
        io.save_checkpoint({"step": 2, "bad": lambda: None}, target)  # lambdas cannot be pickled
    assert io.load_checkpoint(target) == {"step": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_install_replaces_only_the_default_io() -> None:
    from lightning.pytorch import Trainer

    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert install_atomic_checkpoint_io(trainer) is True
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert install_atomic_checkpoint_io(trainer) is False  # already custom: left alone


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    restore_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_rollout_checkpoint_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="every_n_iterations"):
        RolloutCheckpoint(every_n_iterations=0)
    with pytest.raises(ValueError, match="save_top_k"):
        RolloutCheckpoint(save_top_k=-2)


def cli_args(tmp_path: Path, *extra: str, subcommand: bool = True) -> list[str]:
    return [
        *(["fit"] if subcommand else []),
        "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


def test_cli_installs_reliability_defaults_and_they_can_be_disabled(tmp_path: Path) -> None:
    from epr_lightning.callbacks import GracefulStop
    from epr_lightning.cli import build_cli

    no_ckpt_cb = ["--trainer.callbacks", "[]"]
    cli = build_cli(cli_args(tmp_path, *no_ckpt_cb, subcommand=False), run=False)
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert RolloutCheckpoint in kinds and GracefulStop in kinds
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)

    off = [
        "--graceful_stop",
        "false",
        "--atomic_checkpoints",
        "false",
        "--trainer.enable_checkpointing",
        "false",
    ]
    cli = build_cli(cli_args(tmp_path, *no_ckpt_cb, *off, subcommand=False), run=False)
    assert not any(isinstance(c, (ModelCheckpoint, GracefulStop)) for c in cli.trainer.callbacks)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO

    # a user-configured ModelCheckpoint is kept and no RolloutCheckpoint is added next to it
    mine = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint"]
    cli = build_cli(cli_args(tmp_path, *no_ckpt_cb, *mine, subcommand=False), run=False)
    ckpts = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert [type(c) for c in ckpts] == [ModelCheckpoint]


def test_rollout_checkpoint_saves_every_n_iterations_and_at_the_end(tmp_path: Path) -> None:
    from epr_lightning.cli import build_cli

    ckpt = (
        '[{"class_path": "epr_lightning.checkpointing.RolloutCheckpoint",'
        ' "init_args": {"every_n_iterations": 2, "save_top_k": -1}}]'
    )
    # 3 iterations, 2 optimizer steps each (global_step 6): saves after iterations 2 and 3 (the end)
    extra = [
        "--trainer.callbacks", ckpt,
        "--trainer.limit_val_batches", "0",
        "--data.init_args.batches_per_epoch", "3",
        "--model.init_args.minibatch_size", "8",
    ]  # fmt: skip
    cli = build_cli(cli_args(tmp_path, *extra))
    assert cli.trainer.global_step == 6 and cli.model.iteration == 3
    folder = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["iteration=2.ckpt", "iteration=3.ckpt", "last.ckpt"]
    saved = {p.name: torch.load(p, weights_only=False)["epr"]["iteration"] for p in folder.iterdir()}
    assert saved == {"iteration=2.ckpt": 2, "iteration=3.ckpt": 3, "last.ckpt": 3}
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert not any(os.path.basename(p).startswith(".") for p in os.listdir(folder))
