"""Hand-computed checks of the group diversity / success metrics in epr_lightning.metrics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torchmetrics.functional.text import bleu_score

from epr_lightning.metrics import (
    DistinctCorrectAnswers,
    DistinctN,
    PassAtK,
    SelfBLEU,
    UniqueCompletionRatio,
    distinct_correct,
    distinct_n,
    group_by,
    pass_at_k,
    self_bleu,
    unique_ratio,
)


def test_distinct_2_of_known_group():
    # "a b c" -> (a,b),(b,c); "a b d" -> (a,b),(b,d): 4 bigrams, distinct {ab, bc, bd} = 3 -> 3/4
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(0.75)
    # unigrams: a b c a b d -> 6 tokens, distinct {a,b,c,d} = 4 -> 4/6
    assert distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    # no bigram at all -> group skipped
    assert distinct_n(["a", "b"], 2) is None


def test_distinct_n_metric_averages_over_groups_not_pooled():
    # group 0 = ["a b c", "a b d"] -> 3/4 ; group 1 = ["x y", "x y"] -> bigrams (x,y),(x,y): 1/2
    # group 2 = ["z"] -> no bigram, skipped. Mean over groups = (0.75 + 0.5) / 2 = 0.625
    # (pooled over all 6 bigrams would be 4/6, so this distinguishes per-group averaging.)
    m = DistinctN(2)
    m.update(["a b c", "x y", "a b d", "x y", "z"], torch.tensor([0, 1, 0, 1, 2]))
    assert m.compute().item() == pytest.approx(0.625)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    "n,c,k", [(n, c, k) for n in (1, 4, 7) for c in range(n + 1) for k in range(1, n + 1)]
)
def test_pass_at_k_matches_combinatorial_count(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values_and_errors():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # large n stays finite: n=200, c=1, k=100 -> 1 - C(199,100)/C(200,100) = 1 - 100/200 = 0.5
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k="):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(2, 3, 1)


def test_pass_at_k_metric_groups():
    # group 0: 4 samples, 1 correct -> pass@2 = 0.5 ; group 1: 4 samples, 0 correct -> 0. Mean 0.25
    correct = torch.tensor([True, False, False, False, False, False, False, False])
    m = PassAtK(2)
    m.update(correct, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert m.compute().item() == pytest.approx(0.25)
    m1 = PassAtK(1)
    m1.update(correct, [0, 0, 0, 0, 1, 1, 1, 1])
    assert m1.compute().item() == pytest.approx((0.25 + 0.0) / 2)
    with pytest.raises(ValueError, match="k=5"):
        PassAtK(5).update(correct, [0] * 4 + [1] * 4)


def test_self_bleu_identical_is_one_and_disjoint_is_zero():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert self_bleu(["two"] * 2) == pytest.approx(1.0)  # shorter than 4 tokens, still identical -> 1
    assert self_bleu(["a b c d e", "f g h i j"]) == pytest.approx(0.0)
    assert self_bleu(["only one"]) is None


def test_self_bleu_equals_mean_of_torchmetrics_bleu():
    texts = ["the cat is on the mat", "a cat is on the mat", "there is a cat on the mat"]
    expected = (
        sum(
            float(bleu_score([texts[i]], [[t for j, t in enumerate(texts) if j != i]], n_gram=2, smooth=True))
            for i in range(3)
        )
        / 3
    )
    assert 0.0 < expected < 1.0
    assert self_bleu(texts, n_gram=2) == pytest.approx(expected)
    m = SelfBLEU(n_gram=2)
    m.update(texts + ["x y", "x y"], [0, 0, 0, 1, 1])
    assert m.compute().item() == pytest.approx((expected + 1.0) / 2)


def test_distinct_correct_answers():
    # group 0: correct answers "4", " 4", "5" -> distinct {4, 5} = 2 ; the incorrect "7" and a None ignored
    assert distinct_correct(["4", " 4", "5", "7", None], [True, True, True, False, True]) == 2
    # group 1: nothing correct -> 0; mean = (2 + 0) / 2 = 1
    m = DistinctCorrectAnswers()
    m.update(
        ["4", " 4", "5", "7", None, "1", "2"],
        torch.tensor([1, 1, 1, 0, 1, 0, 0], dtype=torch.bool),
        torch.tensor([0, 0, 0, 0, 0, 1, 1]),
    )
    assert m.compute().item() == pytest.approx(1.0)


def test_unique_completion_ratio():
    # group 0: "a b", "a  b" (same after whitespace collapse), "c" -> 2/3 ; group 1: "x", "y" -> 1
    assert unique_ratio(["a b", "a  b", "c"]) == pytest.approx(2 / 3)
    m = UniqueCompletionRatio()
    m.update(["a b", "x", "a  b", "y", "c"], [0, 1, 0, 1, 0])
    assert m.compute().item() == pytest.approx((2 / 3 + 1) / 2)


def test_metrics_accumulate_over_updates_and_reset():
    m = UniqueCompletionRatio()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(m.compute().item())
    m.update(["a", "a"], [0, 0])  # 0.5
    m.update(["a", "b"], [0, 0])  # 1.0 (a new batch; group ids are per-update)
    assert m.compute().item() == pytest.approx(0.75)
    m.reset()
    m.update(["a", "b"], [3, 3])
    assert m.compute().item() == pytest.approx(1.0)


def test_group_by_validates_length():
    assert group_by(["a", "b", "c"], [1, 0, 1]) == [["a", "c"], ["b"]]
    with pytest.raises(ValueError, match="group_index has 2 entries but there are 3 samples"):
        group_by(["a", "b", "c"], [0, 1])
    with pytest.raises(ValueError, match="n must be >= 1"):
        DistinctN(0)
