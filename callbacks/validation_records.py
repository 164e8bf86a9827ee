"""ValidationRecords: every validation's per-prompt results as a JSONL file next to the run's logs.

The ``val/`` scalars are means over the held-out prompts; comparing two runs prompt by prompt (a paired bootstrap,
the prompts the untrained model rarely solves) needs the per-prompt counts behind them. ``RLModule.validation_step``
returns them; this callback writes one line per prompt to ``<log_dir>/val_groups/iteration_<i>.jsonl``, where
``i`` is the number of updates done before that validation (0 = the iteration-0 baseline).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist


def read_validation_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of one ``iteration_<i>.jsonl`` file, in prompt order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ValidationRecords(pl.Callback):
    """Write each validation's per-prompt records (id, samples ``n``, correct ``c``, answers, entropy sums).

    Args:
        dirname: folder under the trainer's ``log_dir`` (nothing is written when the run has no log dir).
    """

    def __init__(self, dirname: str = "val_groups") -> None:
        self.dirname = dirname
        self._groups: list[dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._groups = []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, dict):
            self._groups.extend(outputs.get("groups", []))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        groups = self._groups
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, groups)
            groups = [g for part in gathered for g in part]
        if trainer.global_rank != 0 or trainer.log_dir is None:
            return
        iteration = int(getattr(pl_module, "iteration", trainer.global_step))
        out = Path(trainer.log_dir) / self.dirname / f"iteration_{iteration:05d}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(g) + "\n" for g in groups))
        os.replace(tmp, out)  # a run killed mid-write leaves the previous file whole
