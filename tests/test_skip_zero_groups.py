"""No wasted update work: rows whose advantage is 0 (every row of a group with equal rewards) are left out of the
gradient pass when the objective makes them inert, and the update is the same as without skipping — under every
aggregation, with one step or several minibatches and epochs (some minibatches then hold only such rows and must
still take their optimizer step). An entropy bonus, a KL, REPO (A − β·L acts at A = 0) or a Cov loss keeps every
row in the pass."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import get_args

import pytest
import torch

from epr_lightning.models import TinyModel
from epr_lightning.module import RLModule
from epr_lightning.objectives import (
    REPO,
    REPOD,
    REPOR,
    ClipCovLoss,
    EntropyBonus,
    GSPOLoss,
    KLCovLoss,
    KLPenalty,
    Objective,
    PPOClipLoss,
    REINFORCELoss,
)
from epr_lightning.objectives.aggregation import AggregationMode
from epr_lightning.objectives.base import PolicyBatch
from epr_lightning.rollout.base import Rollout, TokenBatch
from epr_lightning.update import (
    Optimization,
    PolicyUpdate,
    UpdateSettings,
    scored_rows,
    zero_advantage_group_frac,
)

ROOT = Path(__file__).resolve().parents[1]
# 4 groups of 2; groups 1 and 3 have all-zero advantages (equal rewards)
LR = 0.1
SEQ_ADV = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.7, -0.7, 0.0, 0.0])
# only group 0 learns: with 4 minibatches of 2 rows, at least two minibatches hold nothing but zero rows
SPARSE_ADV = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_pure_helpers_on_hand_computed_values() -> None:
    skip = torch.tensor([False, True, True, False, True])
    assert scored_rows(torch.tensor([1, 2, 3, 0]), skip).tolist() == [3, 0]
    assert scored_rows(torch.tensor([2, 4, 1]), skip).tolist() == [2]  # all skipped: the first one stays
    assert zero_advantage_group_frac(SEQ_ADV, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])) == 0.5
    # a zero row in a group that learns does not make the group a zero-advantage one
    assert zero_advantage_group_frac(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1])) == 0.5


@pytest.mark.parametrize(
    "objective, inert",
    [
        (Objective(), True),
        (Objective(loss=GSPOLoss()), True),
        (Objective(loss=REINFORCELoss()), True),
        (Objective(transforms=[REPOR(zeta=0.05)]), True),
        (Objective(aggregation="seq_mean_token_sum_norm", norm_length=16), True),
        (
            Objective(aggregation="seq_mean_token_sum_norm"),
            False,
        ),  # its divisor would be the scored rows' max
        (Objective(terms=[EntropyBonus(0.01)]), False),
        (Objective(terms=[KLPenalty(0.01)]), False),
        (Objective(transforms=[REPO(beta=0.05)]), False),
        (Objective(transforms=[REPOD()]), False),
        (Objective(loss=ClipCovLoss(PPOClipLoss())), False),
        (Objective(loss=KLCovLoss(PPOClipLoss())), False),
    ],
)
def test_which_objectives_make_zero_advantage_rows_inert(objective: Objective, inert: bool) -> None:
    assert objective.zero_advantage_rows_inert is inert


def test_repo_acts_at_zero_advantage_and_repo_r_does_not() -> None:
    adv = torch.tensor([[0.0, 0.0, 1.0]])
    logp = torch.tensor([[-1.0, -0.2, -0.5]])
    entropy = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3)
    # REPO: A − β·(log π + H) = 0 − 0.1·(−0.5) = 0.05 and 0 − 0.1·0.3 = −0.03 where A = 0
    out = REPO(beta=0.1)(adv, logp, entropy, mask)
    torch.testing.assert_close(out, torch.tensor([[0.05, -0.03, 1.0]]))
    # REPO-R: A − ζ·|A|·log π stays exactly 0 where A = 0 (1 − 0.1·1·(−0.5) = 1.05 elsewhere)
    out = REPOR(zeta=0.1)(adv, logp, entropy, mask)
    assert out[0, :2].eq(0).all() and abs(float(out[0, 2]) - 1.05) < 1e-6


@pytest.mark.parametrize(
    "loss", [PPOClipLoss(), PPOClipLoss(dual_clip=3.0, tis_cap=2.0), GSPOLoss(), REINFORCELoss()]
)
def test_surrogates_have_zero_loss_and_gradient_at_zero_advantage(loss) -> None:
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g) * 2).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(3, 5, generator=g)  # ratios far from 1, some clipped
    batch = PolicyBatch(logp, old, old - 0.1, torch.zeros(3, 5), torch.ones(3, 5))
    out = loss(batch)
    out.loss.sum().backward()
    assert out.loss.abs().max() == 0 and logp.grad is not None and logp.grad.abs().max() == 0


# ------------------------------------------------------------------------------- the update, with and without
def _module(objective: Objective) -> RLModule:
    module = RLModule(policy=TinyModel(hidden_size=32, num_layers=2), objective=objective)
    module.configure_model()
    return module


def _tokens(module: RLModule) -> TokenBatch:
    g = torch.Generator().manual_seed(5)
    vocab = len(module.tokenizer)
    lengths = [6, 2, 4, 3, 5, 1, 2, 4]  # rows of different lengths: passes of different widths
    rollout = Rollout(
        prompt_ids=[torch.randint(5, vocab, (3,), generator=g).tolist() for _ in lengths],
        completion_ids=[torch.randint(5, vocab, (k,), generator=g).tolist() for k in lengths],
        sampler_logprobs=[[-1.0] * k for k in lengths],
        group_index=[i // 2 for i in range(len(lengths))],
        finish_reason=["stop"] * len(lengths),
        completion_text=[""] * len(lengths),
        prompt_text=[""] * len(lengths),
    )
    return rollout.to_batch(module.tokenizer.pad_token_id)


def _run(objective: Objective, settings: UpdateSettings, seq_adv: torch.Tensor, iterations: int = 2):
    """The final weights, the last update's stats and the rows of every gradient pass."""
    module = _module(copy.deepcopy(objective))
    tokens = _tokens(module)
    scored: list[int] = []

    def recorded(batch, *, grad, model=None):
        if grad:
            scored.append(len(batch))
        return module.policy_pass(batch, grad=grad, model=model)

    update = PolicyUpdate(settings, module.objective, recorded)
    policy = module.policy
    # momentum and weight decay: a minibatch that skipped its optimizer step would still show
    opt = torch.optim.SGD(policy.parameters(), lr=LR, momentum=0.9, weight_decay=0.1)
    optim = Optimization(opt, None, lambda loss: loss.backward(), lambda: policy.parameters())
    for it in range(iterations):
        stats = update(tokens, seq_adv, iteration=it, optim=optim)
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}, stats, scored


