import math
import warnings

import pytest
import torch

from epr_lightning.objectives.advantages import DrGRPOAdvantage
from epr_lightning.objectives.aggregation import Normaliser, aggregate
from epr_lightning.objectives.base import PolicyBatch
from epr_lightning.objectives.entropy_terms import EntropyBonus
from epr_lightning.objectives.losses import (
    ClipCovLoss,
    GSPOLoss,
    KLCovLoss,
    PPOClipLoss,
    REINFORCELoss,
    token_covariance,
)
from epr_lightning.objectives.objective import Objective
from epr_lightning.objectives.repo import REPOD, REPOR

LN2 = math.log(2.0)


def _batch(logp, adv, old=None, mask=None, sampler=None, entropy=None):
    logp = torch.as_tensor(logp, dtype=torch.float32).clone().requires_grad_(True)
    old = torch.zeros_like(logp) if old is None else torch.as_tensor(old, dtype=torch.float32)
    return PolicyBatch(
        logp=logp,
        old_logp=old,
        sampler_logp=old if sampler is None else torch.as_tensor(sampler, dtype=torch.float32),
        advantages=torch.as_tensor(adv, dtype=torch.float32),
        mask=torch.ones_like(logp) if mask is None else torch.as_tensor(mask, dtype=torch.float32),
        entropy=entropy,
    )


# ratio table (eps 0.2/0.2), old_logp = 0 so r = exp(logp):
#   r=1.0 A=+1: -min(1, 1)        = -1   grad -r*A = -1
#   r=1.5 A=+1: -min(1.5, 1.2)    = -1.2 clipped upper, grad 0
#   r=0.5 A=+1: -min(0.5, 0.8)    = -0.5 grad -0.5
#   r=1.5 A=-1: -min(-1.5, -1.2)  = 1.5  grad 1.5
#   r=0.5 A=-1: -min(-0.5, -0.8)  = 0.8  clipped lower, grad 0
R = [1.0, 1.5, 0.5, 1.5, 0.5]
A = [1.0, 1.0, 1.0, -1.0, -1.0]


def test_ppo_clip_table():
    b = _batch([[math.log(r) for r in R]], [A])
    out = PPOClipLoss()(b)
    torch.testing.assert_close(out.loss, torch.tensor([[-1.0, -1.2, -0.5, 1.5, 0.8]]))
    assert out.token_stats["clip_upper"].tolist() == [[0, 1, 0, 0, 0]]
    assert out.token_stats["clip_lower"].tolist() == [[0, 0, 0, 0, 1]]
    out.loss.sum().backward()
    torch.testing.assert_close(b.logp.grad, torch.tensor([[-1.0, 0.0, -0.5, 1.5, 0.0]]))
    m = out.metrics
    assert m["clipfrac_upper"].item() == pytest.approx(0.2)
    assert m["clipfrac_lower"].item() == pytest.approx(0.2)
    assert m["clipfrac"].item() == pytest.approx(0.4)
    assert m["ratio_mean"].item() == pytest.approx(1.0)
    assert (m["ratio_max"].item(), m["ratio_min"].item()) == pytest.approx((1.5, 0.5))
    # k3 = r - 1 - ln r: 0, 0.094535 (x2), 0.193147 (x2) -> 0.575364 / 5
    assert m["approx_kl"].item() == pytest.approx(0.115073, abs=1e-5)


def test_ppo_asymmetric_clip_and_mask():
    # eps_high 0.28: r=1.25 with A>0 is not clipped; the masked token (r=3) is ignored by metrics
    b = _batch([[math.log(1.25), math.log(3.0)]], [[1.0, 1.0]], mask=[[1.0, 0.0]])
    out = PPOClipLoss(eps_low=0.2, eps_high=0.28)(b)
    assert out.loss[0, 0].item() == pytest.approx(-1.25)
    assert out.metrics["clipfrac"].item() == 0.0
    assert out.metrics["ratio_max"].item() == pytest.approx(1.25)


