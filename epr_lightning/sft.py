"""The warm-start SFT stage: ``epr-lightning sft --config configs/sft/<x>.yaml``.

``SFTModule`` trains the policy that ``fit`` would build (the same ``policy`` and ``lora`` settings) on
chat-message demonstrations (``sft_data.ChatDataModule``), with the loss — the mean negative log-likelihood per
assistant token — on the assistant turns only, tokenized exactly as RL episodes are. Its checkpoints hold the
policy under ``policy.*``, which is what ``fit`` loads through ``model.init_weights``::

    epr-lightning sft --config configs/sft/toolworld.yaml           # writes .../checkpoints/last.ckpt
    epr-lightning fit --config ... --model.init_args.init_weights .../checkpoints/last.ckpt

When to stop (``trainer.max_steps`` / ``max_epochs``) is the experiment's choice; ``val/loss`` on the held-out
share of the demonstrations is logged at every validation.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from epr_lightning.logprobs import score_tokens
from epr_lightning.lora import LoRAConfig, apply_lora
from epr_lightning.master_weights import build_optimizer
from epr_lightning.models import PackagedSmolLM2, PolicySource, disable_dropout, eos_token_ids
from epr_lightning.sft_data import ChatDataModule, ChatEncoder


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


def assistant_nll(logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(mean −log π over the masked tokens, their count): every assistant token weighs the same."""
    count = mask.sum()
    return -(logp * mask).sum() / count.clamp_min(1.0), count


class SFTModule(pl.LightningModule):
    """Supervised fine-tuning of the policy on demonstrations, as a warm start for RL.

    Args:
        policy: where the model and tokenizer come from (as ``fit``'s ``model.policy``).
        lora: train LoRA adapters instead of all weights (as ``fit``'s ``model.lora``; ``fit`` must use the same
            settings to load the checkpoint).
        optimizer: optimizer factory (AdamW by default).
        lr_scheduler: optional scheduler factory, stepped once per optimizer step.
        gradient_checkpointing: recompute decoder activations in backward (saves memory).
        logprob_chunk_size: scored tokens per LM-head chunk (the log-prob pass of ``logprobs.py``).
    """

    def __init__(
        self,
        policy: PolicySource | None = None,
        lora: LoRAConfig | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = False,
        logprob_chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        if logprob_chunk_size < 1:
            raise ValueError(f"model.logprob_chunk_size must be >= 1, got {logprob_chunk_size}")
        self.policy_source = policy
        self.lora = lora
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.gradient_checkpointing = gradient_checkpointing
        self.logprob_chunk_size = logprob_chunk_size
        self.policy: torch.nn.Module | None = None
        self.tokenizer: Any = None
        self.stop_ids: list[int] = []
        self.chat_template_kwargs: dict[str, Any] = {}

    def configure_model(self) -> None:
        """Build the policy as ``RLModule.configure_model`` does (idempotent)."""
        if self.policy is not None:
            return
        source = self.policy_source if self.policy_source is not None else PackagedSmolLM2()
        policy: Any
        policy, self.tokenizer = source.build()
        self.stop_ids = eos_token_ids(policy, self.tokenizer)
        self.chat_template_kwargs = dict(getattr(source, "chat_template_kwargs", None) or {})
        if self.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        if self.lora is not None:
            policy = apply_lora(policy, self.lora)
        disable_dropout(policy)
        self.policy = policy

    def encoder(self, stop_strings: list[str] | None = None) -> ChatEncoder:
        """The conversation encoder of this policy's tokenizer (built by ``configure_model``)."""
        self.configure_model()
        return ChatEncoder(self.tokenizer, self.stop_ids, self.chat_template_kwargs, stop_strings)

    def setup(self, stage: str) -> None:
        self.configure_model()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not isinstance(datamodule, ChatDataModule):
            raise ValueError("SFTModule needs data: epr_lightning.sft_data.ChatDataModule")
        pad = next(t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if t is not None)
        datamodule.use_encoder(self.encoder(datamodule.stop_strings), pad)

    def configure_optimizers(self) -> Any:
        assert self.policy is not None
        opt = build_optimizer(self.policy, self.optimizer_factory, None)
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"},
        }

    def nll(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(mean NLL of the batch's assistant tokens, their count) under the current policy (temperature 1)."""
        assert self.policy is not None
        scored = score_tokens(
            self.policy, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
            chunk_size=self.logprob_chunk_size,
        )  # fmt: skip
        return assistant_nll(scored.logp, batch["loss_mask"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, count = self.nll(batch)
        size = len(batch["input_ids"])
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=size)
        self.log("train/assistant_tokens", count, on_step=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, count = self.nll(batch)
        # weighted by tokens, so val/loss is the mean NLL per assistant token of the whole held-out share
        size = max(int(count), 1)
        self.log(
            "val/loss", loss, on_epoch=True, on_step=False, prog_bar=True, batch_size=size, sync_dist=True
        )

    @property
    def iteration(self) -> int:
        """Optimizer steps so far: what ``checkpointing.RolloutCheckpoint`` counts (``every_n_iterations``)."""
        return int(self.global_step) if self._trainer is not None else 0
