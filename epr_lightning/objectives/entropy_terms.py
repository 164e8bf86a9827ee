"""Extra per-token loss terms added to the policy loss: an explicit entropy bonus and a KL penalty to a
reference policy. (Clip-Cov / KL-Cov wrap the surrogate instead and live in ``losses.py``.)
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from torch import Tensor

from epr_lightning.objectives.base import LossOutput, LossTerm, PolicyBatch, masked_mean

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from tokens sampled from π (Schulman's k1/k2/k3).

    With d = log π_ref − log π: k1 = −d, k2 = d²/2, k3 = e^d − d − 1 (unbiased and ≥ 0).
    """
    d = ref_logp.float() - logp.float()
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return d.exp() - d - 1.0
    raise ValueError(f"estimator must be one of {get_args(KLEstimator)}, got {estimator!r}")


def _check_coef(coef: float) -> float:
    if not (coef >= 0.0 and math.isfinite(coef)):
        raise ValueError(f"coef must be a finite number >= 0, got {coef!r}")
    return float(coef)


class EntropyBonus(LossTerm):
    """Explicit entropy bonus: per-token loss −coef·H(s_t), with the gradient through the full-vocab entropy.

    Needs a logits pass (not CCE-compatible, unlike REPO). ``coef`` is mutable: the adaptive-bonus
    controller adapts it. With a ``target`` (set by ``AdaptiveEntropyBonus``) the bonus follows Skywork-OR1's
    rule coef·1{H ≤ target}: it acts only in optimizer steps whose minibatch token-mean entropy (of the current
    policy, detached) is at or below the target, so it never pushes an overshooting entropy further up.

    Args:
        coef: bonus weight β ≥ 0.
        target: entropy at or below which the bonus acts (None = always).
    """

    needs_entropy_grad = True

    def __init__(self, coef: float = 1e-3, target: float | None = None) -> None:
        self.coef = _check_coef(coef)
        self.target = None if target is None else float(target)

    def __call__(self, batch: PolicyBatch) -> LossOutput:
        if batch.entropy is None:
            raise ValueError("EntropyBonus needs batch.entropy (with grad); the module computed none")
        entropy = batch.entropy.float()
        active = self.target is None or float(masked_mean(entropy.detach(), batch.mask)) <= self.target
        per_token = -(self.coef if active else 0.0) * entropy
        metrics = {
            "entropy_bonus": masked_mean(per_token.detach(), batch.mask),
            "entropy_bonus_coef": per_token.new_tensor(self.coef),
            "entropy_bonus_active": per_token.new_tensor(float(active)),
        }
        return LossOutput(loss=per_token, metrics=metrics)

    coefficients = {"entropy_coef": "coef", "entropy_target": "target"}


class KLPenalty(LossTerm):
    """KL penalty to a frozen reference policy: per-token coef·KL_est(π‖π_ref).

    Args:
        coef: penalty weight ≥ 0.
        estimator: ``k1``, ``k2`` or ``k3`` (default; the GRPO paper's choice).
    """

    needs_reference = True

    def __init__(self, coef: float = 1e-3, estimator: KLEstimator = "k3") -> None:
        self.coef = _check_coef(coef)
        if estimator not in get_args(KLEstimator):
            raise ValueError(f"estimator must be one of {get_args(KLEstimator)}, got {estimator!r}")
        self.estimator = estimator

    def __call__(self, batch: PolicyBatch) -> LossOutput:
        if batch.ref_logp is None:
            raise ValueError("KLPenalty needs batch.ref_logp (reference log-probs); the module computed none")
        kl = kl_estimate(batch.logp, batch.ref_logp, self.estimator)
        return LossOutput(loss=self.coef * kl, metrics={"kl_ref": masked_mean(kl.detach(), batch.mask)})

    coefficients = {"kl_coef": "coef"}