def _assert_same_update(objective: Objective, schedule: dict, seq_adv: torch.Tensor) -> list[int]:
    on = UpdateSettings(grad_clip=None, **schedule)
    off = UpdateSettings(grad_clip=None, skip_zero_advantage=False, **schedule)
    w_skip, s_skip, rows_skip = _run(objective, on, seq_adv)
    w_full, s_full, rows_full = _run(objective, off, seq_adv)
    initial = _module(Objective()).policy.state_dict()
    assert any(not torch.equal(w_full[k], initial[k]) for k in w_full)  # the update moved the weights
    for k in w_full:
        torch.testing.assert_close(w_skip[k], w_full[k], rtol=0.0, atol=1e-6, msg=k)
    torch.testing.assert_close(s_skip.old.logp, s_full.old.logp, rtol=0.0, atol=1e-5)  # π_old of every row
    torch.testing.assert_close(s_skip.metrics["loss/total"], s_full.metrics["loss/total"], rtol=0, atol=1e-6)
    assert sum(rows_full) == 2 * len(seq_adv) * schedule.get("ppo_epochs", 1)
    assert s_full.metrics["train/skipped_rows_frac"] == 0.0
    return rows_skip


SCHEDULES = [{}, {"num_minibatches": 4, "ppo_epochs": 2}]


@pytest.mark.parametrize("aggregation", get_args(AggregationMode))
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["one_step", "4mb_x2epochs"])
def test_skipping_gives_the_same_weights_under_every_aggregation(aggregation, schedule) -> None:
    objective = Objective(aggregation=aggregation, norm_length=16)
    rows = _assert_same_update(objective, schedule, SEQ_ADV)
    # the zero rows were left out: half of them per pass in one step; with 4 minibatches of 2, fewer rows
    assert sum(rows) < 2 * len(SEQ_ADV) * schedule.get("ppo_epochs", 1)
    if not schedule:
        assert rows == [4, 4]  # two iterations, the 4 rows of groups 0 and 2 each


