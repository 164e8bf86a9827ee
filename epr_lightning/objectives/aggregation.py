"""How per-token losses become one scalar (the choice changes the effective per-token weight).

- ``token_mean``: sum over all tokens of the minibatch / number of tokens (DAPO).
- ``seq_mean_token_mean``: mean over tokens within each sequence, then mean over sequences (GRPO).
- ``seq_mean_token_sum_norm``: per-sequence token sum divided by a constant ``norm_length``, then mean
  over sequences (Dr.GRPO); ``norm_length`` defaults to the minibatch's longest completion.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

AggregationMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def aggregate(per_token: Tensor, mask: Tensor, mode: AggregationMode, norm_length: float | None = None) -> Tensor:
    """Reduce a [n, T] per-token loss to a scalar under ``mask`` (rows with an empty mask count as 0)."""
    masked = per_token * mask
    if mode == "token_mean":
        return masked.sum() / mask.sum().clamp_min(1.0)
    if mode == "seq_mean_token_mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).mean()
    if mode == "seq_mean_token_sum_norm":
        length = norm_length if norm_length is not None else float(mask.sum(dim=1).max().clamp_min(1.0))
        return (masked.sum(dim=1) / length).mean()
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AggregationMode.__args__}")