def test_ppo_on_policy_ratio_is_exactly_one():
    lp = torch.tensor([[-0.3, -7.1, -12.9]])
    out = PPOClipLoss()(_batch(lp, [[1.0, -1.0, 2.0]], old=lp))
    assert out.metrics["ratio_max"].item() == 1.0 and out.metrics["ratio_min"].item() == 1.0
    assert out.metrics["approx_kl"].item() == 0.0


def test_ppo_tis_weights():
    # sampler_logp = [0, -ln2, 0, 0, -2ln2] -> raw w = exp(old - sampler) = [1, 2, 1, 1, 4], cap 2 -> [1,2,1,1,2]
    s = [[0.0, -LN2, 0.0, 0.0, -2 * LN2]]
    b = _batch([[math.log(r) for r in R]], [A], sampler=s)
    out = PPOClipLoss(tis_cap=2.0)(b)
    torch.testing.assert_close(out.loss, torch.tensor([[-1.0, -2.4, -0.5, 1.5, 1.6]]))
    assert out.metrics["tis_weight_mean"].item() == pytest.approx(1.4)
    assert out.metrics["tis_capped_frac"].item() == pytest.approx(0.2)


def test_ppo_state_and_validation():
    loss = PPOClipLoss(eps_low=0.2, eps_high=0.28)
    loss.eps_high = 0.35  # the ADAPO controller adapts it
    other = PPOClipLoss()
    other.load_state_dict(loss.state_dict())
    assert other.state_dict() == {"eps_low": 0.2, "eps_high": 0.35}
    with pytest.raises(ValueError, match="eps_low must be >= 0"):
        PPOClipLoss(eps_low=-0.1)
    with pytest.raises(ValueError, match="eps_high"):
        PPOClipLoss(eps_high=float("nan"))
    with pytest.raises(ValueError, match="tis_cap"):
        PPOClipLoss(tis_cap=0.0)
    with pytest.raises(ValueError, match="eps_low must be >= 0 and <= 1"):
        PPOClipLoss(eps_low=1.5)
    for bad in (1.0, 0.5, float("inf")):
        with pytest.raises(ValueError, match="dual_clip"):
            PPOClipLoss(dual_clip=bad)


def test_ppo_dual_clip_caps_negative_advantage_tokens():
    # Cui et al.'s Clip-Cov recipe: eps 1/1 (no lower clip, upper at r = 2) and dual-clip c = 3 here.
    #   r=5.0 A=-1: PPO -min(-5, -2) = 5, dual cap -c*A = 3 -> 3, grad 0 (the cap is a constant)
    #   r=2.5 A=-1: 2.5 < 3 -> 2.5, grad r*(-A) = 2.5 (unclipped branch: d/dlogp of r*1)
    #   r=5.0 A=+1: -min(5, 2) = -2 (upper clip, grad 0); dual clip never touches A >= 0
    #   r=0.1 A=-1: eps_low = 1 -> clip(r, 0, 2) = r: -min(-0.1, -0.1) = 0.1, grad 0.1
    ratios = [5.0, 2.5, 5.0, 0.1]
    adv = [-1.0, -1.0, 1.0, -1.0]
    batch = _batch([[math.log(r) for r in ratios]], [adv])
    out = PPOClipLoss(eps_low=1.0, eps_high=1.0, dual_clip=3.0)(batch)
    torch.testing.assert_close(out.loss, torch.tensor([[3.0, 2.5, -2.0, 0.1]]))
    out.loss.sum().backward()
    torch.testing.assert_close(batch.logp.grad, torch.tensor([[0.0, 2.5, 0.0, 0.1]]))
    assert out.metrics["clipfrac_dual"].item() == pytest.approx(0.25)
    assert out.metrics["clipfrac_lower"].item() == 0.0 and out.metrics["clipfrac_upper"].item() == 0.25
    plain = PPOClipLoss(eps_low=1.0, eps_high=1.0)(_batch([[math.log(r) for r in ratios]], [adv]))
    assert plain.loss[0, 0].item() == pytest.approx(5.0) and "clipfrac_dual" not in plain.metrics


