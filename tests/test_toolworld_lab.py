"""tools/toolworld_lab.py: the per-level success table, the RL run summary, and the whole pipeline on the tiny model
(untrained evaluations → demonstrations → SFT → evaluation → RL from the warm start), resumable from its cache."""

import csv
import math
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import toolworld_lab  # noqa: E402


def test_success_by_level_reads_each_validation_and_overall_weights_the_cycled_levels():
    series = {"val/success_d0": [0.5, 0.75], "val/success_d1": [0.0, 0.25], "val/pass@1": [0.3, 0.6]}
    assert toolworld_lab.success_by_level(series, 0) == {0: 0.5, 1: 0.0}
    assert toolworld_lab.success_by_level(series, -1) == {0: 0.75, 1: 0.25}
    # [0, 0, 1]: two level-0 tasks per level-1 task
    assert toolworld_lab.overall({0: 0.75, 1: 0.25}, [0, 0, 1]) == pytest.approx((2 * 0.75 + 0.25) / 3)
    assert toolworld_lab.overall({0: 0.75, 1: 0.25}, [0, 1]) == pytest.approx(0.5)


def test_run_summary_on_a_hand_made_run():
    series = {
        "rollout/reward_mean": [0.0, 0.25, 0.5, 0.5, 0.75, 1.0],
        "policy/entropy": [2.0, 1.5, 1.0, 1.0, 1.0, 1.0],
        "rollout/zero_adv_group_frac": [1.0, 0.5, 0.5, 0.0, 0.5, 0.5],
        "val/pass@1": [0.25, 0.5],
        "val/success_d0": [0.5, 0.75],
    }
    row = toolworld_lab.run_summary(series)
    assert row["iterations"] == 6
    assert (row["val_success_start"], row["val_success_end"]) == (0.25, 0.5)
    assert (row["val_success_d0_start"], row["val_success_d0_end"]) == (0.5, 0.75)
    assert row["reward_initial"] == 0.0 and row["reward_final"] == pytest.approx(
        (0.25 + 0.5 + 0.5 + 0.75 + 1.0) / 5
    )
    assert row["mixed_groups"] == pytest.approx(1 - 3.0 / 6)  # the share of groups whose rewards differ
    assert row["entropy_change_pct"] == pytest.approx(-45.0)  # last 5 mean 1.1 vs 2.0


def test_run_budget_states_the_composed_config(tmp_path: Path):
    cfg = {
        "trainer": {"val_check_interval": 10},
        "model": {"init_args": {"num_generations": 4, "val_num_generations": 1, "sampling": {"max_new_tokens": 72}}},
        "data": {"init_args": {"batches_per_epoch": 20, "prompts_per_step": 2, "val_prompts": 32,
                               "task": {"init_args": {"max_turns": 2, "max_episode_tokens": 200}}}},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    budget = toolworld_lab.run_budget(path)
    assert budget.startswith("20 iterations x 2 tasks x 4 episodes, <= 2 model turns of <= 72 new tokens")
    assert "<= 200 tokens per episode" in budget and "32 dev tasks x 1 episode every 10 iterations" in budget


def test_the_pipeline_runs_on_the_tiny_model_and_resumes_from_its_cache(tmp_path: Path, capsys):
    args = [
        "--config", str(ROOT / "configs/tiny_cpu.yaml"), "--config", str(ROOT / "configs/task/toolworld_tiny.yaml"),
        "--sft-config", str(ROOT / "configs/sft/tiny.yaml"), "--difficulties", "1", "--eval-tasks", "4",
        "--rl-val-tasks", "4", "--demos", "8", "--sft-steps", "2", "--methods", "grpo", "--seeds", "0",
        "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    result = toolworld_lab.main(args)
    stages = [e["stage"] for e in result["evals"]]
    assert stages == ["untrained, full prompt, no stop", "untrained, the RL config", "after SFT (2 steps)"]
    assert all(
        e["difficulty"] == 1 and e["tasks"] == 4 and 0.0 <= e["success"] <= 1.0 for e in result["evals"]
    )
    (run,) = result["runs"]
    assert run["method"] == "grpo" and run["iterations"] == 2
    assert 0.0 <= run["val_success_start"] <= 1.0 and 0.0 <= run["mixed_groups"] <= 1.0
    assert not math.isnan(run["reward_final"])
    out = tmp_path / "out"
    with open(out / "evals.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    table = (out / "table.md").read_text()
    assert "Budget of an RL run: 2 iterations x 4 tasks x 4 episodes" in table
    assert "| after SFT (2 steps) |" in table and "| grpo | 1 |" in table
    pngs = {png: (out / png).read_bytes() for png in ("curves.png", "success.png")}
    assert all(len(data) > 1000 for data in pngs.values())
    capsys.readouterr()
    assert toolworld_lab.main(args)["runs"] == result["runs"]  # every stage from the cache
    printed = capsys.readouterr().out
    assert printed.count("cached") == 5 and "training" not in printed
    # --replot redraws the PNGs from the CSVs alone, running nothing
    for png in pngs:
        (out / png).unlink()
    assert toolworld_lab.main([*args, "--replot"])["runs"][0]["method"] == "grpo"
    assert (
        all((out / png).stat().st_size > 1000 for png in pngs) and "training" not in capsys.readouterr().out
    )
    with pytest.raises(SystemExit, match="no runs.csv and curves.csv"):
        toolworld_lab.main(["--replot", "--out", str(tmp_path / "empty")])


def test_demonstrations_take_the_task_of_the_last_config_when_its_class_changes(tmp_path: Path):
    """tiny_cpu.yaml's ArithmeticTask arguments must not leak into the EnvironmentTask a later config sets."""
    import toolworld_demos

    task = toolworld_demos.merged([ROOT / "configs/tiny_cpu.yaml", ROOT / "configs/task/toolworld_tiny.yaml"])
    assert task["class_path"] == "epr_lightning.envs.EnvironmentTask" and "num_train" not in task["init_args"]
    same = tmp_path / "same.yaml"  # the same class: merged key by key
    same.write_text("data:\n  init_args:\n    task:\n      init_args:\n        max_turns: 5\n")
    task = toolworld_demos.merged([ROOT / "configs/task/toolworld_tiny.yaml", same])
    assert task["init_args"]["max_turns"] == 5 and task["init_args"]["max_episode_tokens"] == 96
    assert toolworld_demos.load_task(
        [ROOT / "configs/tiny_cpu.yaml", ROOT / "configs/task/toolworld_tiny.yaml"]
    )
