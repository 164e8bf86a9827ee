"""Exact resume: 4 iterations straight == 2 iterations, SIGKILL, ``--ckpt_path last``, 2 more (CPU, to 1e-6).

Both runs are the real CLI in a subprocess. The killed run is stopped by ``SigkillAtIteration`` (below,
imported by the subprocess from this file) with SIGKILL — no cleanup, no final checkpoint — right after the
checkpoint of iteration 2 was written. The config exercises what a resume must restore: several optimizer
steps per rollout (``global_step`` ≠ iteration), a learning-rate schedule, an epoch boundary crossed after
the resume (3 iterations per epoch), a validation run in between, the data position, the sampler's call
counter, EntropyTracker's history, and a dense reward so that every update actually changes the model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TAGS = (
    "rollout/reward_mean",
    "policy/entropy",
    "loss/pg",
    "loss/total",
    "train/lr",
    "train/grad_norm",
    "policy/ratio_max",
)


class SigkillAtIteration(Callback):
    """Test helper: SIGKILL our own process when iteration ``at`` is about to start (its predecessor's
    checkpoint is on disk by then)."""

    def __init__(self, at: int = 2) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.iteration == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


RUN_CONFIG = """
trainer:
  max_epochs: 2
  max_steps: 16          # optimizer steps: 4 iterations x 2 ppo epochs x 2 minibatches
  limit_val_batches: 1
  callbacks:
    - class_path: epr_lightning.checkpointing.RolloutCheckpoint
      init_args: {every_n_iterations: 1}
    - class_path: epr_lightning.callbacks.EntropyTracker
      init_args: {histogram_every_n: 0}
model:
  init_args:
    ppo_epochs: 2
    minibatch_size: 8
    lr_scheduler:
      class_path: torch.optim.lr_scheduler.LinearLR
      init_args: {start_factor: 1.0, end_factor: 0.1, total_iters: 16}
data:
  init_args:
    task:
      class_path: epr_lightning.tasks.toy.CharacterTask
      init_args: {num_train: 32, num_val: 4}
    prompts_per_step: 4
    batches_per_epoch: 3
"""


def run_cli(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        PY, "-m", "epr_lightning", "fit",
        "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--config", str(tmp / "run.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
        *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=180)


def scalars(run_dirs: list[Path]) -> dict[str, dict[int, float]]:
    """tag → {step: value} over the event files of the given version folders (later folders win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for run_dir in run_dirs:
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                out.setdefault(tag, {})[event.step] = event.value
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    straight, killed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("killed")
    for tmp in (straight, killed):
        (tmp / "run.yaml").write_text(RUN_CONFIG)
    done = run_cli(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    first = run_cli(killed, "--trainer.callbacks+=test_resume.SigkillAtIteration")
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    resumed = run_cli(killed, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return straight, killed, resumed


def test_killed_then_resumed_run_matches_straight_run(runs) -> None:
    straight, killed, resumed = runs
    versions = sorted((killed / "runs" / "tiny").glob("version_*"))
    assert [v.name for v in versions] == ["version_0", "version_1"]
    assert "Restoring states from the checkpoint path at" in resumed.stderr + resumed.stdout
    assert str(versions[0] / "checkpoints" / "last.ckpt") in resumed.stderr + resumed.stdout

    ref = scalars([straight / "runs" / "tiny" / "version_0"])
    got = scalars(versions)
    first_half = scalars(versions[:1])
    for tag in TAGS:
        assert tag in ref, f"{tag} not logged; have {sorted(ref)}"
        assert len(ref[tag]) == 4, (tag, ref[tag])
        assert len(first_half[tag]) == 2, (tag, first_half[tag])  # the kill came after 2 iterations
        assert sorted(got[tag]) == sorted(ref[tag]), tag
        for step, value in ref[tag].items():
            assert got[tag][step] == pytest.approx(value, abs=1e-6, rel=1e-6), (tag, step)
    # the run learned something: rewards are not all equal and the LR schedule moved
    assert len(set(ref["rollout/reward_mean"].values())) > 1
    assert len(set(ref["train/lr"].values())) == 4
    # the validation after epoch 0 ran in both (once, in the resumed part of the killed run)
    val = [t for t in ref if t.startswith("val/")]
    assert val, sorted(ref)
    for tag in val:
        assert got[tag] == pytest.approx(ref[tag], abs=1e-6), tag


def test_resumed_checkpoint_state_matches(runs) -> None:
    import torch

    straight, killed, _ = runs
    a = torch.load(
        straight / "runs/tiny/version_0/checkpoints/last.ckpt", weights_only=False, map_location="cpu"
    )
    b = torch.load(
        killed / "runs/tiny/version_1/checkpoints/last.ckpt", weights_only=False, map_location="cpu"
    )
    assert a["epr"]["iteration"] == b["epr"]["iteration"] == 4
    assert a["global_step"] == b["global_step"] == 16
    # the sampler's call counter drives its per-call seeds; weight_version is only a label (the resumed run
    # pushes the restored weights to the engine once more, which bumps it)
    # 4 rollouts + the iteration-0 validation + the end-of-epoch validation (a resume does not repeat the first)
    assert a["epr"]["engine"]["generate_calls"] == b["epr"]["engine"]["generate_calls"] == 6
    assert a["PromptDataModule"] == b["PromptDataModule"] == {"sampler": {"drawn": 4}}  # data position
    assert set(a["epr"]["rng"]) == set(b["epr"]["rng"]) >= {"python", "numpy", "torch"}
    for key, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], tensor, atol=1e-6, rtol=0, msg=key)
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for idx in opt_a:
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_b[idx][name], opt_a[idx][name], atol=1e-6, rtol=1e-5)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    tracker_a = next(v for k, v in a["callbacks"].items() if "EntropyTracker" in k)
    tracker_b = next(v for k, v in b["callbacks"].items() if "EntropyTracker" in k)
    assert tracker_b == pytest.approx(tracker_a, abs=1e-6)
