"""PrecisionAudit: how far the trainer's log-probs are from the sampler's, and what bf16 rounding would add.

From a ``StepRecord`` (completion tokens only, ``loss_mask``):

- ``precision/logp_absdiff_mean|max|p99``: |log π_old − log π_sampler| (trainer vs rollout engine);
- ``precision/kl_k3``: KL(π_sampler ‖ π_old) by the k3 estimator on the sampled tokens,
  k3 = (r − 1) − log r with r = π_old/π_sampler = exp(old − sampler) (unbiased, ≥ 0 per token);
- ``precision/ratio_max|min``: extremes of r = exp(old − sampler);
- ``precision/bf16_ratio_bias|absmax|exceed_eps_frac``: the bf16 rounding effect of docs/methods.md §9 [X]. On a
  sample of completion tokens, both fp32 log-prob tensors are rounded to bf16 and back, and
  δ = (bf16(old) − bf16(sampler)) − (old − sampler) is the log-ratio error caused by the rounding alone
  (the fp32 mismatch itself cancels). We report mean(e^δ) − 1 (the multiplicative bias of the ratio,
  ≈ Var(δ)/2 > 0 for zero-mean δ), max |e^δ − 1|, and the share of tokens where |e^δ − 1| > ``clip_eps``,
  i.e. where rounding alone could cross a PPO clip boundary. This isolates the mechanism; it does not
  measure a real bf16 forward pass (which also rounds inside the network).

With bf16 weights (``model.compute_dtype: bfloat16``, ``epr_lightning/master_weights.py``) the real pass is
measured too: every ``fp32_check_every_n`` iterations the update also scores each minibatch on the fp32 master
weights (an extra no-grad fp32 forward), and

- ``policy/clip_decision_diff`` (logged by the update, ``objectives/losses.py: clip_decision_diff``) is the share
  of tokens whose PPO clip decision differs from the one the fp32 pass gives;
- ``precision/fp32_logp_absdiff_mean|max``: |log π_old(bf16 compute) − log π_old(fp32 weights)| on completion
  tokens (also with ``model.logprob_dtype: bfloat16``, whose fp32 log-probs come with every pass).

Between two checked iterations Lightning logs the last value of these again (it keeps a metric once logged).

Means are exact over all ranks (sum/count all-reduce), max/min are global; p99 and the bf16 sample are per rank.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from epr_lightning.metrics import all_reduce

from ._logging import due_record, log_scalars


def logprob_gap_stats(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Additive/extreme statistics of the trainer-vs-sampler gap on masked tokens (fp64 scalars).

    Keys: ``absdiff_sum``, ``k3_sum``, ``count`` (add across ranks), ``absdiff_max``, ``ratio_max`` (max across
    ranks), ``ratio_min`` (min across ranks), ``absdiff_p99`` (this rank).
    """
    m = mask > 0
    d = old_logp.double()[m] - sampler_logp.double()[m]
    if d.numel() == 0:
        return {}
    ratio = d.exp()
    k3 = (ratio - 1.0) - d
    return {
        "absdiff_sum": d.abs().sum(),
        "k3_sum": k3.sum(),
        "count": torch.tensor(float(d.numel()), dtype=torch.float64),
        "absdiff_max": d.abs().max(),
        "ratio_max": ratio.max(),
        "ratio_min": ratio.min(),
        "absdiff_p99": torch.quantile(d.abs().float(), 0.99).double()
        if d.numel() <= 1 << 24
        else torch.kthvalue(d.abs(), int(0.99 * d.numel())).values,
    }


def bf16_rounding_effect(old_logp: Tensor, sampler_logp: Tensor, clip_eps: float = 0.2) -> dict[str, float]:
    """Ratio error caused by rounding two fp32 log-prob vectors to bf16 (see the module docstring).

    Args:
        old_logp, sampler_logp: 1-D fp32 log-probs of the same tokens.
        clip_eps: PPO clip width used for ``exceed_eps_frac``.
    """
    if old_logp.numel() == 0:
        return {}
    a, b = old_logp.float(), sampler_logp.float()
    rounded = a.bfloat16().float() - b.bfloat16().float()
    delta = (rounded - (a - b)).double()
    err = delta.exp() - 1.0
    return {
        "bf16_ratio_bias": float(err.mean()),
        "bf16_ratio_absmax": float(err.abs().max()),
        "bf16_exceed_eps_frac": float((err.abs() > clip_eps).double().mean()),
    }


def sample_tokens(mask: Tensor, k: int, seed: int) -> Tensor:
    """Flat indices of up to ``k`` masked tokens, drawn without replacement with a seeded generator."""
    idx = (mask.flatten() > 0).nonzero().flatten()
    if idx.numel() <= k:
        return idx
    gen = torch.Generator().manual_seed(seed)
    return idx[torch.randperm(idx.numel(), generator=gen)[:k]].sort().values


