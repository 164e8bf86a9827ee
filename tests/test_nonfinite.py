"""Non-finite guard (``epr_lightning.update.optimizer_step`` with its ``NonFiniteGuard``): a NaN/Inf loss or
gradient skips the update, is counted and logged; ``max_nonfinite_updates`` in a row abort with a clear message
and the last good checkpoint stays intact."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from epr_lightning.update import NonFiniteGuard, Optimization, optimizer_step

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> None:
        self.steps += 1


def fake_module(max_nonfinite: int = 3) -> SimpleNamespace:
    """Just what ``optimizer_step`` touches: a 2-weight policy, SGD, a scheduler, the guard's counters."""
    policy = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        policy.weight.copy_(torch.tensor([[1.0, 2.0]]))
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    sch = Recorder()
    optim = Optimization(
        optimizer=opt, scheduler=sch, backward=lambda loss: loss.backward(), params=policy.parameters
    )
    return SimpleNamespace(policy=policy, optim=optim, guard=NonFiniteGuard(max_nonfinite), sch=sch)


def step(m: SimpleNamespace, loss: torch.Tensor) -> float | None:
    return optimizer_step(m.optim, loss, None, m.guard, iteration=7)


def finite_loss(m: SimpleNamespace) -> torch.Tensor:
    return m.policy(torch.tensor([[1.0, 1.0]])).sum()  # d/dw = [1, 1]


def test_finite_step_updates_and_resets_the_streak() -> None:
    m = fake_module()
    m.guard.in_row = 2
    norm = step(m, finite_loss(m))
    assert norm == pytest.approx(2**0.5)  # ||[1, 1]||
    torch.testing.assert_close(m.policy.weight, torch.tensor([[0.9, 1.9]]))  # w - 0.1 * [1, 1]
    assert (m.guard.in_row, m.guard.total, m.sch.steps) == (0, 0, 1)


@pytest.mark.parametrize(
    "make_loss",
    [
        pytest.param(lambda m: finite_loss(m) * float("nan"), id="nan-loss"),
        pytest.param(lambda m: finite_loss(m) * float("inf"), id="inf-loss"),
        # value sqrt(0) = 0 is finite, but d sqrt(x)/dx at 0 is +inf: only the gradient is non-finite
        pytest.param(lambda m: torch.sqrt(m.policy.weight - m.policy.weight.detach()).sum(), id="inf-grad"),
    ],
)
def test_nonfinite_loss_or_gradient_skips_the_update(make_loss) -> None:
    m = fake_module()
    loss = make_loss(m)
    before = m.policy.weight.detach().clone()
    assert step(m, loss) is None
    torch.testing.assert_close(m.policy.weight, before)  # no step
    assert m.policy.weight.grad is None  # the poisoned gradient is dropped
    # counted; LR schedule not advanced
    assert (m.guard.in_row, m.guard.total, m.sch.steps) == (1, 1, 0)


def test_k_in_a_row_abort_and_a_good_step_resets() -> None:
    m = fake_module(max_nonfinite=2)

    def nan() -> torch.Tensor:
        return finite_loss(m) * float("nan")

    assert step(m, nan()) is None
    assert step(m, finite_loss(m)) is not None  # streak broken
    assert step(m, nan()) is None
    with pytest.raises(RuntimeError, match=r"2 consecutive non-finite updates .* at iteration 7; aborting"):
        step(m, nan())
    assert m.guard.total == 3


class NaNAt(Callback):
    """Make the objective's loss NaN during the given iterations (all its minibatch steps)."""

    def __init__(self, iterations: set[int]) -> None:
        self.iterations = iterations
        self.logged: dict[int, float] = {}
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        real = pl_module.objective.compute_loss

        def poisoned(batch, normaliser=None):
            out = real(batch, normaliser)
            if pl_module.iteration in self.iterations:
                return dataclasses.replace(out, loss=out.loss * float("nan"))
            return out

        pl_module.objective.compute_loss = poisoned

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights[pl_module.iteration] = next(pl_module.policy.parameters()).detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged[pl_module.iteration - 1] = float(trainer.callback_metrics["train/nonfinite_skips"])


def test_run_skips_counts_logs_then_aborts_keeping_last_good_checkpoint(tmp_path: Path) -> None:
    from epr_lightning.cli import build_cli

    args = [
        "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.batches_per_epoch", "8",
        "--model.init_args.max_nonfinite_updates", "2",
        "--data.init_args.task", "epr_lightning.tasks.toy.CharacterTask",  # dense reward: real updates
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    probe = NaNAt({1, 3, 4})
    cli.trainer.callbacks.append(probe)
    with pytest.raises(RuntimeError, match="2 consecutive non-finite updates .* at iteration 4; aborting"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # iteration 1 was skipped (weights unchanged across it), counted and logged; iteration 2 trained again
    assert torch.equal(probe.weights[1], probe.weights[2])
    assert not torch.equal(probe.weights[2], probe.weights[3])
    assert probe.logged == {0: 0.0, 1: 1.0, 2: 1.0, 3: 2.0}
    assert cli.model.nonfinite_total == 3 and cli.trainer.global_step == 2  # optimizer steps: iterations 0, 2
    ckpt = torch.load(tmp_path / "runs/tiny/version_0/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["epr"]["iteration"] == 4  # iterations 0..3 completed; nothing written for the failed one
    assert ckpt["epr"]["nonfinite_total"] == 2
    weights = next(v for k, v in ckpt["state_dict"].items() if k.startswith("policy."))
    assert torch.isfinite(weights).all()
