"""LoRA adapters (peft) for the policy. Placeholder signature; implemented in the LoRA change."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoRAConfig:
    """LoRA as in the paper: rank 16 on attention and MLP projections; trainable params kept in fp32."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def apply_lora(model: torch.nn.Module, config: LoRAConfig) -> torch.nn.Module:
    raise NotImplementedError("LoRA support lands with issue 5")