@pytest.mark.parametrize(
    "objective",
    [Objective(transforms=[REPOR(zeta=0.05)]), Objective(loss=GSPOLoss(), aggregation="seq_mean_token_mean")],
    ids=["repo_r", "gspo"],
)
def test_skipping_gives_the_same_weights_with_repo_r_and_gspo(objective) -> None:
    rows = _assert_same_update(objective, {"num_minibatches": 4, "ppo_epochs": 2}, SPARSE_ADV)
    # 16 minibatch steps over 2 iterations, one row each except the ones holding rows 0 and 1
    assert sum(rows) < 2 * 8 * 2 and len(rows) == 16 and all(r >= 1 for r in rows)


@pytest.mark.parametrize(
    "objective",
    [Objective(terms=[EntropyBonus(0.05)]), Objective(transforms=[REPO(beta=0.05)])],
    ids=["entropy_bonus", "repo"],
)
def test_nothing_is_skipped_when_zero_advantage_rows_still_get_a_gradient(objective) -> None:
    rows = _assert_same_update(objective, {}, SEQ_ADV)
    assert rows == [8, 8]
    _, stats, _ = _run(objective, UpdateSettings(grad_clip=None), SEQ_ADV, iterations=1)
    assert stats.metrics["train/skipped_rows_frac"] == 0.0
    assert stats.metrics["rollout/zero_adv_group_frac"] == 0.5


def test_metrics_say_how_many_groups_had_no_signal_and_how_many_rows_were_skipped() -> None:
    _, stats, rows = _run(Objective(), UpdateSettings(), SEQ_ADV, iterations=1)
    assert rows == [4]
    assert stats.metrics["rollout/zero_adv_group_frac"] == 0.5
    assert stats.metrics["train/skipped_rows_frac"] == 0.5
    # the skipped rows' (zero) advantages are in the stats like any other's
    assert stats.token_advantages[[2, 3, 6, 7]].eq(0).all() and stats.token_advantages[0].gt(0).any()


# ------------------------------------------------------------------------------- two ranks (FSDP2, gloo)
DIST_OVERRIDES = """
trainer:
  logger: false
  enable_checkpointing: false
  limit_val_batches: 0
  use_distributed_sampler: false
  callbacks:
    - class_path: epr_lightning.testing.step_log.StepMetricsLog
      init_args: {{dirpath: {log_dir}}}
model:
  init_args:
    engine:
      class_path: epr_lightning.testing.fixed_engine.FixedEngine
      init_args: {{low: 0, high: 9}}
data:
  init_args:
    prompts_per_step: {prompts}
    batches_per_epoch: 4
"""


def _fit_records(tmp: Path, name: str, devices: int, prompts: int) -> dict[int, list[dict]]:
    """A GRPO fit of the tiny model with FixedEngine (rewards differ by group, so ranks skip different rows);
    every rank's per-iteration records."""
    import json
    import os
    import subprocess
    import sys

    log_dir = tmp / name
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(DIST_OVERRIDES.format(log_dir=log_dir, prompts=prompts))
    args = ["fit", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--config", str(cfg)]
    args += [f"--trainer.devices={devices}"]
    if devices > 1:
        args += [
            "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
            "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1",
        ]  # fmt: skip
    env = {**os.environ, "EPR_DEBUG": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "epr_lightning", *args], cwd=tmp, env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        int(f.stem.removeprefix("rank")): [json.loads(line) for line in f.read_text().splitlines()]
        for f in sorted(log_dir.glob("rank*.jsonl"))
    }


@pytest.mark.distributed
def test_two_fsdp2_ranks_that_skip_different_rows_match_one_process(tmp_path: Path) -> None:
    (single,) = _fit_records(tmp_path, "single", 1, 4).values()
    ranks = _fit_records(tmp_path, "fsdp2", 2, 2)
    skipped = [[r["metrics"]["train/skipped_rows_frac"] for r in ranks[k]] for k in (0, 1)]
    assert (
        skipped[0] != skipped[1]
    )  # the ranks left different rows out (and some iteration has one with none)
    assert any(a == 0.0 < b or b == 0.0 < a for a, b in zip(*skipped, strict=True))
    for i, one in enumerate(single):
        norms = [ranks[k][i]["metrics"]["train/grad_norm"] for k in (0, 1)]
        assert abs(norms[0] - norms[1]) <= 1e-6 and abs(norms[0] - one["metrics"]["train/grad_norm"]) <= 1e-5
    assert any(one["metrics"]["train/grad_norm"] > 1e-3 for one in single)
