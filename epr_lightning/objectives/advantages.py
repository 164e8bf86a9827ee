"""Sequence-level advantage estimators: one scalar per rollout from the rewards of its group.

A *group* is the G rollouts sampled for one prompt (``group_index`` says which group each rollout is in; the
ids need not be contiguous or sorted). The pure functions below do the arithmetic; the classes are what a
YAML config selects by ``class_path``.

| Class | Advantage of rollout i in a group of size G |
|---|---|
| ``GRPOAdvantage`` | (R_i − mean R) / (std R + eps), std with Bessel's correction (unbiased, as TRL/verl) |
| ``DrGRPOAdvantage`` | R_i − mean R (Dr.GRPO: no std division) |
| ``RLOOAdvantage`` | R_i − mean_{j≠i} R_j = G/(G−1)·(R_i − mean R) |
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from epr_lightning.objectives.base import AdvantageEstimator


def _check_inputs(rewards: Tensor, group_index: Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_index.shape != rewards.shape:
        raise ValueError(
            f"group_index shape {tuple(group_index.shape)} must match rewards shape {tuple(rewards.shape)}"
        )
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise ValueError(f"rewards must be finite; non-finite at rollout indices {bad[:10]}")


def group_sizes(group_index: Tensor) -> Tensor:
    """[N] → [N]: the size of the group each rollout belongs to."""
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    return counts[inverse]


def group_mean_std(rewards: Tensor, group_index: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """Per-rollout group mean and group standard deviation of the rewards.

    Args:
        rewards: [N] float rewards.
        group_index: [N] integer group id of each rollout.
        unbiased: divide the squared deviations by G−1 (Bessel) instead of G. A group of size 1 then has an
            undefined (NaN) std.

    Returns:
        (mean, std), each [N]: the statistic of the rollout's own group.
    """
    _check_inputs(rewards, group_index)
    r = rewards.to(torch.float32)
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    k = counts.numel()
    sums = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    means = sums / counts.to(r.dtype)
    sq = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, inverse, (r - means[inverse]) ** 2)
    denom = (counts - 1 if unbiased else counts).to(r.dtype)
    var = torch.where(denom > 0, sq / denom.clamp_min(1.0), torch.full_like(sq, math.nan))
    return means[inverse], var.sqrt()[inverse]


def grpo_advantages(
    rewards: Tensor, group_index: Tensor, eps: float = 1e-6, scale_by_std: bool = True
) -> Tensor:
    """(R − group mean) / (group std + eps), or just R − group mean when ``scale_by_std`` is False."""
    mean, std = group_mean_std(rewards, group_index, unbiased=True)
    centred = rewards.to(torch.float32) - mean
    if not scale_by_std:
        return centred
    sizes = group_sizes(group_index)
    if (sizes < 2).any():
        raise ValueError(
            "GRPO with scale_by_std=True needs groups of at least 2 rollouts (num_generations >= 2); "
            f"found a group of size {int(sizes.min())}"
        )
    return centred / (std + eps)


def rloo_advantages(rewards: Tensor, group_index: Tensor) -> Tensor:
    """Leave-one-out baseline: R_i − mean of the other rollouts of the same group."""
    _check_inputs(rewards, group_index)
    sizes = group_sizes(group_index)
    if (sizes < 2).any():
        raise ValueError(
            "RLOO needs groups of at least 2 rollouts (num_generations >= 2); "
            f"found a group of size {int(sizes.min())}"
        )
    r = rewards.to(torch.float32)
    mean, _ = group_mean_std(r, group_index, unbiased=False)
    g = sizes.to(r.dtype)
    # mean_{j≠i} R_j = (G·mean − R_i)/(G−1)  ⇒  R_i − that = G/(G−1)·(R_i − mean)
    return g / (g - 1.0) * (r - mean)


class GRPOAdvantage(AdvantageEstimator):
    """GRPO group-normalised advantage (R − mean) / (std + eps) over the rollouts of each prompt.

    The std uses Bessel's correction (divides by G−1), like ``torch.std`` in TRL and verl. A group whose
    rewards are all equal gets advantage 0.

    Args:
        eps: added to the std before dividing (keeps degenerate groups finite); must be >= 0.
        scale_by_std: divide by the group std; False gives Dr.GRPO's mean-centred advantage.
    """

    def __init__(self, eps: float = 1e-6, scale_by_std: bool = True) -> None:
        if not (eps >= 0.0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)
        self.scale_by_std = bool(scale_by_std)

    def __call__(self, rewards: Tensor, group_index: Tensor) -> Tensor:
        return grpo_advantages(rewards, group_index, eps=self.eps, scale_by_std=self.scale_by_std)


class DrGRPOAdvantage(AdvantageEstimator):
    """Dr.GRPO advantage: R − group mean, without the std division (Liu et al. 2025)."""

    def __call__(self, rewards: Tensor, group_index: Tensor) -> Tensor:
        return grpo_advantages(rewards, group_index, scale_by_std=False)


class RLOOAdvantage(AdvantageEstimator):
    """REINFORCE leave-one-out: A_i = R_i − mean_{j≠i} R_j (needs at least 2 rollouts per prompt)."""

    def __call__(self, rewards: Tensor, group_index: Tensor) -> Tensor:
        return rloo_advantages(rewards, group_index)
