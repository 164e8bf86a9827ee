"""Theorem 1 (first-order entropy change) and REPO's decorrelating β on an exact softmax policy (paper.md §2-3)."""

import math

import pytest
import torch

from epr_lightning.objectives.theory import (
    centred_logprob_full,
    first_order_delta_entropy,
    predicted_entropy_change,
    repo_decorrelating_beta,
    sampled_entropy_covariance,
    softmax_entropy,
)

S, V, ETA = 4, 50, 1e-3


def _policy(seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(S, V, generator=g, dtype=torch.float64)
    adv = torch.randn(S, V, generator=g, dtype=torch.float64)
    return z, adv, g


def _measured_delta_entropy(z, adv, eta):
    """One exact gradient-ascent step of size eta on J = sum_s sum_a pi(a|s) A(s,a) w.r.t. the logits (autograd).

    Its logit update is dz_a = eta * pi(a) * (A(a) - E_pi A), the step Theorem 1's precise form assumes.
    """
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((torch.softmax(zz, dim=-1) * adv).sum(), zz)
    p = torch.softmax(z, dim=-1)
    torch.testing.assert_close(grad, p * (adv - (p * adv).sum(-1, keepdim=True)))
    return softmax_entropy(z + eta * grad) - softmax_entropy(z)


def test_softmax_entropy_and_centred_logprob():
    # uniform over 4: H = ln 4, L = -ln4 + ln4 = 0
    assert softmax_entropy(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert centred_logprob_full(torch.zeros(1, 4)).abs().max().item() < 1e-7
    # E_pi L = 0 always
    z, _, _ = _policy()
    p = torch.softmax(z, -1)
    assert (p * centred_logprob_full(z)).sum(-1).abs().max().item() < 1e-12


def test_first_order_prediction_matches_exact_step():
    z, adv, _ = _policy()
    measured = _measured_delta_entropy(z, adv, ETA)
    predicted = first_order_delta_entropy(z, adv, ETA)
    assert ((measured - predicted).abs() / predicted.abs()).max().item() < 0.01
    # with a pi-centred advantage it is paper.md's -eta * sum_a pi^2 A L
    p, ell = torch.softmax(z, -1), centred_logprob_full(z)
    a_c = adv - (p * adv).sum(-1, keepdim=True)
    torch.testing.assert_close(predicted, -ETA * (p * p * a_c * ell).sum(-1))
    # only the centred part of A matters: a constant shift per state changes neither step nor prediction
    torch.testing.assert_close(first_order_delta_entropy(z, adv + 3.0, ETA), predicted)


def test_repo_beta_star_cancels_first_order_change():
    z, adv, _ = _policy()
    measured = _measured_delta_entropy(z, adv, ETA)
    beta = repo_decorrelating_beta(z, adv)
    adv_repo = adv - beta[:, None] * centred_logprob_full(z)
    assert first_order_delta_entropy(z, adv_repo, ETA).abs().max().item() < 1e-15
    measured_repo = _measured_delta_entropy(z, adv_repo, ETA)
    assert (measured.abs() / measured_repo.abs()).min().item() >= 100.0
    # beta > beta* adds entropy in every state, beta < beta* removes it (first order: + eta*(b - b*) sum pi^2 L^2)
    ell = centred_logprob_full(z)
    assert (_measured_delta_entropy(z, adv - (beta[:, None] + 0.5) * ell, ETA) > 0).all()
    assert (_measured_delta_entropy(z, adv - (beta[:, None] - 0.5) * ell, ETA) < 0).all()


def test_repo_beta_uniform_policy_is_zero():
    assert repo_decorrelating_beta(torch.zeros(2, 5), torch.randn(2, 5)).abs().max().item() == 0.0


def test_sampled_estimator_hand_value():
    # pi = [0.5, 0.25], H = 1, A = [1, -1]: pi*A*L = 0.5*(1-ln2) + 0.25*(2ln2-1) = 0.25 in total, 0.125 per token
    logp = torch.tensor([[-math.log(2), -math.log(4), -9.0]])
    out = sampled_entropy_covariance(
        logp, torch.ones(1, 3), torch.tensor([[1.0, -1.0, 5.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    )
    assert out.item() == pytest.approx(0.125, abs=1e-6)
    pred = predicted_entropy_change(
        logp, torch.ones(1, 3), torch.tensor([[1.0, -1.0, 5.0]]), torch.tensor([[1.0, 1.0, 0.0]]), 0.1
    )
    assert pred.item() == pytest.approx(-0.0125, abs=1e-7)


def test_sampled_estimator_is_unbiased_for_exact_term():
    # tokens a ~ pi(.|s): E[pi(a) A L(a)] = sum_a pi^2 A L, so the token mean estimates the state-average
    z, adv, g = _policy(seed=1, scale=2.0)
    p = torch.softmax(z, -1)
    adv = adv - (p * adv).sum(-1, keepdim=True)
    exact = (-first_order_delta_entropy(z, adv, 1.0)).mean()
    n = 100_000
    a = torch.multinomial(p, n, replacement=True, generator=g)
    logp = torch.log_softmax(z, -1).gather(1, a)
    ent = softmax_entropy(z)[:, None].expand(S, n)
    est = sampled_entropy_covariance(logp, ent, adv.gather(1, a), torch.ones(S, n, dtype=torch.float64))
    assert est.item() == pytest.approx(exact.item(), rel=0.02)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="adv shape"):
        first_order_delta_entropy(torch.zeros(2, 3), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="adv shape"):
        repo_decorrelating_beta(torch.zeros(2, 3), torch.zeros(3, 3))
