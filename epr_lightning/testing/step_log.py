"""A callback that appends every rank's per-iteration metrics to ``<dir>/rank<r>.jsonl`` (tests compare runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class StepMetricsLog(pl.Callback):
    """Writes ``{"iteration", "rank", "world_size", "metrics", "num_tokens"}`` per rollout iteration and rank.

    Args:
        dirpath: output folder (created).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = outputs["record"]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        line = {
            "iteration": record.iteration,
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "num_tokens": int(record.loss_mask.sum()),
            "prompts": record.prompts,
            "metrics": record.metrics,
        }
        with open(self.dirpath / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
