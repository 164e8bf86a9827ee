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


def logged_by_module(trainer: pl.Trainer, record: StepRecord, name: str) -> bool:
    """True when the module already logged ``name`` this iteration (so a callback must not log it twice).

    Looks at ``record.metrics`` and at the keys ``training_step`` logged in the trainer's result collection.
    """
    if name in record.metrics:
        return True
    results = getattr(trainer, "_results", None)
    try:
        return results is not None and f"training_step.{name}" in results
    except TypeError:
        return False


def log_scalars(
    pl_module: pl.LightningModule,
    record: StepRecord,
    values: dict[str, float],
    prog_bar: tuple[str, ...] = (),
) -> None:
    """``pl_module.log`` each finite value on_step, skipping names the module already logged this step."""
    trainer = pl_module.trainer
    for name, value in values.items():
        if value is None or not math.isfinite(float(value)) or logged_by_module(trainer, record, name):
            continue
        pl_module.log(
            name, torch.tensor(float(value)), on_step=True, on_epoch=False, prog_bar=name in prog_bar
        )


def tensorboard_writer(trainer: pl.Trainer) -> Any | None:
    """The rank-0 TensorBoard ``SummaryWriter`` of the trainer's first logger, or None (other loggers/ranks)."""
    if not trainer.is_global_zero:
        return None
    for logger in getattr(trainer, "loggers", None) or []:
        exp = getattr(logger, "experiment", None)
        if exp is not None and hasattr(exp, "add_histogram") and hasattr(exp, "add_text"):
            return exp
    return None