def test_gspo_sequence_ratio():
    # seq0: logp - old = [0.1, 0.3] -> s0 = exp(0.2) = 1.221403 ; seq1: [-0.2, (masked 5.0)] -> s1 = exp(-0.2)
    logp = [[0.1, 0.3], [-0.2, 5.0]]
    mask = [[1.0, 1.0], [1.0, 0.0]]
    adv = [[1.0, 1.0], [-1.0, -1.0]]
    s0, s1 = math.exp(0.2), math.exp(-0.2)
    # wide clip: loss = -s_i*A_i per token, d/dlogp_t = -A_i*s_i (the sequence ratio, not exp(0.1)/exp(0.3))
    b = _batch(logp, adv, mask=mask)
    out = GSPOLoss(eps_low=0.5, eps_high=0.5)(b)
    torch.testing.assert_close(out.loss * b.mask, torch.tensor([[-s0, -s0], [s1, 0.0]]))
    (out.loss * b.mask).sum().backward()
    torch.testing.assert_close(b.logp.grad, torch.tensor([[-s0, -s0], [s1, 0.0]]))
    assert out.metrics["seq_ratio_mean"].item() == pytest.approx((s0 + s1) / 2)
    # default GSPO clip (3e-4 / 4e-4): seq0 clipped at 1.0004 (upper), seq1 at 0.9997 (lower)
    b = _batch(logp, adv, mask=mask)
    out = GSPOLoss()(b)
    torch.testing.assert_close(out.loss * b.mask, torch.tensor([[-1.0004, -1.0004], [0.9997, 0.0]]))
    assert out.token_stats["clip_upper"].tolist() == [[1, 1], [0, 0]]
    assert out.token_stats["clip_lower"].tolist() == [[0, 0], [1, 0]]
    (out.loss * b.mask).sum().backward()
    assert b.logp.grad.abs().max().item() == 0.0


def test_reinforce():
    b = _batch([[-0.5, -1.0]], [[2.0, -1.0]])
    out = REINFORCELoss()(b)
    torch.testing.assert_close(out.loss, torch.tensor([[1.0, -1.0]]))  # -A*logp
    out.loss.sum().backward()
    torch.testing.assert_close(b.logp.grad, torch.tensor([[-2.0, 1.0]]))
    assert REINFORCELoss.on_policy_only and Objective(loss=REINFORCELoss()).on_policy_only


# covariance example: A = [2,2,-2,-2 | 1,-1,0,0] (mean 0), logp = [0,-1,-4,-3 | -2,-2,-2,-2] (mean -2)
# centred logp = [2,1,-2,-1 | 0,0,0,0] -> cov = [4,2,4,2 | 0,0,0,0]
COV_ADV = [[2.0, 2.0, -2.0, -2.0], [1.0, -1.0, 0.0, 0.0]]
COV_LOGP = [[0.0, -1.0, -4.0, -3.0], [-2.0, -2.0, -2.0, -2.0]]


def test_token_covariance():
    cov = token_covariance(torch.tensor(COV_ADV), torch.tensor(COV_LOGP), torch.ones(2, 4))
    torch.testing.assert_close(cov, torch.tensor([[4.0, 2.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0]]))


