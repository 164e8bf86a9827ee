"""Shared logging helpers for the monitoring callbacks (scalars via ``pl_module.log``, TensorBoard extras)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from epr_lightning.record import StepRecord


def get_record(outputs: Any) -> StepRecord | None:
    """The ``StepRecord`` from ``training_step``'s output dict, or None when there is none (e.g. a skipped step)."""
    if isinstance(outputs, dict):
        rec = outputs.get("record")
        return rec if isinstance(rec, StepRecord) else None
    return None


def due_record(outputs: Any, every_n: int) -> StepRecord | None:
    """The ``StepRecord`` of this iteration when its index is a multiple of ``every_n``, else None."""
    record = get_record(outputs)
    return None if record is None or record.iteration % every_n else record


def log_scalars(pl_module: pl.LightningModule, values: dict[str, float]) -> None:
    """``pl_module.log`` each finite value on_step.

    Every metric has one owner: a callback logs only names of its own, never one that ``RLModule.log_iteration``
    logs (``policy/entropy`` and ``policy/entropy_mc`` are the module's; see ``EntropyTracker``).
    """
    for name, value in values.items():
        if value is None or not math.isfinite(float(value)):
            continue
        pl_module.log(name, torch.tensor(float(value)), on_step=True, on_epoch=False)


def tensorboard_writer(trainer: pl.Trainer) -> Any | None:
    """The rank-0 TensorBoard ``SummaryWriter`` of the trainer's first logger, or None (other loggers/ranks)."""
    if not trainer.is_global_zero:
        return None
    for logger in getattr(trainer, "loggers", None) or []:
        exp = getattr(logger, "experiment", None)
        if exp is not None and hasattr(exp, "add_histogram") and hasattr(exp, "add_text"):
            return exp
    return None
