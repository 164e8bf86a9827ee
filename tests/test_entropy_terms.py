import math

import pytest
import torch

from epr_lightning.objectives.base import PolicyBatch
from epr_lightning.objectives.entropy_terms import EntropyBonus, KLPenalty, kl_estimate
from epr_lightning.objectives.objective import Objective


def _batch(logp, entropy=None, ref_logp=None, mask=None):
    logp = torch.tensor(logp).requires_grad_(True)
    return PolicyBatch(
        logp=logp,
        old_logp=logp.detach(),
        sampler_logp=logp.detach(),
        advantages=torch.zeros_like(logp),
        mask=torch.ones_like(logp) if mask is None else torch.tensor(mask),
        entropy=entropy,
        ref_logp=None if ref_logp is None else torch.tensor(ref_logp),
    )


def test_entropy_bonus_values_and_gradient_sign():
    # per-token -coef*H = -0.5*[1, 2, 4]; metric = masked mean over the first two = -0.75
    h = torch.tensor([[1.0, 2.0, 4.0]], requires_grad=True)
    term = EntropyBonus(coef=0.5)
    out = term(_batch([[-1.0, -1.0, -1.0]], entropy=h, mask=[[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(out.loss, torch.tensor([[-0.5, -1.0, -2.0]]))
    assert out.metrics["entropy_bonus"].item() == pytest.approx(-0.75)
    assert out.metrics["entropy_bonus_coef"].item() == 0.5
    out.loss.sum().backward()
    # dloss/dH = -coef < 0: a gradient-descent step increases entropy
    assert (h.grad < 0).all() and h.grad[0, 0].item() == -0.5
    assert term.needs_entropy_grad and Objective(terms=[term]).needs_entropy_grad


def test_entropy_bonus_coef_is_mutable_state_and_validated():
    term = EntropyBonus()
    term.coef = 2e-3  # the adaptive-bonus controller changes it
    fresh = EntropyBonus()
    fresh.load_state_dict(term.state_dict())
    assert fresh.coef == 2e-3
    with pytest.raises(ValueError, match="coef"):
        EntropyBonus(coef=-1.0)
    with pytest.raises(ValueError, match="entropy"):
        term(_batch([[-1.0]]))


def test_entropy_bonus_with_a_target_acts_only_at_or_below_it():
    # Skywork-OR1: coef·1{H ≤ H*}, H = the minibatch's masked token-mean entropy (here (1 + 2)/2 = 1.5)
    h = torch.tensor([[1.0, 2.0, 4.0]], requires_grad=True)
    batch = _batch([[-1.0, -1.0, -1.0]], entropy=h, mask=[[1.0, 1.0, 0.0]])
    below = EntropyBonus(coef=0.5, target=1.5)(batch)  # H = H*: acts
    torch.testing.assert_close(below.loss, torch.tensor([[-0.5, -1.0, -2.0]]))
    assert below.metrics["entropy_bonus_active"].item() == 1.0
    above = EntropyBonus(coef=0.5, target=1.4)(batch)  # H > H*: no bonus, no gradient, coef kept
    torch.testing.assert_close(above.loss, torch.zeros(1, 3))
    assert (
        above.metrics["entropy_bonus_active"].item() == 0.0
        and above.metrics["entropy_bonus_coef"].item() == 0.5
    )
    above.loss.sum().backward()
    assert h.grad is not None and (h.grad == 0).all()
    term = EntropyBonus(coef=0.5, target=1.4)
    fresh = EntropyBonus()
    fresh.load_state_dict(term.state_dict())  # the gate's target is checkpointed with the coefficient
    assert (fresh.coef, fresh.target) == (0.5, 1.4)


def test_kl_estimators_hand_values():
    # d = ref - logp = [-0.5, 1]: k1 = -d, k2 = d^2/2, k3 = e^d - d - 1
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(kl_estimate(lp, ref, "k1"), torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(kl_estimate(lp, ref, "k2"), torch.tensor([0.125, 0.5]))
    torch.testing.assert_close(kl_estimate(lp, ref, "k3"), torch.tensor([math.exp(-0.5) - 0.5, math.e - 2.0]))
    with pytest.raises(ValueError, match="estimator"):
        kl_estimate(lp, ref, "k4")  # type: ignore[arg-type]


def test_kl_penalty_term():
    # k3 = [0.106531, 0.718282], mean 0.412406; loss = 0.1*k3
    term = KLPenalty(coef=0.1)
    b = _batch([[-1.0, -2.0]], ref_logp=[[-1.5, -1.0]])
    out = term(b)
    torch.testing.assert_close(out.loss, 0.1 * torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0]]))
    assert out.metrics["kl_ref"].item() == pytest.approx(0.412406, abs=1e-6)
    out.loss.sum().backward()
    # d k3 / d logp = 1 - e^d: [1 - e^-0.5, 1 - e] scaled by 0.1; pulls logp toward ref
    torch.testing.assert_close(b.logp.grad, 0.1 * torch.tensor([[1 - math.exp(-0.5), 1 - math.e]]))
    assert term.needs_reference and Objective(terms=[term]).needs_reference
    # identical policies: zero penalty
    assert KLPenalty()(_batch([[-1.0]], ref_logp=[[-1.0]])).loss.item() == 0.0


def test_kl_penalty_validation():
    with pytest.raises(ValueError, match="estimator"):
        KLPenalty(estimator="k9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coef"):
        KLPenalty(coef=float("inf"))
    with pytest.raises(ValueError, match="ref_logp"):
        KLPenalty()(_batch([[-1.0]]))
