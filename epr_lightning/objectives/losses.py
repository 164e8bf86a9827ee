"""Policy surrogates: per-token [n, T] losses (the ``Objective`` aggregates them).

| Class | Per-token loss |
|---|---|
| ``PPOClipLoss`` | −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), r = exp(log π − log π_old) (PPO/GRPO/DAPO/ADAPO) |
| ``GSPOLoss`` | the same with the sequence ratio s_i = exp(mean_t(log π − log π_old)) (Zheng et al. 2025) |
| ``REINFORCELoss`` | −A·log π, strictly on-policy (RLOO as in the paper) |
| ``ClipCovLoss`` / ``KLCovLoss`` | wrap a base loss; Cui et al. 2025 covariance-targeted interventions |

Ratios are computed in fp32 from an fp32 log-prob difference (docs/methods.md §9). Optional truncated importance
sampling (``tis_cap``) reweights each token by min(π_old/π_sampler, C), correcting the trainer/sampler mismatch.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from epr_lightning.objectives.base import LossOutput, PolicyBatch, PolicyLoss, masked_mean


# -- pure functions ------------------------------------------------------------------------------------
def clipped_surrogate(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """−min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) per token."""
    return -torch.minimum(ratio * adv, ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)


def dual_clipped(per_token: Tensor, adv: Tensor, c: float) -> Tensor:
    """Dual-clip PPO (Ye et al. 2020): for A < 0 the loss is capped at −c·A, so a token whose ratio has run past c
    contributes no gradient (for A ≥ 0 the loss is unchanged)."""
    return torch.where(adv < 0, torch.minimum(per_token, -c * adv), per_token)


def clip_masks(
    ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """Tokens whose gradient the clip removes: upper (A>0, r>1+ε_high) and lower (A<0, r<1−ε_low), as floats."""
    m = mask > 0
    upper = (adv > 0) & (ratio > 1.0 + eps_high) & m
    lower = (adv < 0) & (ratio < 1.0 - eps_low) & m
    return upper.to(mask.dtype), lower.to(mask.dtype)


def token_covariance(adv: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    """Cui et al.'s per-token centred covariance (A − mean A)·(log π − mean log π), means over masked tokens.

    Detached; positions outside the mask are 0.
    """
    a, lp = adv.detach().float(), logp.detach().float()
    return (a - masked_mean(a, mask)) * (lp - masked_mean(lp, mask)) * mask


def _masked_max_min(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    m = mask > 0
    if not m.any():
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return zero, zero
    return x[m].max(), x[m].min()


def _check_eps(eps_low: float, eps_high: float) -> tuple[float, float]:
    if not (0.0 <= eps_low <= 1.0):
        raise ValueError(f"eps_low must be >= 0 and <= 1 (1 = no lower clip), got {eps_low!r}")
    if not (eps_high >= 0.0 and math.isfinite(eps_high)):
        raise ValueError(f"eps_high must be a finite number >= 0, got {eps_high!r}")
    return float(eps_low), float(eps_high)


def _check_tis(tis_cap: float | None) -> float | None:
    if tis_cap is not None and not (tis_cap > 0 and math.isfinite(tis_cap)):
        raise ValueError(f"tis_cap must be None or a finite number > 0, got {tis_cap!r}")
    return None if tis_cap is None else float(tis_cap)


def _apply_tis(
    per_token: Tensor, batch: PolicyBatch, cap: float | None, metrics: dict[str, Tensor]
) -> Tensor:
    if cap is None:
        return per_token
    raw = (batch.old_logp.float() - batch.sampler_logp.float()).exp().detach()
    w = raw.clamp_max(cap)
    metrics["tis_weight_mean"] = masked_mean(w, batch.mask).detach()
    metrics["tis_capped_frac"] = masked_mean((raw > cap).to(batch.mask.dtype), batch.mask).detach()
    return per_token * w


def clip_decision_diff(
    batch: PolicyBatch, upper: Tensor, lower: Tensor, eps_low: float, eps_high: float
) -> Tensor | None:
    """Share of masked tokens whose clip decision (upper or lower) differs between the batch's ratio and the
    fp32 ratio of the same tokens, or None when the batch carries no fp32 log-probs (fp32 runs)."""
    if batch.logp_fp32 is None or batch.old_logp_fp32 is None:
        return None
    ratio32 = (batch.logp_fp32.float() - batch.old_logp_fp32.float()).exp()
    up32, low32 = clip_masks(ratio32, batch.advantages.float(), batch.mask, eps_low, eps_high)
    flipped = ((up32 != upper) | (low32 != lower)).to(batch.mask.dtype)
    return masked_mean(flipped, batch.mask)


def _ratio_metrics(
    ratio: Tensor, log_ratio: Tensor, upper: Tensor, lower: Tensor, mask: Tensor
) -> dict[str, Tensor]:
    rmax, rmin = _masked_max_min(ratio.detach(), mask)
    return {
        "clipfrac_upper": masked_mean(upper, mask),
        "clipfrac_lower": masked_mean(lower, mask),
        "clipfrac": masked_mean(upper + lower, mask),
        "ratio_mean": masked_mean(ratio.detach(), mask),
        "ratio_max": rmax,
        "ratio_min": rmin,
        # k3 of KL(π_old‖π) with samples from π_old: r − 1 − log r, r = π/π_old
        "approx_kl": masked_mean(ratio.detach() - 1.0 - log_ratio.detach(), mask),
    }


# -- losses --------------------------------------------------------------------------------------------
class PPOClipLoss(PolicyLoss):
    """Token-level clipped surrogate (PPO/GRPO; DAPO/ADAPO with ε_high > ε_low).

    Args:
        eps_low: lower clip 1−ε_low of the ratio, in [0, 1] (1 = the ratio is never clipped from below).
        eps_high: upper clip 1+ε_high; a mutable attribute that the ADAPO controller adapts.
        tis_cap: if set, multiply each token's loss by min(exp(old_logp − sampler_logp), tis_cap) (detached).
        dual_clip: if set (c > 1), dual-clip PPO: for A < 0 the loss is capped at −c·A (Ye et al. 2020; Cui et
            al.'s Clip-Cov recipe uses c = 10 with ε_low = ε_high = 1).
    """

    zero_advantage_inert = True  # −min(r·A, clip(r)·A) (× a TIS weight): 0, and no gradient, at A = 0

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        tis_cap: float | None = None,
        dual_clip: float | None = None,
    ) -> None:
        self.eps_low, self.eps_high = _check_eps(eps_low, eps_high)
        self.tis_cap = _check_tis(tis_cap)
        if dual_clip is not None and not (dual_clip > 1.0 and math.isfinite(dual_clip)):
            raise ValueError(f"dual_clip must be None or a finite number > 1, got {dual_clip!r}")
        self.dual_clip = None if dual_clip is None else float(dual_clip)

    def __call__(self, batch: PolicyBatch) -> LossOutput:
        adv = batch.advantages.float()
        log_ratio = batch.logp.float() - batch.old_logp.float()
        ratio = log_ratio.exp()
        per_token = clipped_surrogate(ratio, adv, self.eps_low, self.eps_high)
        upper, lower = clip_masks(ratio.detach(), adv, batch.mask, self.eps_low, self.eps_high)
        metrics = _ratio_metrics(ratio, log_ratio, upper, lower, batch.mask)
        diff = clip_decision_diff(batch, upper, lower, self.eps_low, self.eps_high)
        if diff is not None:
            metrics["clip_decision_diff"] = diff
        if self.dual_clip is not None:
            dual = ((adv < 0) & (ratio.detach() > self.dual_clip) & (batch.mask > 0)).to(batch.mask.dtype)
            per_token = dual_clipped(per_token, adv, self.dual_clip)
            metrics["clipfrac_dual"] = masked_mean(dual, batch.mask)
        per_token = _apply_tis(per_token, batch, self.tis_cap, metrics)
        return LossOutput(
            loss=per_token, metrics=metrics, token_stats={"clip_upper": upper, "clip_lower": lower}
        )

    coefficients = {"eps_low": "eps_low", "eps_high": "eps_high"}


class GSPOLoss(PolicyLoss):
    """GSPO (Zheng et al. 2025), token form: s_i,t = sg[s_i]·π_t/sg[π_t], s_i = exp(mean_t(log π − log π_old)).

    The value of s_i,t equals s_i for every token of sequence i, so a whole sequence is clipped or not; its
    gradient w.r.t. log π_t is s_i. With per-sequence advantages and ``seq_mean_token_mean`` aggregation this is
    GSPO exactly; per-token advantages (e.g. after REPO-R) give GSPO-token.

    Args:
        eps_low: lower clip of the sequence ratio, in [0, 1) (GSPO: 3e-4).
        eps_high: upper clip (GSPO: 4e-4); mutable.
        tis_cap: optional truncated importance-sampling cap, as in ``PPOClipLoss``.
    """

    zero_advantage_inert = True  # as PPO-clip; the sequence ratio is the row's own

    def __init__(self, eps_low: float = 3e-4, eps_high: float = 4e-4, tis_cap: float | None = None) -> None:
        self.eps_low, self.eps_high = _check_eps(eps_low, eps_high)
        self.tis_cap = _check_tis(tis_cap)

    @staticmethod
    def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
        """[n]: mean over each sequence's masked tokens of log π − log π_old (0 for an empty row)."""
        d = (logp.float() - old_logp.float()) * mask
        return d.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def __call__(self, batch: PolicyBatch) -> LossOutput:
        adv = batch.advantages.float()
        logp = batch.logp.float()
        seq_log_ratio = self.sequence_log_ratio(logp, batch.old_logp, batch.mask)
        s = seq_log_ratio.detach().exp()
        ratio = s[:, None] * (logp - logp.detach()).exp()  # value s_i, d/dlogp_t = s_i
        per_token = clipped_surrogate(ratio, adv, self.eps_low, self.eps_high)
        upper, lower = clip_masks(ratio.detach(), adv, batch.mask, self.eps_low, self.eps_high)
        metrics = _ratio_metrics(ratio, (ratio.detach()).log(), upper, lower, batch.mask)
        rows = batch.mask.sum(dim=1) > 0
        if rows.any():
            metrics.update(
                seq_ratio_mean=s[rows].mean(), seq_ratio_max=s[rows].max(), seq_ratio_min=s[rows].min()
            )
        per_token = _apply_tis(per_token, batch, self.tis_cap, metrics)
        return LossOutput(
            loss=per_token, metrics=metrics, token_stats={"clip_upper": upper, "clip_lower": lower}
        )

    coefficients = {"eps_low": "eps_low", "eps_high": "eps_high"}


class REINFORCELoss(PolicyLoss):
    """Plain policy gradient −A·log π; strictly on-policy (one update per rollout, no ratio, no clip).

    The paper runs RLOO this way (RLOO advantages + this loss).
    """

    zero_advantage_inert = True  # −A·log π

    on_policy_only = True

    def __call__(self, batch: PolicyBatch) -> LossOutput:
        per_token = -batch.advantages.float() * batch.logp.float()
        return LossOutput(
            loss=per_token, metrics={"logp_mean": masked_mean(batch.logp.detach().float(), batch.mask)}
        )


class _CovWrapper(PolicyLoss):
    """A loss that wraps a base surrogate (``base`` is found by ``Objective.find`` and saved in its state)."""

    zero_advantage_inert = False  # the covariance is centred over the minibatch; KL-Cov's penalty ignores A

    def __init__(self, base: PolicyLoss) -> None:
        if not isinstance(base, PolicyLoss):
            raise ValueError(f"base must be a PolicyLoss, got {type(base).__name__}")
        self.base = base
        self.on_policy_only = base.on_policy_only


class ClipCovLoss(_CovWrapper):
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs").

    Among masked tokens not already clipped by the base loss whose covariance (A − Ā)(log π − mean log π) lies
    in [cov_low, cov_high], pick max(1, int(clip_ratio·#tokens)) at random and zero their loss (and so their
    gradient): those high-covariance tokens are what drives entropy down. Mirrors verl's
    ``compute_policy_loss_clip_cov``.

    Args:
        base: the surrogate whose per-token loss is masked (usually ``PPOClipLoss``).
        clip_ratio: fraction of the minibatch's tokens to detach (paper: 2e-4).
        cov_low: lower bound of the covariance window.
        cov_high: upper bound of the covariance window.
        seed: seed of the token-selection generator (advances every call).
    """

    def __init__(
        self,
        base: PolicyLoss,
        clip_ratio: float = 2e-4,
        cov_low: float = 1.0,
        cov_high: float = 5.0,
        seed: int = 0,
    ) -> None:
        super().__init__(base)
        if not (0.0 <= clip_ratio <= 1.0):
            raise ValueError(f"clip_ratio must be in [0, 1], got {clip_ratio!r}")
        if not cov_low < cov_high:
            raise ValueError(f"cov_low must be < cov_high, got cov_low={cov_low!r}, cov_high={cov_high!r}")
        self.clip_ratio, self.cov_low, self.cov_high = float(clip_ratio), float(cov_low), float(cov_high)
        self.generator = torch.Generator().manual_seed(int(seed))

    def select(self, cov: Tensor, mask: Tensor, exclude: Tensor | None = None) -> Tensor:
        """[n, T] float mask of the randomly chosen in-window tokens."""
        cand = (cov >= self.cov_low) & (cov <= self.cov_high) & (mask > 0)
        if exclude is not None:
            cand &= ~(exclude > 0)
        chosen = torch.zeros_like(mask)
        idx = torch.nonzero(cand.flatten()).flatten()
        if idx.numel() == 0 or self.clip_ratio == 0.0:
            return chosen
        k = min(max(1, int(self.clip_ratio * float(mask.sum()))), idx.numel())
        perm = torch.randperm(idx.numel(), generator=self.generator)[:k].to(idx.device)
        chosen.view(-1)[idx[perm]] = 1.0
        return chosen

    def __call__(self, batch: PolicyBatch) -> LossOutput:
        out = self.base(batch)
        cov = token_covariance(batch.advantages, batch.logp, batch.mask)
        clipped = out.token_stats.get("clip_upper")
        lower = out.token_stats.get("clip_lower")
        excl = None if clipped is None else (clipped + (lower if lower is not None else 0.0))
        chosen = self.select(cov, batch.mask, excl)
        metrics = dict(out.metrics)
        in_window = ((cov >= self.cov_low) & (cov <= self.cov_high)).to(batch.mask.dtype)
        metrics["cov/window_frac"] = masked_mean(in_window, batch.mask)
        metrics["cov/clipped_frac"] = masked_mean(chosen, batch.mask)
        metrics["cov/mean"] = masked_mean(cov, batch.mask)
        stats = dict(out.token_stats, cov_clipped=chosen)
        return LossOutput(loss=out.loss * (1.0 - chosen), metrics=metrics, token_stats=stats)


class KLCovLoss(_CovWrapper):
    """KL-Cov (Cui et al. 2025): add kl_coef·|log π − log π_old| on the top-k covariance tokens.

    k = max(1, int(k_ratio·#tokens)) tokens with the largest (A − Ā)(log π − mean log π) get the penalty; the rest
    keep the base loss. verl's version uses the *unclipped* −A·r as the base; here the base is configurable
    (a PPO clip wide enough never to bind reproduces verl).

    Known issue: strictly on-policy (one update per rollout, log π = log π_old) the penalty is 0 with zero
    gradient (d|x|/dx = 0 at 0), so KL-Cov is a no-op; it only acts from the second minibatch/epoch onward.

    Args:
        base: the surrogate the penalty is added to.
        k_ratio: fraction of the minibatch's tokens to penalise (paper: 2e-3).
        kl_coef: penalty weight (paper: 1.0).
    """

    def __init__(self, base: PolicyLoss, k_ratio: float = 2e-3, kl_coef: float = 1.0) -> None:
        super().__init__(base)
        if not (0.0 <= k_ratio <= 1.0):
            raise ValueError(f"k_ratio must be in [0, 1], got {k_ratio!r}")
        if not (kl_coef >= 0.0 and math.isfinite(kl_coef)):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {kl_coef!r}")
        if base.on_policy_only:
            warnings.warn(
                "KLCovLoss on a strictly on-policy base loss is a no-op (log π = log π_old, so |Δlog π| = 0)",
                UserWarning,
                stacklevel=2,
            )
        self.k_ratio, self.kl_coef = float(k_ratio), float(kl_coef)

    def select(self, cov: Tensor, mask: Tensor) -> Tensor:
        """[n, T] float mask of the top-k masked tokens by covariance."""
        chosen = torch.zeros_like(mask)
        idx = torch.nonzero(mask.flatten() > 0).flatten()
        if idx.numel() == 0 or self.k_ratio == 0.0:
            return chosen
        k = min(max(1, int(self.k_ratio * idx.numel())), idx.numel())
        top = torch.topk(cov.flatten()[idx], k).indices
        chosen.view(-1)[idx[top]] = 1.0
        return chosen

    def __call__(self, batch: PolicyBatch) -> LossOutput:
        out = self.base(batch)
        cov = token_covariance(batch.advantages, batch.logp, batch.mask)
        chosen = self.select(cov, batch.mask)
        penalty = self.kl_coef * (batch.logp.float() - batch.old_logp.float()).abs() * chosen
        metrics = dict(out.metrics)
        metrics["cov/kl_frac"] = masked_mean(chosen, batch.mask)
        metrics["cov/kl_penalty"] = masked_mean(penalty.detach(), batch.mask)
        metrics["cov/mean"] = masked_mean(cov, batch.mask)
        stats = dict(out.token_stats, cov_kl=chosen)
        return LossOutput(loss=out.loss + penalty, metrics=metrics, token_stats=stats)

    coefficients = {"kl_cov_coef": "kl_coef"}
