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
        save_weights: at the end of training, save the policy's merged full weights (HF names, fp32) to
            ``final_weights.pt`` from rank 0 (every rank joins the gathers under FSDP2).
    """

    def __init__(self, dirpath: str, save_weights: bool = False) -> None:
        self.dirpath = Path(dirpath)
        self.save_weights = save_weights

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.save_weights:
            return
        import torch

        from epr_lightning.lora import merged_state_dict

        policy: torch.nn.Module = pl_module.policy  # type: ignore[assignment]  # an RLModule's policy
        weights = {k: v.detach().float().cpu().clone() for k, v in merged_state_dict(policy).items()}
        if trainer.global_rank == 0:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            torch.save(weights, self.dirpath / "final_weights.pt")

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
