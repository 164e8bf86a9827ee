"""tools/compare_methods.py on the tiny model: 2 methods × 2 seeds × 2 iterations (CSV, table, cache), and the
lab arithmetic of tools/lab.py on hand-made series."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import load_tool

ROOT = load_tool("compare_methods").ROOT
lab = load_tool("lab")


def test_summarize_run_hand_values():
    series = {
        "policy/entropy": [2.0, 1.8, 1.6, 1.5, 1.4, 1.3, 1.2],
        "rollout/reward_mean": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        "val/pass@1": [0.25, 0.5],
        "val/entropy": [1.6, 1.2],
        "val/pass@4": [0.5, 0.75],
        "ctrl/zeta": [0.001, 0.002, 0.004],
        "diversity/distinct_correct": [1.0, 2.0, 3.0],
    }
    s = lab.summarize_run(series, wall_s=120.0)
    # rollouts: the mean of the last 5 iterations, (1.6 + 1.5 + 1.4 + 1.3 + 1.2) / 5 = 1.4, vs 2.0 → -30%
    assert s["entropy_end"] == pytest.approx(1.4) and s["rollout_entropy_change_pct"] == pytest.approx(-30.0)
    # validation on the same prompts before and after: 1.2 vs 1.6 → -25%
    assert (s["val_entropy_initial"], s["val_entropy_final"]) == (1.6, 1.2)
    assert s["entropy_change_pct"] == pytest.approx(-25.0)
    assert s["entropy_min_ratio"] == pytest.approx(0.6)
    assert s["entropy_cumulative"] == pytest.approx(sum(series["policy/entropy"]) / 7 / 2.0)
    assert s["reward_initial"] == 0.1 and s["reward_final"] == pytest.approx(0.5)
    assert (s["val_pass1_initial"], s["val_pass1_final"], s["val_passG_final"], s["val_G"]) == (
        0.25,
        0.5,
        0.75,
        4,
    )
    assert (s["coef_name"], s["coef_final"], s["wall_min"]) == ("zeta", 0.004, 2.0)
    assert s["distinct_correct_final"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="policy/entropy"):
        lab.summarize_run({"rollout/reward_mean": [0.0]})


def test_table_claim_and_sequential_hand_values():
    rows = [
        {"method": "grpo", "seed": 0, "reward_final": 0.7, "entropy_change_pct": -60.0},
        {"method": "grpo", "seed": 1, "reward_final": 0.5, "entropy_change_pct": -40.0},
        {"method": "repo_r", "seed": 0, "reward_final": 0.66, "entropy_change_pct": 10.0},
        {"method": "repo_r", "seed": 1, "reward_final": 0.6, "entropy_change_pct": -16.0},
    ]
    table = lab.method_table(
        rows, (("reward_final", "final reward"), ("entropy_change_pct", "entropy change %"))
    )
    assert "| grpo | 2 | 0.60 ± 0.14 | -50.0 ± 14.1 |" in table
    claim = lab.holds_entropy(rows, "repo_r", 15.0, "grpo", 0.05)
    assert [s["in_band"] for s in claim["seeds"]] == [True, False]  # seed 1 ends at -16%
    assert claim["reward"] == pytest.approx(0.63) and claim["baseline_reward"] == pytest.approx(0.6)
    assert claim["reward_ok"] and not claim["in_band"] and not claim["holds"]
    assert lab.holds_entropy(rows[:3], "repo_r", 15.0, "grpo", 0.05)["holds"]
    low = [dict(r, reward_final=0.5) if r["method"] == "repo_r" else r for r in rows[:3]]
    assert not lab.holds_entropy(low, "repo_r", 15.0, "grpo", 0.05)["reward_ok"]  # 0.5 < 0.6 - 0.05
    seq = lab.sequential_summary([0.1, 0.3, 0.6, 0.8], threshold=0.5)
    assert seq["reward_auc"] == pytest.approx(0.45) and seq["iters_to_threshold"] == 2.0
    assert math.isnan(lab.sequential_summary([0.1, 0.2], threshold=0.5)["iters_to_threshold"])


def test_compare_methods_smoke_on_the_tiny_model(tmp_path, capsys):
    tool = load_tool("compare_methods")
    argv = [
        "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--methods", "grpo", "repo_r", "--seeds", "0", "1",
        "--set", "data.init_args.batches_per_epoch=2",
        "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    first = tool.main(argv)
    assert [(r["method"], r["seed"]) for r in first["rows"]] == [
        ("grpo", 0),
        ("grpo", 1),
        ("repo_r", 0),
        ("repo_r", 1),
    ]
    with open(tmp_path / "out" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"method", "seed", "entropy_change_pct", "reward_final"} <= set(rows[0])
    assert all(r["iterations"] == "2" for r in rows)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| grpo | 2 |" in table and "| repo_r | 2 |" in table and "tools/compare_methods.py" in table
    for png in ("entropy.png", "reward.png", "pair_grpo_repo_r.png", "summary.png", "tradeoff.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # checkpoints are cleaned up
    capsys.readouterr()
    # a second invocation trains nothing: every run is cached and gives the same rows
    second = tool.main(argv)
    out = capsys.readouterr().out
    assert out.count("cached") == 4 and "training" not in out
    assert second["rows"] == first["rows"]
    # --cached-only reports what has finished and trains nothing (seed 2 never ran)
    partial = tool.main([*argv[:8], "2", *argv[8:], "--cached-only"])
    out = capsys.readouterr().out
    assert "training" not in out and out.count("left out (--cached-only)") == 2
    assert partial["rows"] == first["rows"]


def test_sequential_continues_on_task_b_with_its_own_shorter_validation(tmp_path):
    # the lab validates every 2 iterations; task B runs 1 iteration, so its validation interval must follow
    tool = load_tool("compare_methods")
    tiny = str(ROOT / "configs" / "tiny_cpu.yaml")
    result = tool.main([
        "--config", tiny, "--methods", "grpo", "--seeds", "0",
        "--set", "data.init_args.batches_per_epoch=2", "--set", "trainer.val_check_interval=2",
        "--then", tiny, "--then-iterations", "1", "--threshold", "0.0",
        "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"),
    ])  # fmt: skip
    seq = result["sequential"]
    assert [(r["method"], r["seed"]) for r in seq] == [("grpo", 0), ("grpo_from_base", 0)]
    assert all(r["iters_to_threshold"] == 0.0 and r["reached"] == 1.0 for r in seq)
    assert "Sequential learning" in (tmp_path / "out" / "table.md").read_text()


def test_tradeoff_reads_several_labs_renames_and_keeps_the_first_row(tmp_path, capsys):
    tool = load_tool("compare_methods")
    plots = load_tool("lab_plots")
    tool.write_csv(tmp_path / "a.csv", [
        {"method": "repo_r", "seed": 0, "reward_final": 0.5, "entropy_change_pct": 2.0},
        {"method": "repo_r", "seed": 1, "reward_final": 0.4, "entropy_change_pct": -4.0},
        {"method": "grpo", "seed": 0, "reward_final": 0.6, "entropy_change_pct": -70.0},
    ])  # fmt: skip
    tool.write_csv(tmp_path / "b.csv", [
        {"method": "grpo", "seed": 0, "reward_final": 0.9, "entropy_change_pct": -99.0},  # a duplicate: not used
        {"method": "repo_r[zeta_max=0.2]", "seed": 0, "reward_final": 0.58, "entropy_change_pct": -38.0},
    ])  # fmt: skip
    out = tmp_path / "t.png"
    plots.main(["tradeoff", "--csv", str(tmp_path / "a.csv"), "--csv", str(tmp_path / "b.csv"),
                "--methods", "grpo", "repo_r[zeta_max=0.2]", "repo_r[zeta_max=0.5]",
                "--rename", "repo_r=repo_r[zeta_max=0.5]", "--out", str(out)])  # fmt: skip
    table = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| grpo",
        "| repo_r[zeta_max=0.2]",
        "| repo_r[zeta_max=0.5]",
    ]
    assert table[2].startswith("| grpo | 1 | 0.60 |")  # a.csv's row, not b.csv's duplicate
    assert table[4].startswith("| repo_r[zeta_max=0.5] | 2 | 0.45 ± 0.07 |")  # (0.5 + 0.4) / 2, std 0.0707
    assert out.stat().st_size > 1000
    with pytest.raises(SystemExit, match="no rows"):
        plots.main(["tradeoff", "--csv", str(tmp_path / "a.csv"), "--methods", "dapo", "--out", str(out)])


def test_init_weights_starts_from_a_checkpoint(tmp_path):
    from epr_lightning.cli import build_cli

    base = ["--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.init_args.batches_per_epoch", "1"]  # fmt: skip
    trained = build_cli(["fit", *base])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    warm = build_cli([*base, f"--model.init_args.init_weights={ckpt}"], run=False)
    warm.model.configure_model()
    for (name, a), b in zip(
        trained.model.policy.state_dict().items(), warm.model.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    fresh = build_cli(base, run=False)
    fresh.model.configure_model()
    assert not all(
        torch.equal(a, b)
        for a, b in zip(
            trained.model.policy.state_dict().values(), fresh.model.policy.state_dict().values(), strict=True
        )
    )
    with pytest.raises((FileNotFoundError, ValueError), match="init_weights .* is not a checkpoint file"):
        build_cli([*base, "--model.init_args.init_weights=/nope.ckpt"], run=False)
