"""EntropyTracker: the policy-entropy dashboard (level, quantiles, positions, forking tokens, collapse alarm).

Reads ``StepRecord.entropy`` (exact full-vocab entropy of π_old per token, fp32) and ``old_logp`` over the
completion tokens (``loss_mask``). Sums and counts are all-reduced across ranks, so the token means are exact
over the global batch; quantiles and the histogram use this rank's tokens only (rank 0 is what is logged).

Logged each iteration (``policy/…``). Not among them: ``policy/entropy`` (exact token mean) and
``policy/entropy_mc`` (mean −log π_old of the sampled tokens), which ``RLModule.log_iteration`` owns and logs
once per step (``MODULE_OWNED``); the tracker uses its all-reduced token mean H only for the state below.
- ``entropy_q10`` / ``entropy_q50`` / ``entropy_q90`` (per-token quantiles);
- ``entropy_pos_A_B``: mean entropy of completion tokens at positions [A, B) within the completion
  (the last bucket is ``…_A_inf``);
- ``entropy_change_pct``: 100·(H − H₀)/H₀ against the first iteration's entropy H₀;
- ``entropy_cumulative``: Σ over iterations of H (area under the entropy curve, one unit per iteration);
- ``forking_token_frac``: share of tokens with entropy above the step-0 80th percentile ("forking" tokens);
- ``collapse_warning``: 1 once H < collapse_fraction·H₀ for ``collapse_patience`` consecutive iterations
  (a ``rank_zero_warn`` fires once), else 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from epr_lightning.metrics import all_reduce
from epr_lightning.record import StepRecord

from ._logging import get_record, log_scalars, tensorboard_writer

_QUANTILE_LIMIT = 1 << 24
#: ``policy/`` names the module owns (``RLModule.log_iteration``): computed here, never logged here.
MODULE_OWNED = ("entropy", "entropy_mc")


def completion_positions(loss_mask: Tensor) -> Tensor:
    """Index of each completion token within its completion (0, 1, …), −1 off the mask. [N, T] → [N, T]."""
    m = loss_mask > 0
    return torch.where(m, m.long().cumsum(dim=1) - 1, torch.full_like(m, -1, dtype=torch.long))


def bucket_names(position_buckets: Sequence[int]) -> list[str]:
    """``(0, 16, 64)`` → ``["pos_0_16", "pos_16_64", "pos_64_inf"]``."""
    edges = list(position_buckets) + [None]
    return [f"pos_{a}_{'inf' if b is None else b}" for a, b in zip(edges[:-1], edges[1:], strict=True)]


def entropy_sums(
    entropy: Tensor,
    old_logp: Tensor,
    loss_mask: Tensor,
    position_buckets: Sequence[int],
    forking_threshold: float | None,
) -> Tensor:
    """Additive statistics of one batch, packed so one all-reduce makes them global (float64).

    Layout: [Σ H, #tokens, Σ −log π_old, #tokens with H > threshold, Σ H per bucket…, #tokens per bucket…].
    """
    m = loss_mask > 0
    h = entropy.double()[m]
    pos = completion_positions(loss_mask)[m]
    fork = float((h > forking_threshold).sum()) if forking_threshold is not None else 0.0
    starts = list(position_buckets)
    ends: list[int | None] = [*starts[1:], None]
    b_sum, b_cnt = [], []
    for a, b in zip(starts, ends, strict=True):
        sel = (pos >= a) & (pos < b) if b is not None else pos >= a
        b_sum.append(float(h[sel].sum()))
        b_cnt.append(float(sel.sum()))
    head = [float(h.sum()), float(h.numel()), float((-old_logp.double()[m]).sum()), fork]
    return torch.tensor(head + b_sum + b_cnt, dtype=torch.float64)


def summarize_sums(sums: Tensor, position_buckets: Sequence[int]) -> dict[str, float]:
    """Token means from ``entropy_sums`` (global after an all-reduce). Keys without the ``policy/`` prefix."""
    s = sums.tolist()
    n = s[1]
    if n == 0:
        return {}
    out = {"entropy": s[0] / n, "entropy_mc": s[2] / n, "forking_token_frac": s[3] / n}
    k = len(position_buckets)
    for i, name in enumerate(bucket_names(position_buckets)):
        if s[4 + k + i] > 0:
            out[f"entropy_{name}"] = s[4 + i] / s[4 + k + i]
    return out


def quantile(values: Tensor, qs: Sequence[float]) -> Tensor:
    """``torch.quantile`` of the flattened values (fp32); an evenly strided subsample beyond 2**24 elements."""
    v = values.float().flatten()
    if v.numel() > _QUANTILE_LIMIT:  # torch.quantile refuses larger inputs
        v = v[:: v.numel() // _QUANTILE_LIMIT + 1]
    return torch.quantile(v, torch.tensor(list(qs), dtype=torch.float32))


def token_quantiles(values: Tensor, quantiles: Sequence[float]) -> dict[str, float]:
    """``{"entropy_q10": …}`` for each q (names use round(100·q)); empty when there are no tokens."""
    if values.numel() == 0 or not quantiles:
        return {}
    qs = quantile(values, quantiles)
    return {f"entropy_q{round(q * 100)}": float(x) for q, x in zip(quantiles, qs, strict=True)}


def entropy_summary(
    record: StepRecord,
    position_buckets: Sequence[int] = (0, 16, 64, 256),
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    forking_threshold: float | None = None,
) -> dict[str, float]:
    """Entropy statistics of one record on this rank (no cross-rank reduction), for validation loops.

    Keys: ``entropy``, ``entropy_mc``, ``entropy_qXX``, ``entropy_pos_A_B`` and, when a threshold is given,
    ``forking_token_frac``.
    """
    sums = entropy_sums(
        record.entropy, record.old_logp, record.loss_mask, position_buckets, forking_threshold
    )
    out = summarize_sums(sums, position_buckets)
    if forking_threshold is None:
        out.pop("forking_token_frac", None)
    out.update(token_quantiles(record.entropy[record.loss_mask > 0], quantiles))
    return out


class EntropyTracker(pl.Callback):
    """Track policy entropy per iteration and warn on collapse (see the module docstring for the metrics).

    Args:
        histogram_every_n: write a TensorBoard histogram of per-token entropy every N iterations (0 = never).
        position_buckets: increasing start positions of the completion-position buckets; the last is open-ended.
        quantiles: per-token entropy quantiles to log, each in (0, 1).
        collapse_fraction: entropy below this fraction of the initial entropy counts as collapsing.
        collapse_patience: consecutive collapsing iterations before the warning fires.
        forking_quantile: quantile of the first iteration's token entropies that defines "forking" tokens.
    """

    def __init__(
        self,
        histogram_every_n: int = 10,
        position_buckets: tuple[int, ...] = (0, 16, 64, 256),
        quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
        collapse_fraction: float = 0.5,
        collapse_patience: int = 3,
        forking_quantile: float = 0.8,
    ) -> None:
        if histogram_every_n < 0:
            raise ValueError(f"EntropyTracker.histogram_every_n must be >= 0, got {histogram_every_n}")
        if (
            not position_buckets
            or position_buckets[0] != 0
            or list(position_buckets) != sorted(set(position_buckets))
        ):
            raise ValueError(
                f"EntropyTracker.position_buckets must start at 0 and strictly increase, got {position_buckets}"
            )
        if any(not 0 < q < 1 for q in quantiles):
            raise ValueError(f"EntropyTracker.quantiles must lie in (0, 1), got {quantiles}")
        if not 0 < collapse_fraction < 1:
            raise ValueError(f"EntropyTracker.collapse_fraction must be in (0, 1), got {collapse_fraction}")
        if collapse_patience < 1:
            raise ValueError(f"EntropyTracker.collapse_patience must be >= 1, got {collapse_patience}")
        if not 0 < forking_quantile < 1:
            raise ValueError(f"EntropyTracker.forking_quantile must be in (0, 1), got {forking_quantile}")
        self.histogram_every_n = histogram_every_n
        self.position_buckets = tuple(position_buckets)
        self.quantiles = tuple(quantiles)
        self.collapse_fraction = collapse_fraction
        self.collapse_patience = collapse_patience
        self.forking_quantile = forking_quantile
        # state (checkpointed)
        self.initial_entropy: float | None = None
        self.forking_threshold: float | None = None
        self.cumulative = 0.0
        self.below_count = 0
        self.warned = False
        self.iterations_seen = 0

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = get_record(outputs)
        if record is None:
            return
        mask = record.loss_mask > 0
        token_h = record.entropy[mask]
        if self.forking_threshold is None:
            local = float(quantile(token_h, [self.forking_quantile])[0]) if token_h.numel() else 0.0
            world = max(trainer.world_size, 1)
            self.forking_threshold = (
                float(all_reduce(torch.tensor([local]), "sum", pl_module.device)[0]) / world
            )
        sums = entropy_sums(
            record.entropy, record.old_logp, record.loss_mask, self.position_buckets, self.forking_threshold
        )
        stats = summarize_sums(all_reduce(sums, "sum", pl_module.device), self.position_buckets)
        if not stats:
            return
        values = {f"policy/{k}": v for k, v in stats.items() if k not in MODULE_OWNED}
        values.update({f"policy/{k}": v for k, v in token_quantiles(token_h, self.quantiles).items()})
        values.update({f"policy/{k}": v for k, v in self.update_state(stats["entropy"]).items()})
        log_scalars(pl_module, values)
        self._histogram(trainer, record.iteration, token_h)

    def update_state(self, entropy: float) -> dict[str, float]:
        """Advance initial/cumulative/collapse state with this iteration's global token-mean entropy."""
        if self.initial_entropy is None:
            self.initial_entropy = entropy
        self.iterations_seen += 1
        self.cumulative += entropy
        h0 = self.initial_entropy
        out = {"entropy_cumulative": self.cumulative}
        if h0 > 0:
            out["entropy_change_pct"] = 100.0 * (entropy - h0) / h0
        self.below_count = self.below_count + 1 if entropy < self.collapse_fraction * h0 else 0
        collapsed = self.below_count >= self.collapse_patience
        if collapsed and not self.warned:
            self.warned = True
            rank_zero_warn(
                f"Entropy collapse: policy entropy {entropy:.4g} has stayed below {self.collapse_fraction:g} x the "
                f"initial {h0:.4g} for {self.below_count} consecutive iterations."
            )
        out["collapse_warning"] = 1.0 if collapsed else 0.0
        return out

    def _histogram(self, trainer: pl.Trainer, iteration: int, token_h: Tensor) -> None:
        if not self.histogram_every_n or iteration % self.histogram_every_n or token_h.numel() == 0:
            return
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_histogram("policy/entropy_hist", token_h.float(), global_step=iteration)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_entropy": self.initial_entropy,
            "forking_threshold": self.forking_threshold,
            "cumulative": self.cumulative,
            "below_count": self.below_count,
            "warned": self.warned,
            "iterations_seen": self.iterations_seen,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initial_entropy = state_dict["initial_entropy"]
        self.forking_threshold = state_dict["forking_threshold"]
        self.cumulative = float(state_dict["cumulative"])
        self.below_count = int(state_dict["below_count"])
        self.warned = bool(state_dict["warned"])
        self.iterations_seen = int(state_dict["iterations_seen"])
