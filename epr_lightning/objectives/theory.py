"""Entropy dynamics of a policy-gradient step (docs/methods.md §1 and §5.1): pure functions for the ΔH diagnostic.

Setting: per state s a softmax policy π = softmax(z_s) over V actions and advantages A(s, ·). One exact
gradient-ascent step on J = Σ_s Σ_a π(a|s)·A(s,a) w.r.t. the logits moves
    Δz_a = η·π(a)·(A(a) − E_π A)
(∂π_a/∂z_b = π_a(δ_ab − π_b)), and ∂H/∂z_a = −π(a)·L(a) with L = log π + H, so to first order

    ΔH(s) = −η·Σ_a π(a)²·(A(a) − E_π A)·L(a).                                    [X] (precise form)

For a true advantage (E_π A = 0 per state) this is the reported form −η·Σ_a π²·A·L = −η·E_{a∼π}[π·A·L];
in general only the π-centred part of A matters (adding a constant to A(s,·) does not change the step). Each state's
logits move independently here, which is the theorem's "orthogonal score functions" assumption.

REPO: A − β·L with β* = Σ π²·(A − E_π A)·L / Σ π²·L² cancels the first-order change (E_π L = 0, so the shift
keeps E_π A).
"""

from __future__ import annotations

import torch
from torch import Tensor

from epr_lightning.objectives.base import masked_mean


def softmax_entropy(logits: Tensor) -> Tensor:
    """[..., V] logits → [...] entropy H = −Σ π log π."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def centred_logprob_full(logits: Tensor) -> Tensor:
    """[..., V] logits → [..., V] L(a) = log π(a) + H."""
    logp = torch.log_softmax(logits, dim=-1)
    return logp + softmax_entropy(logits)[..., None]


def _centred_adv(probs: Tensor, adv: Tensor) -> Tensor:
    return adv - (probs * adv).sum(dim=-1, keepdim=True)


def first_order_delta_entropy(logits: Tensor, adv: Tensor, lr: float) -> Tensor:
    """Predicted first-order ΔH per state for one exact gradient step of size ``lr`` on Σ_a π·A.

    Args:
        logits: [S, V] logits per state.
        adv: [S, V] advantage of every action in every state.
        lr: step size η on the logits.

    Returns:
        [S]: −η·Σ_a π²·(A − E_π A)·L (equals −η·Σ_a π²·A·L when A is π-centred).
    """
    if logits.shape != adv.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} must match adv shape {tuple(adv.shape)}")
    probs = torch.softmax(logits, dim=-1)
    ell = centred_logprob_full(logits)
    return -lr * (probs * probs * _centred_adv(probs, adv) * ell).sum(dim=-1)


def repo_decorrelating_beta(logits: Tensor, adv: Tensor) -> Tensor:
    """β*(s) = E_π[π·A·L] / E_π[π·L²] = Σπ²(A − E_π A)L / Σπ²L² per state ([S]; 0 where π is uniform)."""
    if logits.shape != adv.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} must match adv shape {tuple(adv.shape)}")
    probs = torch.softmax(logits, dim=-1)
    ell = centred_logprob_full(logits)
    num = (probs * probs * _centred_adv(probs, adv) * ell).sum(dim=-1)
    den = (probs * probs * ell * ell).sum(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den))


def sampled_entropy_covariance(
    logp: Tensor, entropy: Tensor, adv: Tensor, mask: Tensor, collision: Tensor
) -> Tensor:
    """Token mean of A·(π·L − S) over sampled tokens: the Theorem-1 term estimated from a rollout.

    Args:
        logp: [N, T] log π of each sampled token (e.g. ``StepRecord.old_logp``).
        entropy: [N, T] exact entropy H(s_t) (``StepRecord.entropy``).
        adv: [N, T] token advantages (``StepRecord.token_advantages``).
        mask: [N, T] loss mask.
        collision: [N, T] S_t = Σ_a π(a|s_t)²·L(a) (``StepRecord.collision``).

    Returns:
        A scalar. An exact gradient step of size η on A_b·log π(b|s) for one sampled token b moves the logits by
        η·A_b·(e_b − π), which changes the entropy by −η·A_b·(π_b·L_b − S) to first order. For b ∼ π its
        expectation is −η·Σ_a π²·(A − E_π A)·L, the theorem's form, so −η times this mean is the predicted
        per-token ΔH — also for advantages that are not centred per state (sequence advantages copied onto every
        token), where the uncentred estimate mean(π·A·L) can have the wrong sign. The realised ΔH of a real
        model update also depends on the optimizer and the shared parameters: compare sign and trend.
    """
    p = logp.float().exp()
    ell = logp.float() + entropy.float()
    return masked_mean(adv.float() * (p * ell - collision.float()), mask)


def predicted_entropy_change(
    logp: Tensor, entropy: Tensor, adv: Tensor, mask: Tensor, collision: Tensor, lr: float
) -> Tensor:
    """−lr·``sampled_entropy_covariance``: the first-order per-token ΔH implied by the sampled tokens."""
    return -lr * sampled_entropy_covariance(logp, entropy, adv, mask, collision)


def exact_collision(logits: Tensor) -> Tensor:
    """[..., V] logits → [...] S = Σ_a π(a)²·L(a) (the reference the chunked pass's S is tested against)."""
    probs = torch.softmax(logits, dim=-1)
    return (probs * probs * centred_logprob_full(logits)).sum(dim=-1)
