"""Cross-rank behaviour on 2 gloo CPU ranks, with UNEQUAL shares per rank.

Rank 0 holds fewer groups, samples and tokens than rank 1, so averaging per-rank results (a mean of means)
gives a different number from the global reduction for every value asserted here; each test checks that
difference on its own data before comparing against the expected values, which are computed by hand or from
the concatenated data in one process, never through a cross-rank path.
"""

from __future__ import annotations

import math
import socket
from fractions import Fraction

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from epr_lightning.metrics import (
    DistinctCorrectAnswers,
    DistinctN,
    PassAtK,
    SelfBLEU,
    UniqueCompletionRatio,
    all_reduce,
    distinct_n,
    unique_ratio,
)
from epr_lightning.record import StepRecord

# 4 prompt groups of G = 3. Rank 0 takes group 0 only (3 samples), rank 1 groups 1-3 (9 samples).
COMPLETIONS = [
    "the answer is 4",
    "the answer is 4",
    "so it is 5",
    "x y z",
    "x y w",
    "q",
    "a b c d",
    "a b c d",
    "a b c d",
    "one two",
    "three four",
    "five six",
]
ANSWERS = ["4", "4", "5", "1", None, "2", "7", "7", "8", "9", "9", "3"]
CORRECT = [True, True, True, False, False, True, True, True, True, False, False, False]
GROUPS = [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
RANK_ROWS = (range(0, 3), range(3, 12))

# Per-group values by hand (groups 0, 1, 2, 3); every metric is the mean over the 4 groups.
HAND = {
    # pooled whitespace tokens: 7 distinct of 12 | 5 of 7 | 4 of 12 | 6 of 6
    "distinct_1": [Fraction(7, 12), Fraction(5, 7), Fraction(1, 3), Fraction(1)],
    # bigrams: 6 distinct of 9 | 3 of 4 ("q" has none) | 3 of 9 | 3 of 3
    "distinct_2": [Fraction(2, 3), Fraction(3, 4), Fraction(1, 3), Fraction(1)],
    "unique": [Fraction(2, 3), Fraction(1), Fraction(1, 3), Fraction(1)],
    # distinct correct answers: {4, 5} | {2} | {7, 8} | none
    "distinct_correct": [Fraction(2), Fraction(1), Fraction(2), Fraction(0)],
    # c/n: 3/3 | 1/3 | 3/3 | 0/3
    "pass@1": [Fraction(1), Fraction(1, 3), Fraction(1), Fraction(0)],
    # 1 - C(n-c, 2)/C(n, 2): 1 | 1 - 1/3 | 1 | 0
    "pass@2": [Fraction(1), Fraction(2, 3), Fraction(1), Fraction(0)],
}


def make_metrics():
    return {
        "distinct_1": DistinctN(1),
        "distinct_2": DistinctN(2),
        "self_bleu": SelfBLEU(4),
        "unique": UniqueCompletionRatio(),
        "distinct_correct": DistinctCorrectAnswers(),
        "pass@1": PassAtK(1),
        "pass@2": PassAtK(2),
    }


def update_all(metrics, rows):
    comps = [COMPLETIONS[i] for i in rows]
    groups = torch.tensor([GROUPS[i] for i in rows])
    correct = torch.tensor([CORRECT[i] for i in rows])
    for name, m in metrics.items():
        if name.startswith("pass@"):
            m.update(correct, groups)
        elif name == "distinct_correct":
            m.update([ANSWERS[i] for i in rows], correct, groups)
        else:
            m.update(comps, groups)


def compute_on(rows) -> dict[str, float]:
    """Values of a fresh set of metrics fed ``rows`` in this process (no process group: no sync)."""
    metrics = make_metrics()
    update_all(metrics, rows)
    return {k: m.compute().item() for k, m in metrics.items()}


def _worker(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metrics = make_metrics()
        update_all(metrics, RANK_ROWS[rank])
        out = {k: m.compute().item() for k, m in metrics.items()}
        out["reduced_max"] = all_reduce(torch.tensor([float(rank), -float(rank)]), "max").tolist()
        out["reduced_min"] = all_reduce(torch.tensor([float(rank), -float(rank)]), "min").tolist()
        out["reduced_sum"] = all_reduce(torch.tensor([1.0 + rank]), "sum").tolist()
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.timeout(60)
def test_two_rank_sync_equals_global_mean_over_unequal_shares():
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(_free_port(), queue), nprocs=2, join=True)
    results = dict(queue.get() for _ in range(2))

    expected = {k: float(sum(v) / len(v)) for k, v in HAND.items()}
    single = compute_on(range(12))  # the concatenated data in one process
    for k, v in expected.items():
        # the metrics themselves agree with the hand values
        assert single[k] == pytest.approx(v, rel=1e-12), k
    expected["self_bleu"] = single["self_bleu"]
    per_rank = [compute_on(rows) for rows in RANK_ROWS]
    for k, v in expected.items():
        mean_of_means = (per_rank[0][k] + per_rank[1][k]) / 2
        assert abs(mean_of_means - v) > 0.005, k  # the split is unequal enough to expose that bug
        for rank in (0, 1):
            assert results[rank][k] == pytest.approx(v, rel=1e-9), (rank, k)
    for rank in (0, 1):
        assert results[rank]["reduced_max"] == [1.0, 0.0]
        assert results[rank]["reduced_min"] == [0.0, -1.0]
        assert results[rank]["reduced_sum"] == [3.0]


# ---------------------------------------------------------------------------------------------------------
# Monitoring callbacks under ddp_spawn: rank 0 has 1 group / 2 samples / 6 tokens, rank 1 3 / 6 / 13.
# ---------------------------------------------------------------------------------------------------------
RANK_DATA = [
    {
        "entropy": [[1.0, 2.0, 3.0, 4.0], [2.0, 2.0]],
        "completions": ["one two", "three four"],
        "groups": [0, 0],
        "correct": [True, True],
        "old_shift": (0, 1, 0.3),  # (row, completion position, old − sampler) of the one mismatched token
    },
    {
        "entropy": [[0.5, 0.5, 0.5], [3.0], [1.0], [0.25, 0.25], [2.0, 1.0, 0.5, 0.5, 1.0], [0.1]],
        "completions": ["a a", "a a", "b", "c", "x y", "x y z"],
        "groups": [0, 0, 1, 1, 2, 2],
        "correct": [True, False, False, False, True, True],
        "old_shift": (4, 2, -0.2),
    },
]
PROMPT = 2  # prompt positions before each completion
SAMPLER_LOGP = -0.5


def rank_record(data: dict) -> StepRecord:
    rows = data["entropy"]
    n, width = len(rows), PROMPT + max(len(r) for r in rows) + 1
    mask, entropy = torch.zeros(n, width), torch.full((n, width), 99.0)  # junk outside the mask
    old, sampler = torch.full((n, width), -99.0), torch.full((n, width), -77.0)
    for i, row in enumerate(rows):
        sl = slice(PROMPT, PROMPT + len(row))
        mask[i, sl], entropy[i, sl] = 1.0, torch.tensor(row)
        old[i, sl], sampler[i, sl] = SAMPLER_LOGP, SAMPLER_LOGP
    r, pos, d = data["old_shift"]
    old[r, PROMPT + pos] = SAMPLER_LOGP + d
    return StepRecord(
        iteration=0,
        input_ids=torch.zeros(n, width, dtype=torch.long),
        loss_mask=mask,
        group_index=torch.tensor(data["groups"]),
        rewards=torch.tensor([float(c) for c in data["correct"]]),
        correct=torch.tensor(data["correct"]),
        seq_advantages=torch.zeros(n),
        token_advantages=torch.zeros(n, width),
        entropy=entropy,
        old_logp=old,
        sampler_logp=sampler,
        clip_upper=None,
        clip_lower=None,
        prompts=["p"] * (n // 2),
        completions=list(data["completions"]),
        answers=[None] * n,
        num_prompts=n // 2,
        num_generations=2,
    )


def expected_callback_values(datas: list[dict]) -> dict[str, float]:
    """The logged values computed directly from the given ranks' raw data, pooled in this process."""
    tokens = [h for d in datas for row in d["entropy"] for h in row]
    early = [h for d in datas for row in d["entropy"] for h in row[:2]]  # completion positions [0, 2)
    late = [h for d in datas for row in d["entropy"] for h in row[2:]]
    shifts = [d["old_shift"][2] for d in datas]
    n = len(tokens)
    groups: list[tuple[dict, list[int]]] = []  # (rank data, sample rows) of every prompt group
    for d in datas:
        by_group: dict[int, list[int]] = {}
        for i, g in enumerate(d["groups"]):
            by_group.setdefault(g, []).append(i)
        groups += [(d, rows) for rows in by_group.values()]
    texts = [[d["completions"][i] for i in rows] for d, rows in groups]
    pass1 = [sum(d["correct"][i] for i in rows) / len(rows) for d, rows in groups]
    return {
        # policy/entropy is the module's; after one iteration the tracker's cumulative H is that global mean
        "policy/entropy_cumulative": sum(tokens) / n,
        "policy/entropy_pos_0_2": sum(early) / len(early),
        "policy/entropy_pos_2_inf": sum(late) / len(late),
        "diversity/distinct_1": sum(distinct_n(t, 1) for t in texts) / len(texts),
        "diversity/unique_ratio": sum(unique_ratio(t) for t in texts) / len(texts),
        "rollout/pass@1": sum(pass1) / len(pass1),
        "precision/logp_absdiff_mean": sum(abs(d) for d in shifts) / n,
        "precision/kl_k3": sum(math.expm1(d) - d for d in shifts) / n,
    }


class _RankRecords(pl.LightningModule):
    """Each rank returns its own record of RANK_DATA, one step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        return {"record": rank_record(RANK_DATA[self.global_rank])}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([0, 1], batch_size=1)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_monitor_callbacks_reduce_unequal_ranks_globally(tmp_path):
    from epr_lightning.callbacks import DiversityMonitor, EntropyTracker, PrecisionAudit

    expected = expected_callback_values(RANK_DATA)
    # by hand: 25.1 entropy over 6 + 13 tokens; rank means 14/6 and 11.1/13 would average to 1.594
    assert expected["policy/entropy_cumulative"] == pytest.approx(25.1 / 19)
    assert expected["diversity/distinct_1"] == pytest.approx((1 + 1 / 4 + 1 + 3 / 5) / 4)
    assert expected["rollout/pass@1"] == pytest.approx((1 + 1 / 2 + 0 + 1) / 4)
    per_rank = [expected_callback_values([d]) for d in RANK_DATA]
    for k, v in expected.items():
        assert abs((per_rank[0][k] + per_rank[1][k]) / 2 - v) > 1e-3 * max(abs(v), 1e-3), k

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[
            EntropyTracker(position_buckets=(0, 2)),
            DiversityMonitor(ngrams=(1,), self_bleu=False),
            PrecisionAudit(bf16_sample_tokens=0),
        ],
    )
    trainer.fit(_RankRecords())
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    # extremes are global: rank 0 logs the largest |d| (its own, 0.3) and the smallest ratio (rank 1's)
    assert m["precision/logp_absdiff_max"] == pytest.approx(0.3, rel=1e-5)
    assert m["precision/ratio_max"] == pytest.approx(math.exp(0.3), rel=1e-5)
    assert m["precision/ratio_min"] == pytest.approx(math.exp(-0.2), rel=1e-5)