class PrecisionAudit(pl.Callback):
    """Log trainer↔sampler log-prob mismatch and a simulated bf16 rounding bias each N iterations.

    Args:
        bf16_sample_tokens: completion tokens (per rank) used for the bf16 rounding simulation (0 = skip it).
        every_n: audit every N iterations.
        clip_eps: PPO clip width for ``precision/bf16_exceed_eps_frac`` (0.2 = ε_low of PPO/DAPO).
        fp32_check_every_n: with bf16 weights, score the update's minibatches on the fp32 masters too every N
            iterations (0 = never): ``policy/clip_decision_diff`` and ``precision/fp32_logp_absdiff_*``.
    """

    def __init__(
        self,
        bf16_sample_tokens: int = 256,
        every_n: int = 1,
        clip_eps: float = 0.2,
        fp32_check_every_n: int = 10,
    ) -> None:
        if bf16_sample_tokens < 0:
            raise ValueError(f"PrecisionAudit.bf16_sample_tokens must be >= 0, got {bf16_sample_tokens}")
        if every_n < 1:
            raise ValueError(f"PrecisionAudit.every_n must be >= 1, got {every_n}")
        if not clip_eps > 0:
            raise ValueError(f"PrecisionAudit.clip_eps must be > 0, got {clip_eps}")
        if fp32_check_every_n < 0:
            raise ValueError(f"PrecisionAudit.fp32_check_every_n must be >= 0, got {fp32_check_every_n}")
        self.fp32_check_every_n = fp32_check_every_n
        self.bf16_sample_tokens = bf16_sample_tokens
        self.every_n = every_n
        self.clip_eps = clip_eps

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        master = getattr(pl_module, "master_weights", None)  # set only when the weights compute in bf16
        if master is not None:
            n = self.fp32_check_every_n
            master.fp32_reference = n > 0 and getattr(pl_module, "iteration", 0) % n == 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        master = getattr(pl_module, "master_weights", None)
        if master is not None:
            master.fp32_reference = False  # not in validation passes
        record = due_record(outputs, self.every_n)
        if record is None:
            return
        values = self.audit(
            record.old_logp, record.sampler_logp, record.loss_mask, record.iteration, pl_module.device
        )
        if record.old_logp_fp32 is not None:
            values.update(
                self.fp32_gap(record.old_logp, record.old_logp_fp32, record.loss_mask, pl_module.device)
            )
        log_scalars(pl_module, values)

    @staticmethod
    def fp32_gap(logp: Tensor, logp_fp32: Tensor, mask: Tensor, device: Any = None) -> dict[str, float]:
        """``precision/fp32_logp_absdiff_mean|max``: |log π − log π(fp32)| on masked tokens (over all ranks)."""
        d = (logp.double() - logp_fp32.double())[mask > 0].abs()
        zero = torch.tensor(0.0, dtype=torch.float64)
        sums = all_reduce(
            torch.stack([d.sum(), torch.tensor(float(d.numel()), dtype=torch.float64)]), "sum", device
        )
        peak = all_reduce(d.max() if d.numel() else zero, "max", device)
        if sums[1] == 0:
            return {}
        return {
            "precision/fp32_logp_absdiff_mean": float(sums[0] / sums[1]),
            "precision/fp32_logp_absdiff_max": float(peak),
        }

    def audit(
        self, old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, seed: int, device: Any = None
    ) -> dict[str, float]:
        """All ``precision/…`` values for one batch (means/extremes reduced across ranks)."""
        s = logprob_gap_stats(old_logp, sampler_logp, mask)
        zero = torch.tensor(0.0, dtype=torch.float64)
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        # every rank joins the collectives, even with no tokens of its own
        sums = all_reduce(
            torch.stack([s.get("absdiff_sum", zero), s.get("k3_sum", zero), s.get("count", zero)]),
            "sum",
            device,
        )
        maxes = all_reduce(
            torch.stack([s.get("absdiff_max", -inf), s.get("ratio_max", -inf), -s.get("ratio_min", inf)]),
            "max",
            device,
        )
        if sums[2] == 0:
            return {}
        out = {
            "precision/logp_absdiff_mean": float(sums[0] / sums[2]),
            "precision/kl_k3": float(sums[1] / sums[2]),
            "precision/logp_absdiff_max": float(maxes[0]),
            "precision/ratio_max": float(maxes[1]),
            "precision/ratio_min": float(-maxes[2]),
        }
        if "absdiff_p99" in s:
            out["precision/logp_absdiff_p99"] = float(s["absdiff_p99"])
        if self.bf16_sample_tokens:
            idx = sample_tokens(mask, self.bf16_sample_tokens, seed)
            bf16 = bf16_rounding_effect(old_logp.flatten()[idx], sampler_logp.flatten()[idx], self.clip_eps)
            out.update({f"precision/{k}": v for k, v in bf16.items()})
        return out