def test_clip_cov_zeroes_exactly_the_selected_tokens():
    # REINFORCE base: per-token -A*logp = [0,2,-8,-6 | 2,-2,0,0]
    base_loss = torch.tensor([[0.0, 2.0, -8.0, -6.0], [2.0, -2.0, 0.0, 0.0]])
    # window [3,5] holds tokens (0,0) and (0,2); clip_ratio 0.25 -> k = int(0.25*8) = 2: both, deterministically
    b = _batch(COV_LOGP, COV_ADV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ClipCovLoss(REINFORCELoss(), clip_ratio=0.25, cov_low=3.0, cov_high=5.0)(b)
    chosen = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(out.token_stats["cov_clipped"], chosen)
    torch.testing.assert_close(out.loss, base_loss * (1 - chosen))
    out.loss.sum().backward()
    torch.testing.assert_close(b.logp.grad, -torch.tensor(COV_ADV) * (1 - chosen))
    assert out.metrics["cov/clipped_frac"].item() == pytest.approx(0.25)
    # window [1,5] holds 4 candidates; 2 are drawn at random, reproducibly for a given seed
    picks = []
    for seed in (0, 0, 1):
        out = ClipCovLoss(REINFORCELoss(), clip_ratio=0.25, seed=seed)(_batch(COV_LOGP, COV_ADV))
        c = out.token_stats["cov_clipped"]
        assert c.sum().item() == 2 and c[1].sum().item() == 0
        torch.testing.assert_close(out.loss, base_loss * (1 - c))
        picks.append(c)
    assert torch.equal(picks[0], picks[1])
    assert out.metrics["cov/window_frac"].item() == pytest.approx(0.5)


def test_clip_cov_skips_tokens_the_base_already_clips():
    # token (0,0): A=2, ratio e^0=1 vs old -1 -> r = e = 2.72 > 1.2: clipped upper by PPO, so not selectable
    old = [[-1.0, -1.0, -4.0, -3.0], [-2.0, -2.0, -2.0, -2.0]]
    out = ClipCovLoss(PPOClipLoss(), clip_ratio=0.25, cov_low=3.0, cov_high=5.0)(
        _batch(COV_LOGP, COV_ADV, old=old)
    )
    assert out.token_stats["clip_upper"][0, 0].item() == 1
    assert out.token_stats["cov_clipped"].tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]


def test_kl_cov_penalises_top_k():
    # k_ratio 0.25 -> k = 2: top cov tokens (0,0) and (0,2) (cov 4); old = logp - 0.1 -> |dlogp| = 0.1
    old = [[x - 0.1 for x in row] for row in COV_LOGP]
    base = PPOClipLoss(eps_low=0.9, eps_high=10.0)
    b = _batch(COV_LOGP, COV_ADV, old=old)
    out = KLCovLoss(base, k_ratio=0.25, kl_coef=2.0)(b)
    plain = base(_batch(COV_LOGP, COV_ADV, old=old)).loss
    chosen = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(out.token_stats["cov_kl"], chosen)
    torch.testing.assert_close(out.loss, plain + 2.0 * 0.1 * chosen)
    assert out.metrics["cov/kl_frac"].item() == pytest.approx(0.25)
    assert KLCovLoss(base).state_dict() == {"kl_coef": 1.0}


def test_kl_cov_is_a_noop_on_policy():
    base = PPOClipLoss()
    b = _batch(COV_LOGP, COV_ADV, old=COV_LOGP)
    out = KLCovLoss(base, k_ratio=0.25)(b)
    out.loss.sum().backward()
    b2 = _batch(COV_LOGP, COV_ADV, old=COV_LOGP)
    base(b2).loss.sum().backward()
    torch.testing.assert_close(b.logp.grad, b2.logp.grad)
    with pytest.warns(UserWarning, match="no-op"):
        KLCovLoss(REINFORCELoss())


def test_cov_validation():
    with pytest.raises(ValueError, match="clip_ratio"):
        ClipCovLoss(PPOClipLoss(), clip_ratio=1.5)
    with pytest.raises(ValueError, match="cov_low"):
        ClipCovLoss(PPOClipLoss(), cov_low=5.0, cov_high=1.0)
    with pytest.raises(ValueError, match="k_ratio"):
        KLCovLoss(PPOClipLoss(), k_ratio=-0.1)
    with pytest.raises(ValueError, match="base"):
        KLCovLoss("ppo")  # type: ignore[arg-type]


