"""How per-token losses become one scalar (the choice changes the effective per-token weight).

- ``token_mean``: sum over all tokens of the minibatch / number of tokens (DAPO).
- ``seq_mean_token_mean``: mean over tokens within each sequence, then mean over sequences (GRPO, and RLOO's
  per-trajectory token mean).
- ``seq_mean_token_sum_norm``: per-sequence token sum divided by a constant ``norm_length``, then mean over
  sequences (Dr.GRPO: the constant is the generation budget, ``sampling.max_new_tokens``).

Across data-parallel ranks the means are *global*: with a ``Normaliser`` holding the all-reduced token and
sequence counts of the minibatch, each rank returns ``world_size · local sum / global count``, so the
gradient average that DDP/FSDP2 performs yields Σ over all ranks' tokens / global count. Without it (one
process), the counts are the local ones and the formulas above hold as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

AggregationMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


@dataclass(frozen=True)
class Normaliser:
    """Denominators of the global means: the minibatch's tokens and sequences summed over all ranks."""

    tokens: float
    sequences: float
    world_size: int = 1

    @classmethod
    def local(cls, mask: Tensor) -> Normaliser:
        return cls(tokens=float(mask.sum()), sequences=float(mask.shape[0]), world_size=1)


def global_normaliser(mask: Tensor, device: torch.device | str | None = None) -> Normaliser:
    """All-reduce this rank's token and sequence counts (identity outside a process group)."""
    import torch.distributed as dist

    from epr_lightning.metrics import all_reduce

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Normaliser.local(mask)
    counts = all_reduce(
        torch.tensor([float(mask.sum()), float(mask.shape[0])], dtype=torch.float64), "sum", device
    )
    return Normaliser(tokens=float(counts[0]), sequences=float(counts[1]), world_size=dist.get_world_size())


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: AggregationMode,
    norm_length: float | None = None,
    normaliser: Normaliser | None = None,
) -> Tensor:
    """Reduce a [n, T] per-token loss to a scalar under ``mask`` (rows with an empty mask count as 0).

    ``norm_length`` is the constant of ``seq_mean_token_sum_norm`` (None = the minibatch's longest completion,
    kept for direct calls; the Objective always passes the generation budget). ``normaliser`` makes the means
    global across ranks (see the module docstring).
    """
    norm = normaliser if normaliser is not None else Normaliser.local(mask)
    masked = per_token * mask
    if mode == "token_mean":
        total, count = masked.sum(), norm.tokens
    elif mode == "seq_mean_token_mean":
        total, count = (masked.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).sum(), norm.sequences
    elif mode == "seq_mean_token_sum_norm":
        length = norm_length if norm_length is not None else float(mask.sum(dim=1).max().clamp_min(1.0))
        total, count = masked.sum() / length, norm.sequences
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {get_args(AggregationMode)}")
    return total * norm.world_size / max(count, 1.0)
