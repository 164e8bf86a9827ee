"""Theorem 1 (first-order entropy change) and REPO's decorrelating β on an exact softmax policy (docs/methods.md §1 and §5.1)."""

import math

import pytest
import torch

from epr_lightning.objectives.repo import REPOD
from epr_lightning.objectives.theory import (
    centred_logprob_full,
    exact_collision,
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
    # with a pi-centred advantage it is the reported form -eta * sum_a pi^2 A L
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
    # pi = [0.5, 0.25], H = 1, A = [1, -1], S = [0.1, -0.05]:
    # A*(pi*L - S) = (0.5*(1-ln2) - 0.1) - (0.25*(1-2ln2) + 0.05) = 0.25 - 0.15 = 0.1 in total, 0.05 per token
    logp = torch.tensor([[-math.log(2), -math.log(4), -9.0]])
    ent, adv, mask = torch.ones(1, 3), torch.tensor([[1.0, -1.0, 5.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    col = torch.tensor([[0.1, -0.05, 7.0]])
    assert sampled_entropy_covariance(logp, ent, adv, mask, col).item() == pytest.approx(0.05, abs=1e-6)
    assert predicted_entropy_change(logp, ent, adv, mask, col, 0.1).item() == pytest.approx(-0.005, abs=1e-7)


def _sampled_step_delta_entropy(z, tokens, adv, eta):
    """Exact ΔH of one gradient step of size eta on mean_t adv_t·log π(tokens_t|s) per state (float64, autograd)."""
    zz = z.clone().requires_grad_(True)
    logp = torch.log_softmax(zz, dim=-1).gather(1, tokens)
    (grad,) = torch.autograd.grad((adv * logp).mean(dim=1).sum(), zz)
    return softmax_entropy(z + eta * grad) - softmax_entropy(z)


def test_one_rewarded_token_the_issue_example_sign():
    # pi = (0.6, 0.3, 100 x 0.001); the 0.3 token sampled with A = +1, eta = 1e-4
    p = torch.tensor([0.6, 0.3] + [0.001] * 100, dtype=torch.float64)
    z = p.log()[None]
    exact = _sampled_step_delta_entropy(
        z, torch.tensor([[1]]), torch.tensor([[1.0]], dtype=torch.float64), 1e-4
    )
    logp, ent = p.log()[1].view(1, 1), softmax_entropy(z).view(1, 1)
    one, col = torch.ones(1, 1, dtype=torch.float64), exact_collision(z).view(1, 1)
    predicted = predicted_entropy_change(logp, ent, one, one, col, 1e-4)
    assert exact.item() == pytest.approx(2.72e-5, rel=0.01)
    assert predicted.item() == pytest.approx(exact.item(), rel=0.01)
    # the estimate without S, -eta*pi*A*L, predicts a fall: the bug the S term fixes
    uncentred = -1e-4 * (logp.exp() * (logp + ent)).item()
    assert uncentred == pytest.approx(-4.6e-6, rel=0.02) and uncentred * exact.item() < 0


def test_sampled_estimator_is_unbiased_for_non_centred_advantages():
    # tokens a ~ pi(.|s) with advantages that are *not* centred per state (as sequence advantages copied onto
    # tokens never are): E[A·(pi·L - S)] = sum_a pi^2 (A - E_pi A) L, the theorem's term
    z, adv, g = _policy(seed=1, scale=2.0)
    adv = adv + 3.0  # every state's advantages shifted: E_pi A = 3 + ...
    p = torch.softmax(z, -1)
    exact = (-first_order_delta_entropy(z, adv, 1.0)).mean()
    n = 100_000
    a = torch.multinomial(p, n, replacement=True, generator=g)
    logp = torch.log_softmax(z, -1).gather(1, a)
    ent = softmax_entropy(z)[:, None].expand(S, n)
    col = exact_collision(z)[:, None].expand(S, n)
    ones = torch.ones(S, n, dtype=torch.float64)
    est = sampled_entropy_covariance(logp, ent, adv.gather(1, a), ones, col)
    assert est.item() == pytest.approx(exact.item(), rel=0.03)
    # and the exact ΔH of the sampled step agrees with −eta·(per-state sum of that token mean)
    measured = _sampled_step_delta_entropy(z, a, adv.gather(1, a), 1e-3).sum()
    assert measured.item() == pytest.approx(-1e-3 * S * est.item(), rel=0.01)


def test_predicted_sign_agrees_with_exact_sampled_steps():
    # 200 random states × 8 sampled tokens with non-centred advantages: the prediction's sign matches the exact
    # step's in (nearly) every state; the uncentred estimate gets a large share wrong
    g = torch.Generator().manual_seed(5)
    agree = wrong_uncentred = 0
    for _ in range(200):
        z = 2.0 * torch.randn(1, 30, generator=g, dtype=torch.float64)
        tokens = torch.multinomial(torch.softmax(z, -1), 8, replacement=True, generator=g)
        adv = torch.rand(1, 8, generator=g, dtype=torch.float64) + 0.2  # all positive: a rewarded group
        measured = _sampled_step_delta_entropy(z, tokens, adv, 1e-4).item()
        logp = torch.log_softmax(z, -1).gather(1, tokens)
        ent, col = softmax_entropy(z).expand(1, 8), exact_collision(z).expand(1, 8)
        pred = predicted_entropy_change(
            logp, ent, adv, torch.ones(1, 8, dtype=torch.float64), col, 1e-4
        ).item()
        agree += (pred > 0) == (measured > 0)
        wrong_uncentred += ((-(logp.exp() * adv * (logp + ent)).mean().item()) > 0) != (measured > 0)
    assert agree >= 198
    assert wrong_uncentred >= 20


def test_repo_d_beta_cancels_the_sampled_first_order_change():
    # the REPO-D transform (ζ = 1) on sampled tokens with non-centred advantages removes the first-order entropy
    # change of the sampled step up to sampling noise; β from the uncentred π·A·L (no S) does not
    z, adv, g = _policy(seed=3, scale=2.0)
    adv = adv.abs() + 0.5  # rewarded everywhere: far from centred
    n = 20_000
    a = torch.multinomial(torch.softmax(z, -1), n, replacement=True, generator=g)
    logp = torch.log_softmax(z, -1).gather(1, a)
    ent = softmax_entropy(z)[:, None].expand(S, n)
    col = exact_collision(z)[:, None].expand(S, n)
    ones = torch.ones(S, n, dtype=torch.float64)
    tok_adv = adv.gather(1, a)
    plain = _sampled_step_delta_entropy(z, a, tok_adv, 1e-3).sum()
    repo = REPOD(zeta=1.0)(tok_adv, logp, ent, ones, collision=col)
    fixed = _sampled_step_delta_entropy(z, a, repo, 1e-3).sum()
    assert fixed.abs().item() < 0.05 * plain.abs().item()
    ell = logp + ent
    beta_old = (logp.exp() * tok_adv * ell).sum() / (logp.exp() * ell * ell).sum()
    stale = _sampled_step_delta_entropy(z, a, tok_adv - beta_old * ell, 1e-3).sum()
    assert stale.abs().item() > 0.3 * plain.abs().item()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="adv shape"):
        first_order_delta_entropy(torch.zeros(2, 3), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="adv shape"):
        repo_decorrelating_beta(torch.zeros(2, 3), torch.zeros(3, 3))
