"""Evaluating a checkpoint does not depend on the training method: a REPO-R checkpoint validates under the GRPO
config with exactly the numbers it gets under its own; resuming *training* under another method is a one-line
error; ``test``/``predict`` are not offered (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epr_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny_cpu.yaml")
# a task with a graded reward, so that two iterations move the tiny model's weights
TASK = ["--data.init_args.task", "epr_lightning.tasks.CharacterTask"]


def scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for f in sorted(run_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def run(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def validate(tmp_path: Path, name: str, method: str, *extra: str) -> dict[str, list[float]]:
    out = tmp_path / name
    code = run(
        "validate",
        "--config",
        TINY,
        "--config",
        str(ROOT / f"configs/method/{method}.yaml"),
        *TASK,
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    )
    assert code == 0
    return scalars(out)


def test_a_repo_r_checkpoint_validates_under_grpo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run(
        "fit",
        "--config",
        TINY,
        "--config",
        str(ROOT / "configs/method/repo_r.yaml"),
        *TASK,
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "train"),
        "--trainer.limit_val_batches",
        "0",
        "--model.init_args.optimizer.init_args.lr",
        "0.01",
    )
    assert code == 0
    ckpt = str(next((tmp_path / "train").rglob("last.ckpt")))
    grpo = validate(tmp_path, "grpo", "grpo", "--ckpt_path", ckpt)
    repo_r = validate(tmp_path, "repo_r", "repo_r", "--ckpt_path", ckpt)
    untrained = validate(tmp_path, "untrained", "grpo")
    for tag in ("val/entropy", "val/reward_mean", "val/pass@1"):
        assert grpo[tag] == pytest.approx(repo_r[tag], abs=1e-6), tag  # the same weights, whatever the method
    assert abs(grpo["val/entropy"][0] - untrained["val/entropy"][0]) > 1e-3  # and they are the trained ones
    capsys.readouterr()
    # resuming *training* needs the objective's state: under another method that is one clear line
    code = run(
        "fit",
        "--config",
        TINY,
        "--config",
        str(ROOT / "configs/method/grpo.yaml"),
        *TASK,
        "--ckpt_path",
        ckpt,
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "resume"),
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epr-lightning: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "transforms.0" in lines[0] and "resuming training needs the method config" in lines[0]


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_test_and_predict_are_not_offered(subcommand: str, capsys: pytest.CaptureFixture) -> None:
    assert run(subcommand, "--config", TINY) == 2
    err = capsys.readouterr().err
    assert err.count("epr-lightning: error:") == 1 and "Traceback" not in err
    assert f"invalid choice: '{subcommand}'" in err and "'fit', 'validate'" in err
