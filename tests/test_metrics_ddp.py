"""Cross-rank behaviour on 2 gloo CPU ranks: the group metrics sync (each rank sees half the groups and
compute() equals one pass), and the monitoring callbacks log global values under ``ddp_spawn``."""

from __future__ import annotations

import socket

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
)

# 4 prompt groups of G = 3; ranks 0/1 take groups {0, 1} / {2, 3}. Group sizes and contents differ so an
# average of per-rank means would not equal the global mean for every metric.
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


def _worker(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metrics = make_metrics()
        rows = range(0, 6) if rank == 0 else range(6, 12)
        update_all(metrics, rows)
        out = {k: m.compute().item() for k, m in metrics.items()}
        out["reduced_max"] = all_reduce(torch.tensor([float(rank), -float(rank)]), "max").tolist()
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
def test_two_rank_sync_equals_single_process():
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(_free_port(), queue), nprocs=2, join=True)
    results = dict(queue.get() for _ in range(2))

    single = make_metrics()
    update_all(single, range(12))
    expected = {k: m.compute().item() for k, m in single.items()}
    # sanity: the split matters (rank-0-only distinct_correct would be (2+1)/2, global is (2+1+2+0)/4)
    assert expected["distinct_correct"] == pytest.approx(5 / 4)
    for rank in (0, 1):
        for k, v in expected.items():
            assert results[rank][k] == pytest.approx(v), (rank, k)
        assert results[rank]["reduced_max"] == [1.0, 0.0]
        assert results[rank]["reduced_sum"] == [3.0]


class _RankRecords(pl.LightningModule):
    """Rank r trains on record r (DistributedSampler splits the 2-item dataset), one step each."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        from test_monitor_callbacks import make_record

        index = int(batch[0])
        rec = make_record(0, scale=1.0 if index == 0 else 0.4)
        if index == 1:
            rec.completions = ["a a", "a a", "b", "c"]
            rec.sampler_logp[0, 2] = -0.7  # |d| = 0.2 on one of rank 1's 10 tokens
        return {"record": rec}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([0, 1], batch_size=1)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_monitor_callbacks_reduce_across_two_ddp_ranks(tmp_path):
    from epr_lightning.callbacks import DiversityMonitor, EntropyTracker, PrecisionAudit
    from epr_lightning.callbacks.diversity import diversity_metrics
    from test_monitor_callbacks import make_record

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
        callbacks=[EntropyTracker(position_buckets=(0, 2)), DiversityMonitor(ngrams=(1,)), PrecisionAudit()],
    )
    trainer.fit(_RankRecords())
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # entropy: rank 0 has 10 tokens summing 18.5, rank 1 the same x0.4 = 7.4 -> (18.5 + 7.4) / 20
    assert m["policy/entropy"] == pytest.approx(25.9 / 20)
    # distinct_1: group means of both ranks' 4 groups together (not rank 0's alone)
    r0 = diversity_metrics(make_record(0), ngrams=(1,))["diversity/distinct_1"]
    r1 = diversity_metrics(make_record(0, completions=["a a", "a a", "b", "c"]), ngrams=(1,))[
        "diversity/distinct_1"
    ]
    assert r0 != pytest.approx(r1)
    assert m["diversity/distinct_1"] == pytest.approx((r0 + r1) / 2)
    # precision: 20 tokens, one with |d| = 0.2 on rank 1 -> mean 0.01, max 0.2 seen from rank 0
    assert m["precision/logp_absdiff_mean"] == pytest.approx(0.01, rel=1e-5)
    assert m["precision/logp_absdiff_max"] == pytest.approx(0.2, rel=1e-5)
