import math

import pytest
import torch

from epr_lightning.objectives.advantages import DrGRPOAdvantage
from epr_lightning.objectives.base import PolicyBatch
from epr_lightning.objectives.losses import REINFORCELoss
from epr_lightning.objectives.objective import Objective
from epr_lightning.objectives.repo import REPO, REPOD, REPOR, repo_d_beta, repo_r_advantages

LN2 = math.log(2.0)


def test_repo_r_paper_values():
    # A_R = A - zeta*|A|*logp: 2 - 0.1*2*(-3) = 2.6 ; -2 - 0.1*2*(-3) = -1.4 ; 0 stays 0
    t = REPOR(zeta=0.1)
    out = t(torch.tensor([[2.0, -2.0, 0.0]]), torch.full((1, 3), -3.0), None, torch.ones(1, 3))
    torch.testing.assert_close(out, torch.tensor([[2.6, -1.4, 0.0]]))
    # last_stats: |A'-A| = [0.6, 0.6, 0] -> 0.4 ; zeta*|logp| = 0.3 on every token
    assert t.last_stats["adv_change_abs"] == pytest.approx(0.4)
    assert t.last_stats["zeta_abs_logp"] == pytest.approx(0.3)
    assert t.last_stats["clamped_frac"] == 0.0


def test_repo_r_sign_clamp_and_floor():
    # A=-1, logp=-20, zeta=0.1: unclamped -1 + 0.1*20 = +1 -> clamped to 0
    a, lp = torch.tensor([[-1.0]]), torch.tensor([[-20.0]])
    assert REPOR(zeta=0.1)(a, lp, None, torch.ones(1, 1)).item() == 0.0
    assert repo_r_advantages(a, lp, 0.1, sign_preserving=False).item() == pytest.approx(1.0)
    # positive A with negative zeta: 1 - (-0.1)*1*(-20) = -1 -> clamped to 0
    t = REPOR(zeta=-0.1)
    assert t(torch.tensor([[1.0]]), lp, None, torch.ones(1, 1)).item() == 0.0
    assert t.last_stats["clamped_frac"] == 1.0
    # floor: logp=-50 is used as -20: 1 - 0.01*1*(-20) = 1.2 (not 1.5)
    assert REPOR(zeta=0.01)(
        torch.tensor([[1.0]]), torch.tensor([[-50.0]]), None, torch.ones(1, 1)
    ).item() == pytest.approx(1.2)


def test_repo_r_mask_zeroes_padding():
    out = REPOR(zeta=0.1)(
        torch.tensor([[2.0, 2.0]]), torch.full((1, 2), -3.0), None, torch.tensor([[1.0, 0.0]])
    )
    torch.testing.assert_close(out, torch.tensor([[2.6, 0.0]]))


def test_repo_general_form():
    # L = logp + H = [-0.5, -1.5]; A' = A - 0.2*L = [1 + 0.1, -1 + 0.3]
    t = REPO(beta=0.2)
    out = t(
        torch.tensor([[1.0, -1.0]]), torch.tensor([[-1.0, -2.0]]), torch.full((1, 2), 0.5), torch.ones(1, 2)
    )
    torch.testing.assert_close(out, torch.tensor([[1.1, -0.7]]))
    assert t.needs_entropy
    with pytest.raises(ValueError, match="entropy"):
        t(torch.ones(1, 2), torch.ones(1, 2), None, torch.ones(1, 2))


