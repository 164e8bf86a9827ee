"""Every ``examples/*/config.yaml`` trains 2 rollout iterations on the tiny model, composed after
``configs/base.yaml`` exactly as the README's "Your own model, data and reward" section runs it (only the
policy and the number of iterations are overridden); the custom reward file scores what its docstring says."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from epr_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*/config.yaml"))


def scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for f in sorted(run_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def test_the_examples_are_all_covered() -> None:
    assert {p.parent.name for p in EXAMPLES} == {"custom_reward", "math"}


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_trains_two_iterations_on_the_tiny_model(config: Path, tmp_path: Path, monkeypatch) -> None:
    if config.parent.name == "math":
        pytest.importorskip("math_verify")
    monkeypatch.chdir(ROOT)  # the README runs the examples from the repository root
    main([
        "fit", "--config", "configs/base.yaml", "--config", str(config.relative_to(ROOT)),
        "--model.init_args.policy", "epr_lightning.models.TinyModel",
        "--data.init_args.batches_per_epoch", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    runs = tmp_path / "runs" / config.parent.name  # the example's own logger name
    values = scalars(runs)
    assert len(values["rollout/reward_mean"]) == 2
    assert all(math.isfinite(v) for v in values["rollout/reward_mean"])
    assert values["rollout/reward_errors"] == [0.0, 0.0]  # the reward ran on every completion
    assert len(values["val/pass@1"]) == 2  # before the first update and after the last
    assert {"policy/entropy", "diversity/distinct_2"} <= set(values)  # the monitors are on
    state = torch.load(next(runs.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert state["epr"]["iteration"] == 2


def test_custom_reward_functions_score_as_documented(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    from epr_lightning.tasks import Example, TRLReward, score_completions

    reward = TRLReward("examples/custom_reward/reward.py", ["word_count", "ends_with_period"], [1.0, 0.2])
    ex = [
        Example(id=str(i), prompt="Describe the sea in exactly 4 words.", meta={"n_words": 4})
        for i in range(4)
    ]
    completions = [
        "Vast, blue, deep, restless.",
        "Vast blue deep restless",
        "Blue.",
        "It is vast and blue and very deep",
    ]
    result = score_completions(reward, ex, completions, timeout_s=5.0)
    assert result.rewards == pytest.approx([1.2, 1.0, 0.25 + 0.2, 0.0])
