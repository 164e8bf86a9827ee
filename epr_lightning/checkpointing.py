"""Checkpoints for long RL runs: atomic writes, a save every N rollout iterations, ``last`` that resolves.

* ``AtomicCheckpointIO`` writes ``path`` as ``torch.save`` → temp file in the same folder → ``fsync`` →
  ``os.replace``: a process killed mid-write leaves the previous file intact (never a truncated one).
* ``RolloutCheckpoint`` is a ``ModelCheckpoint`` that counts rollout iterations (``RLModule.iteration``),
  not optimizer steps (in manual optimization ``global_step`` counts ``opt.step()`` calls, several per
  rollout), always keeps ``last.ckpt`` and saves once more when training ends. With ``dirpath`` unset,
  ``--ckpt_path last`` also finds the ``last.ckpt`` of earlier logger versions (each resumed run logs to a
  new ``version_N``), the newest by modification time.
* ``capture_rng_state`` / ``restore_rng_state``: Python, NumPy, torch CPU and CUDA generators, stored with
  the module's state so a resumed run draws the same random numbers.
"""

from __future__ import annotations

import glob
import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a half-written file at the target path (local paths).

    The checkpoint goes to ``.<name>.tmp-<pid>`` next to the target, is flushed and fsync'ed, then
    ``os.replace``d over the target (atomic on POSIX within one filesystem) and the folder is fsync'ed.
    Remote (fsspec URL) paths fall back to the plain writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        target = str(path)
        if "://" in target and not target.startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = target.removeprefix("file://")
        folder = os.path.dirname(os.path.abspath(target))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(target)}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):  # the write failed before the rename
                os.remove(tmp)
        _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def install_atomic_checkpoint_io(trainer: pl.Trainer) -> bool:
    """Swap the strategy's default ``TorchCheckpointIO`` for ``AtomicCheckpointIO``; True if swapped.

    A CheckpointIO the user configured (any other class, e.g. async or cloud writers) is left alone.
    """
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False


# ---------------------------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """The global generators' states (Python, NumPy, torch CPU, every CUDA device).

    Only tensors, ints, strings and tuples: Lightning loads checkpoints with ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            str(kind),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------- periodic checkpoints
class RolloutCheckpoint(ModelCheckpoint):
    """Save every ``every_n_iterations`` rollout iterations and when training ends; keep ``last.ckpt``.

    Args:
        dirpath: checkpoint folder (None = ``<logger save_dir>/<name>/version_N/checkpoints``, Lightning's
            default; ``--ckpt_path last`` then searches every ``version_*`` of that logger name).
        every_n_iterations: rollout iterations between checkpoints (≥ 1). Counts ``training_step`` calls,
            not optimizer steps.
        save_top_k: numbered checkpoints ``iteration=K.ckpt`` to keep besides ``last.ckpt``
            (0 = only ``last``, -1 = keep all, k = the k most recent).
        filename: name pattern of numbered checkpoints (``{iteration}`` is the completed iterations).
        save_weights_only: save only the weights (such checkpoints cannot resume a run).
        save_on_train_end: also save when training ends (completed, ``max_steps`` or a graceful stop).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_iterations: int = 1,
        save_top_k: int = 0,
        filename: str = "{iteration}",
        save_weights_only: bool = False,
        save_on_train_end: bool = True,
    ) -> None:
        if every_n_iterations < 1:
            raise ValueError(f"RolloutCheckpoint.every_n_iterations must be >= 1, got {every_n_iterations}")
        if save_top_k < -1:
            raise ValueError(f"RolloutCheckpoint.save_top_k must be >= -1, got {save_top_k}")
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            save_last=True,
            save_top_k=save_top_k,
            save_weights_only=save_weights_only,
            every_n_train_steps=0,
            every_n_epochs=0,
            save_on_train_epoch_end=False,
        )
        self.every_n_iterations = every_n_iterations
        self.save_on_train_end = save_on_train_end
        self._user_dirpath = dirpath
        self._last_iteration_saved: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_iterations=self.every_n_iterations, save_top_k=self.save_top_k
        )

    @staticmethod
    def _iteration(pl_module: pl.LightningModule) -> int:
        return int(getattr(pl_module, "iteration", 0))

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["iteration"] = torch.tensor(self._iteration(trainer.lightning_module))
        return candidates

    def save_now(self, trainer: pl.Trainer) -> str:
        """Write the numbered checkpoint (if ``save_top_k`` ≠ 0) and ``last``; returns the ``last`` path.

        Every rank must call this (the strategy's save is a collective under sharded strategies).
        """
        iteration = self._iteration(trainer.lightning_module)
        if self._last_iteration_saved != iteration:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            self._last_iteration_saved = iteration
        return self.last_model_path

    def _should_save(self, trainer: pl.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return not (
            getattr(trainer, "fast_dev_run", False)
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run logs to a new version folder, so with the default dirpath the saved paths belong to
        # the old folder: keep only best_model_path (as Lightning does) without its dirpath-changed warning.
        if state_dict["dirpath"] == self.dirpath:
            super().load_state_dict(state_dict)
        else:
            self.best_model_path = state_dict["best_model_path"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run does not re-save the iteration it restored.
        self._last_iteration_saved = self._iteration(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        iteration = self._iteration(pl_module)
        if self._should_save(trainer) and iteration > 0 and iteration % self.every_n_iterations == 0:
            self.save_now(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return None  # iteration-driven only

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return None  # iteration-driven only

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_on_train_end and self._should_save(trainer):
            self.save_now(trainer)

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        found = super()._find_last_checkpoints(trainer)
        if self._user_dirpath is not None or not trainer.loggers:
            return found
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        root = os.path.join(save_dir, str(logger.name))
        if "://" in str(root):  # remote loggers: Lightning's own lookup only
            return found
        pattern = os.path.join(
            glob.escape(root), "*", "checkpoints", f"{self.CHECKPOINT_NAME_LAST}*{self.FILE_EXTENSION}"
        )
        return found | {
            os.path.normpath(p) for p in glob.glob(pattern) if not os.path.basename(p).startswith(".")
        }
