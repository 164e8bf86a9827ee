import math

import pytest
import torch

from epr_lightning.objectives.advantages import (
    DrGRPOAdvantage,
    GRPOAdvantage,
    RLOOAdvantage,
    group_mean_std,
    group_sizes,
    grpo_advantages,
)

S2 = math.sqrt(0.5)  # unbiased std of {1, 0}: sqrt(((0.5)^2 + (0.5)^2) / (2 - 1))


def test_group_mean_std_hand_values():
    # groups 5: {2, 4, 6} -> mean 4, unbiased var (4 + 0 + 4)/2 = 4 -> std 2, biased var 8/3
    # groups 9: {1, 1}    -> mean 1, std 0
    r = torch.tensor([2.0, 4.0, 1.0, 6.0, 1.0])
    g = torch.tensor([5, 5, 9, 5, 9])
    mean, std = group_mean_std(r, g)
    torch.testing.assert_close(mean, torch.tensor([4.0, 4.0, 1.0, 4.0, 1.0]))
    torch.testing.assert_close(std, torch.tensor([2.0, 2.0, 0.0, 2.0, 0.0]))
    _, std_b = group_mean_std(r, g, unbiased=False)
    torch.testing.assert_close(std_b[0], torch.tensor(math.sqrt(8 / 3)))
    assert group_sizes(g).tolist() == [3, 3, 2, 3, 2]


def test_grpo_two_groups():
    # rewards [1,0 | 0,1]: each group mean 0.5, std sqrt(0.5) -> A = ±0.5/sqrt(0.5) = ±0.70711
    adv = GRPOAdvantage(eps=0.0)(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]) / S2)


def test_grpo_eps_and_degenerate_group():
    # eps enters the denominator: 0.5 / (sqrt(0.5) + 0.1); an all-equal group gives exactly 0
    adv = GRPOAdvantage(eps=0.1)(torch.tensor([1.0, 0.0, 3.0, 3.0]), torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(adv, torch.tensor([0.5 / (S2 + 0.1), -0.5 / (S2 + 0.1), 0.0, 0.0]))


def test_grpo_group_of_one_raises_naming_num_generations():
    with pytest.raises(ValueError, match="num_generations"):
        GRPOAdvantage()(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))


def test_drgrpo_mean_centred_and_allows_single():
    adv = DrGRPOAdvantage()(torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0]), torch.tensor([0, 0, 1, 1, 2]))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0]))
    assert torch.equal(
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), scale_by_std=False),
        torch.tensor([0.5, -0.5]),
    )


def test_rloo_hand_values():
    # [1,0,1]: A0 = 1 - (0+1)/2 = 0.5, A1 = 0 - (1+1)/2 = -1, A2 = 0.5
    adv = RLOOAdvantage()(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([3, 3, 3]))
    torch.testing.assert_close(adv, torch.tensor([0.5, -1.0, 0.5]))


def test_rloo_matches_definition_on_random_groups():
    g = torch.tensor([0, 1, 0, 1, 0, 2, 2, 1])
    r = torch.randn(8, generator=torch.Generator().manual_seed(1))
    adv = RLOOAdvantage()(r, g)
    for i in range(8):
        others = [r[j] for j in range(8) if j != i and g[j] == g[i]]
        assert adv[i].item() == pytest.approx((r[i] - sum(others) / len(others)).item(), abs=1e-6)


def test_rloo_group_of_one_raises():
    with pytest.raises(ValueError, match="num_generations"):
        RLOOAdvantage()(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="eps"):
        GRPOAdvantage(eps=-1.0)
    with pytest.raises(ValueError, match="finite"):
        GRPOAdvantage()(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="group_index shape"):
        RLOOAdvantage()(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="1-D"):
        DrGRPOAdvantage()(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))