def test_aggregation_modes():
    # per_token [[1,2,3],[4,x,x]], mask [[1,1,1],[1,0,0]]
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(10 / 4)  # (1+2+3+4)/4
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)  # (6/3 + 4/1)/2
    assert aggregate(loss, mask, "seq_mean_token_sum_norm").item() == pytest.approx(10 / 6)  # (6/3 + 4/3)/2
    assert aggregate(loss, mask, "seq_mean_token_sum_norm", norm_length=2).item() == pytest.approx(2.5)
    # a normaliser holding the *global* counts (here: this rank has 4 of 10 tokens and 2 of 5 sequences on a
    # 2-rank run) returns world_size · local sum / global count, so the ranks' average is the global mean
    glob = Normaliser(tokens=10.0, sequences=5.0, world_size=2)
    assert aggregate(loss, mask, "token_mean", normaliser=glob).item() == pytest.approx(2 * 10 / 10)
    assert aggregate(loss, mask, "seq_mean_token_mean", normaliser=glob).item() == pytest.approx(2 * 6 / 5)
    assert aggregate(loss, mask, "seq_mean_token_sum_norm", norm_length=2, normaliser=glob).item() == (
        pytest.approx(2 * 5 / 5)
    )
    with pytest.raises(ValueError, match="aggregation mode"):
        aggregate(loss, mask, "sum")  # type: ignore[arg-type]


def test_objective_compute_loss_end_to_end():
    # Dr.GRPO of rewards [1,0] -> A = [0.5, -0.5]; mask [[1,1],[1,0]]; logp = [[ln.5, ln.25],[ln.5, 0]]
    # REPO-R (zeta 0.1): A_R = A - 0.05*logp -> [0.5+0.05ln2, 0.5+0.1ln2 | -0.5+0.05ln2, 0(masked)]
    obj = Objective(
        advantage=DrGRPOAdvantage(),
        transforms=[REPOR(zeta=0.1)],
        loss=PPOClipLoss(),
        terms=[EntropyBonus(coef=0.1)],
        aggregation="token_mean",
    )
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    lp = torch.tensor([[-LN2, -2 * LN2], [-LN2, 0.0]])
    adv = obj.token_advantages(
        obj.sequence_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0])), mask, lp, None
    )
    a_r = [0.5 + 0.05 * LN2, 0.5 + 0.1 * LN2, -0.5 + 0.05 * LN2]
    torch.testing.assert_close(adv, torch.tensor([[a_r[0], a_r[1]], [a_r[2], 0.0]]))
    entropy = torch.tensor([[1.0, 2.0], [3.0, 9.0]], requires_grad=True)
    b = _batch(lp, adv, old=lp, mask=mask, entropy=entropy)
    out = obj.compute_loss(b)
    # on-policy r = 1: policy part -sum(A_R)/3; bonus -0.1*(1+2+3)/3 = -0.2
    assert out.loss.item() == pytest.approx(-sum(a_r) / 3 - 0.2, abs=1e-6)
    assert set(out.token_stats) >= {"clip_upper", "clip_lower"}
    assert out.metrics["policy/entropy_bonus"].item() == pytest.approx(-0.2)
    assert out.metrics["loss/total"].item() == pytest.approx(out.loss.item())
    out.loss.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.1 / 3, -0.1 / 3], [-0.1 / 3, 0.0]]))
    assert obj.needs_entropy_grad and not obj.needs_reference


def test_objective_state_dict_round_trip_and_find():
    obj = Objective(
        transforms=[REPOR()], loss=ClipCovLoss(PPOClipLoss(eps_high=0.28)), terms=[EntropyBonus()]
    )
    (ppo,) = obj.find(PPOClipLoss)  # controllers find the surrogate inside the Clip-Cov wrapper
    ppo.eps_high = 0.4
    obj.find(REPOR)[0].zeta = -2e-4
    obj.terms[0].coef = 5e-3
    state = obj.state_dict()
    assert state["loss.base"] == {"eps_low": 0.2, "eps_high": 0.4}
    fresh = Objective(
        transforms=[REPOR()], loss=ClipCovLoss(PPOClipLoss(eps_high=0.28)), terms=[EntropyBonus()]
    )
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert fresh.find(PPOClipLoss)[0].eps_high == 0.4 and fresh.transforms[0].zeta == -2e-4
    with pytest.raises(KeyError, match="terms.3"):
        fresh.load_state_dict({"terms.3": {"coef": 1.0}})


