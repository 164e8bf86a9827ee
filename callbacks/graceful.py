"""GracefulStop: SIGTERM / SIGINT → finish the current rollout iteration, checkpoint, stop, exit 0.

Clusters preempt with SIGTERM (then SIGKILL after a grace period); Ctrl+C sends SIGINT. Lightning's own
handling turns SIGTERM into an exception and SIGINT into exit code 1 without a checkpoint. This callback
replaces both handlers while training runs: the handler only sets a flag, and at the end of the current
``training_step`` (the next safe point: no half-applied update, the data position and every controller in
step) the run writes a checkpoint, stops and prints one line::

    stopped by SIGTERM at iteration K; checkpoint: PATH; resume with: epr-lightning fit --config CFG --ckpt_path PATH

A second signal while stopping is not swallowed: it raises ``KeyboardInterrupt`` (Lightning then exits 1).
Under DDP/FSDP the ranks agree on stopping (any rank signalled → all stop) and all join the save.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from epr_lightning.checkpointing import RolloutCheckpoint


class GracefulStop(Callback):
    """Checkpoint and stop cleanly on a termination signal.

    Args:
        signals: signal names to handle ("SIGTERM", "SIGINT", "SIGUSR1", ...).
        filename: checkpoint file name used when no ``ModelCheckpoint`` is configured (written to
            ``<default_root_dir>/checkpoints``); with a ``RolloutCheckpoint``/``ModelCheckpoint`` its
            ``last`` checkpoint is written instead.
    """

    def __init__(self, signals: list[str] | None = None, filename: str = "last.ckpt") -> None:
        names = list(signals) if signals is not None else ["SIGTERM", "SIGINT"]
        valid = {s.name for s in signal.valid_signals() if isinstance(s, signal.Signals)}
        for name in names:
            if name not in valid or name in ("SIGKILL", "SIGSTOP"):
                raise ValueError(f"GracefulStop.signals: {name!r} is not a catchable signal name")
        self.signals = names
        self.filename = filename
        self.received: str | None = None
        self.checkpoint_path: str | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ handlers
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # second signal: stop waiting
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in self.signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning registered its own SIGTERM handler (right before the fit loop runs).
        self.received = None
        self._install()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop:
            return
        self.received = self.received or "a signal on another rank"
        self.checkpoint_path = self._save(trainer)
        trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._uninstall()
        if self.checkpoint_path is not None and trainer.is_global_zero:
            iteration = int(getattr(pl_module, "iteration", trainer.global_step))
            print(self.message(trainer, iteration), file=sys.stderr, flush=True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._uninstall()

    # ------------------------------------------------------------------ helpers
    def _save(self, trainer: pl.Trainer) -> str:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, RolloutCheckpoint):
                return os.path.abspath(callback.save_now(trainer))
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath is not None:
            path = os.path.join(ckpt.dirpath, self.filename)
        else:
            path = os.path.join(trainer.default_root_dir, "checkpoints", self.filename)
        trainer.save_checkpoint(path)
        return os.path.abspath(path)

    def message(self, trainer: pl.Trainer, iteration: int) -> str:
        """The one-line report: what stopped the run, where the checkpoint is, how to resume."""
        log_dir = trainer.log_dir
        config = os.path.join(log_dir, "config.yaml") if log_dir else None
        config_arg = config if config and os.path.isfile(config) else "<your config>"
        return (
            f"stopped by {self.received} at iteration {iteration}; checkpoint: {self.checkpoint_path}; "
            f"resume with: epr-lightning fit --config {config_arg} --ckpt_path {self.checkpoint_path}"
        )