def test_repo_d_hand_beta_and_decorrelation():
    # pi = [0.5, 0.25], H = 1 -> L = [1 - ln2, 1 - 2 ln2] = [0.306853, -0.386294], A = [1, -1], S = [0.1, -0.05]
    # num = sum A*(pi*L - S) = (0.5*(1-ln2) - 0.1) - (0.25*(1-2ln2) + 0.05) = 0.25 - 0.15 = 0.1
    # den = sum pi*L^2 = 0.5*(1-ln2)^2 + 0.25*(1-2ln2)^2 = 0.0843852
    a = torch.tensor([[1.0, -1.0, 7.0]])
    lp = torch.tensor([[-LN2, -2 * LN2, -0.1]])
    h = torch.tensor([[1.0, 1.0, 3.0]])
    col = torch.tensor([[0.1, -0.05, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding and must not count
    den = 0.5 * (1 - LN2) ** 2 + 0.25 * (1 - 2 * LN2) ** 2
    assert den == pytest.approx(0.0843852, abs=1e-7)
    assert repo_d_beta(a, lp, h, mask, 1.0, col).item() == pytest.approx(0.1 / den, rel=1e-5)
    t = REPOD(zeta=1.0)
    out = t(a, lp, h, mask, collision=col)
    assert t.last_stats["beta"] == pytest.approx(1.185045, rel=1e-4)
    # zeta = 1 removes the estimated first-order term: sum A*(pi*L - S) - beta * sum pi*L^2 = 0
    pi, ell = lp.exp(), lp + h
    beta = t.last_stats["beta"]
    assert (a * (pi * ell - col) * mask).sum().item() - beta * (pi * ell * ell * mask).sum().item() == (
        pytest.approx(0.0, abs=1e-6)
    )
    torch.testing.assert_close(out, (a - beta * ell) * mask)
    assert out[0, 2].item() == 0.0
    # zeta = 0.5 halves beta: 0.5*0.1/den = 0.592521, and leaves half the first-order term, 0.1 - 0.05 = 0.05;
    # A' = A - beta*L = [1 - 0.592521*(1 - ln2), -1 - 0.592521*(1 - 2 ln2)] = [0.818183, -0.771112], padding 0
    half = REPOD(zeta=0.5)
    out_half = half(a, lp, h, mask, collision=col)
    assert half.last_stats["beta"] == pytest.approx(0.592521, rel=1e-5)
    beta_half = half.last_stats["beta"]
    assert (a * (pi * ell - col) * mask).sum().item() - beta_half * (pi * ell * ell * mask).sum().item() == (
        pytest.approx(0.05, abs=1e-6)
    )
    torch.testing.assert_close(out_half, torch.tensor([[0.818183, -0.771112, 0.0]]), rtol=0, atol=1e-5)
    # without S the transform refuses to guess
    with pytest.raises(ValueError, match="collision"):
        REPOD()(a, lp, h, mask)


def test_state_dict_round_trip_and_validation():
    t = REPOR(zeta=1e-3)
    t.zeta = -4e-4  # a controller mutates it
    fresh = REPOR()
    fresh.load_state_dict(t.state_dict())
    assert fresh.zeta == -4e-4 and fresh.state_dict() == {"zeta": -4e-4}
    assert REPO(beta=0.3).state_dict() == {"beta": 0.3}
    assert REPOD(zeta=2.0).state_dict() == {"zeta": 2.0}
    with pytest.raises(ValueError, match="logp_floor"):
        REPOR(logp_floor=0.0)
    with pytest.raises(ValueError, match="zeta"):
        REPOR(zeta=float("nan"))
    with pytest.raises(ValueError, match="beta"):
        REPO(beta=float("inf"))


def test_gradient_does_not_flow_through_repo_logp():
    # REINFORCE on A_R: d(sum -A_R*logp / n)/dlogp must be exactly -A_R/n (A_R treated as a constant);
    # were logp not detached, the extra term -d(A_R)/dlogp * logp = -(zeta*|A|)*logp/n would appear.
    obj = Objective(advantage=DrGRPOAdvantage(), transforms=[REPOR(zeta=0.1)], loss=REINFORCELoss())
    mask = torch.ones(2, 2)
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]], requires_grad=True)
    seq_adv = obj.sequence_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    adv = obj.token_advantages(seq_adv, mask, logp, None)
    assert not adv.requires_grad
    # A = [0.5, -0.5]; A_R = A - 0.1*0.5*logp = [[0.5+0.05, 0.5+0.1], [-0.5+0.15, -0.5+0.025]]
    expected = torch.tensor([[0.55, 0.6], [-0.35, -0.475]])
    torch.testing.assert_close(adv, expected)
    batch = PolicyBatch(
        logp=logp, old_logp=logp.detach(), sampler_logp=logp.detach(), advantages=adv, mask=mask
    )
    obj.compute_loss(batch).loss.backward()
    torch.testing.assert_close(logp.grad, -expected / 4)


# ------------------------------------------------------------------ what the transform does to the advantages
def test_shaping_stats_on_a_hand_made_batch():
    from epr_lightning.objectives.repo import shaping_stats

    a = torch.tensor([[-1.0, -1.0, -2.0, 0.5, 0.5, 0.0]])
    shaped = torch.tensor([[0.0, -0.5, 1.0, 0.5, 1.0, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    s = shaping_stats(a, shaped, mask)
    # negatives: one zeroed (0), one halved (-0.5), one flipped (+1 from -2): |A'|/|A| = 0, 0.5, 0.5
    assert s["neg_zeroed_frac"] == pytest.approx(1 / 3)
    assert s["neg_flipped_frac"] == pytest.approx(1 / 3)
    assert s["neg_ratio"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    # positives: 0.5 → 0.5 and 0.5 → 1.0; none zeroed or flipped; A = 0 tokens are in neither side
    assert s["pos_zeroed_frac"] == 0.0 and s["pos_flipped_frac"] == 0.0
    assert s["pos_ratio"] == pytest.approx(1.5)
    # masked tokens do not count; a sign without tokens has no keys
    s = shaping_stats(a, shaped, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 1.0]]))
    assert s == {"neg_zeroed_frac": 1.0, "neg_flipped_frac": 0.0, "neg_ratio": 0.0}


def test_repo_r_zeroes_wrong_answers_rare_tokens_at_large_zeta_and_centred_keeps_the_penalty():
    """The raw log-prob at ζ = 1 with the sign clamp removes the penalty of every wrong-answer token with
    π < e^-1; the centred L = log π + H keeps it on tokens more likely than average."""
    a = torch.full((1, 4), -1.0)
    logp = torch.log(torch.tensor([[0.9, 0.5, 0.3, 0.05]]))
    entropy = torch.full((1, 4), 1.0)
    mask = torch.ones(1, 4)
    raw = REPOR(zeta=1.0)
    out = raw(a, logp, None, mask)
    # A_R = -1 - 1·1·log π = -1 - log π: -0.895, -0.307, 0 (clamped from +0.20), 0 (clamped from +2.0)
    assert out[0, :2].tolist() == pytest.approx([-1 - math.log(0.9), -1 - math.log(0.5)], abs=1e-6)
    assert out[0, 2:].tolist() == [0.0, 0.0]
    assert raw.last_stats["shaping/neg_zeroed_frac"] == 0.5
    centred = REPOR(zeta=1.0, logprob="centred")
    out_c = centred(a, logp, entropy, mask)
    # L = log π + 1: A' = -1 - (log π + 1) = -2 - log π: -1.895, -1.307, -0.796, 0 (clamped from +0.996)
    expected = [-2 - math.log(0.9), -2 - math.log(0.5), -2 - math.log(0.3), 0.0]
    assert out_c[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert centred.last_stats["shaping/neg_zeroed_frac"] == 0.25
    with pytest.raises(ValueError, match="entropy"):
        centred(a, logp, None, mask)