def test_dr_grpo_normalises_by_the_generation_budget_not_the_longest_completion():
    # two completions of 3 and 1 tokens, budget 8: (sum of row 0)/8 and (row 1)/8, then the mean over rows.
    # The longest completion (3) would give (6/3 + 4/3)/2 instead.
    objective = Objective(
        advantage=DrGRPOAdvantage(), loss=REINFORCELoss(), aggregation="seq_mean_token_sum_norm"
    )
    objective.set_generation_budget(8)
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # REINFORCE's per-token loss −A·log π equals ``per_token`` with log π = 1 and A = −per_token
    batch = _batch(torch.ones(2, 3), -per_token, mask=mask)
    out = objective.compute_loss(batch)
    assert out.loss.item() == pytest.approx((6 / 8 + 4 / 8) / 2)
    pinned = Objective(aggregation="seq_mean_token_sum_norm", norm_length=4)
    pinned.set_generation_budget(8)  # an explicit norm_length wins over the budget
    assert pinned.norm_length == 4
    with pytest.raises(ValueError, match="norm_length"):
        Objective(norm_length=0)


def test_clip_decision_diff_counts_flips_between_bf16_and_fp32_ratios():
    # fp32 ratios [1.25, 1.3, 0.85, 0.7]; the bf16-rounded log-probs move the first over 1+ε_high = 1.28 and the
    # third under 1-ε_low = 0.8 (A = [+1, +1, -1, -1]): 2 of 4 decisions flip, the other two agree
    r32 = torch.tensor([[1.25, 1.3, 0.85, 0.7]])
    r16 = torch.tensor([[1.29, 1.31, 0.79, 0.69]])
    batch = _batch(r16.log(), [[1.0, 1.0, -1.0, -1.0]])
    batch.logp_fp32, batch.old_logp_fp32 = r32.log(), torch.zeros(1, 4)
    out = PPOClipLoss(eps_low=0.2, eps_high=0.28)(batch)
    assert out.metrics["clip_decision_diff"].item() == pytest.approx(0.5)
    assert "clip_decision_diff" not in PPOClipLoss()(_batch(r16.log(), [[1.0, 1.0, -1.0, -1.0]])).metrics


def test_objective_named_coefficients_one_interface():
    obj = Objective(
        transforms=[REPOR(zeta=1e-3)], loss=ClipCovLoss(PPOClipLoss(eps_high=0.28)), terms=[EntropyBonus()]
    )
    coefs = obj.coefficients()
    assert {k: coefs[k] for k in ("zeta", "eps_low", "eps_high")} == {
        "zeta": 1e-3,
        "eps_low": 0.2,
        "eps_high": 0.28,
    }
    assert set(coefs) == {"zeta", "eps_low", "eps_high", "entropy_coef", "entropy_target"}
    obj.set_coefficient("eps_high", 0.35)  # the surrogate inside the Clip-Cov wrapper reads it
    assert obj.loss.base.eps_high == 0.35 and obj.coefficient("eps_high") == 0.35
    assert obj.state_dict()["loss.base"] == {"eps_low": 0.2, "eps_high": 0.35}  # saved by the objective
    with pytest.raises(KeyError, match="no coefficient 'beta'"):
        obj.coefficient("beta")
    two = Objective(transforms=[REPOR(), REPOD()])
    assert two.coefficient_pieces("zeta") == ["REPOR", "REPOD"]
    with pytest.raises(KeyError, match="several"):
        two.set_coefficient("zeta", 0.1)
