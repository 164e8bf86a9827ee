"""tools/compare_methods.py on the tiny model: 2 methods × 2 seeds × 2 iterations (CSV, table, cache), and the
lab arithmetic of tools/lab.py on hand-made series."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import subprocess
import types

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
        "policy/shaping/neg_ratio": [1.0, 0.9, 0.5],
    }
    s = lab.summarize_run(series, wall_s=120.0)
    # what the transform did to wrong answers' advantages, averaged over the iterations; NaN without a series
    assert s["shaping_neg_ratio"] == pytest.approx(0.8) and math.isnan(s["shaping_neg_zeroed_frac"])
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


def test_compare_methods_smoke_on_the_tiny_model(tmp_path, capsys, monkeypatch):
    tool = load_tool("compare_methods")
    monkeypatch.setattr(
        tool, "code_version", lambda: "c0de"
    )  # not the working tree's, which may change meanwhile
    argv = [
        "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--methods", "grpo", "repo_r", "--seeds", "0", "1",
        "--set", "data.init_args.batches_per_epoch=2",
        "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"), "--pairs", "grpo:repo_r",
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
    # the per-prompt columns come from the runs' validation records (4 samples per prompt: pass@k up to 4)
    assert {"pass_at_1", "pass_at_4", "coverage_rare", "entropy_answer"} <= set(rows[0])
    assert all(0.0 <= float(r["pass_at_1"]) <= float(r["pass_at_4"]) <= 1.0 for r in rows)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| grpo → repo_r | 2 |" in table and "Pre-registered claims" in table
    assert "Seed noise" in table and ("| effect on" in table or "no effect distinguishable" in table)
    assert "| grpo | 2 |" in table and "| repo_r | 2 |" in table and "tools/compare_methods.py" in table
    for png in ("entropy.png", "reward.png", "pair_grpo_repo_r.png", "summary.png", "tradeoff.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # checkpoints are cleaned up
    capsys.readouterr()
    # a second invocation trains nothing: every run is cached and gives the same rows
    second = tool.main([*argv, "--no-plots"])
    out = capsys.readouterr().out
    assert out.count("cached") == 4 and "training" not in out
    assert second["rows"] == first["rows"]
    # --cached-only reports what has finished and trains nothing (seed 2 never ran)
    partial_out = tmp_path / "partial"
    partial = tool.main([*argv[:8], "2", *argv[8:], "--cached-only", "--no-plots", "--out", str(partial_out)])
    out = capsys.readouterr().out
    assert "training" not in out and out.count("left out (--cached-only)") == 2
    assert partial["rows"] == first["rows"]
    assert (partial_out / "runs.csv").is_file() and not list(partial_out.glob("*.png"))  # --no-plots


def test_sequential_continues_on_task_b_with_its_own_shorter_validation(tmp_path, monkeypatch):
    # the lab validates every 2 iterations; task B runs 1 iteration, so its validation interval must follow
    tool = load_tool("compare_methods")
    monkeypatch.setattr(
        tool, "code_version", lambda: "c0de"
    )  # not the working tree's, which may change meanwhile
    tiny = str(ROOT / "configs" / "tiny_cpu.yaml")
    argv = [
        "--config", tiny, "--methods", "grpo", "--seeds", "0",
        "--set", "data.init_args.batches_per_epoch=2", "--set", "trainer.val_check_interval=2",
        "--then", tiny, "--then-iterations", "1", "--threshold", "0.5", "--no-plots",
        "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    result = tool.main(argv)
    seq = result["sequential"]
    assert [(r["method"], r["seed"]) for r in seq] == [("grpo", 0), ("grpo_from_base", 0)]
    # the tiny random model answers no sum right: reward 0 on B's one iteration, so 0.5 is never reached
    assert all(r["reward_first"] == 0.0 and r["reached"] == 0.0 for r in seq)
    assert all(math.isnan(r["iters_to_threshold"]) for r in seq)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "Sequential learning" in table
    # B's validation pass@1 before its first update and at its end (the sequential claims read them); the tiny
    # model answers nothing right, so the premise (d) cannot hold: 0 after A is not below 0 from the start
    assert all(r["val_pass1_b_start"] == 0.0 and r["val_pass1_b_end"] == 0.0 for r in seq)
    premise = next(line for line in table.splitlines() if line.startswith("- (d) the premise, grpo after A"))
    assert premise.endswith("at B's start: 0.000 (0.000) vs 0.000 (0.000): **does not hold**")
    # --threshold is read against each B run's own reward series: hand-made series in the cache (the key does
    # not hold the threshold, so the rerun trains nothing) give hand-computed iteration counts
    b_series = {"then/grpo_s0": [0.1, 0.3, 0.6, 0.8], "then/grpo_from_base_s0": [0.2, 0.25, 0.3, 0.45]}
    for cached in (tmp_path / "runs" / "cache").glob("*.json"):
        res = json.loads(cached.read_text())
        if res["label"] in b_series:
            res["series"][lab.REWARD] = b_series[res["label"]]
            res["series"][lab.ENTROPY] = [1.0] * 4
            cached.write_text(json.dumps(res))
    seq = tool.main([*argv[: argv.index("0.5")], "0.3", *argv[argv.index("0.5") + 1 :]])["sequential"]
    # first reward >= 0.3: iteration 1 (0.3) after the lab run, iteration 2 (0.3) from the untrained model
    assert [(r["iters_to_threshold"], r["reached"]) for r in seq] == [(1.0, 1.0), (2.0, 1.0)]
    assert [r["reward_auc"] for r in seq] == [
        pytest.approx(0.45),
        pytest.approx(0.3),
    ]  # (0.1+.3+.6+.8)/4, 1.2/4
    seq = tool.main([*argv[: argv.index("0.5")], "0.22", *argv[argv.index("0.5") + 1 :]])["sequential"]
    # 0.3 >= 0.22 after 0.1; 0.25 >= 0.22 after 0.2
    assert [r["iters_to_threshold"] for r in seq] == [1.0, 1.0]
    seq = tool.main([*argv[: argv.index("0.5")], "0.7", *argv[argv.index("0.5") + 1 :]])["sequential"]
    assert seq[0]["iters_to_threshold"] == 3.0 and math.isnan(seq[1]["iters_to_threshold"])


def _cached_labels(out: str) -> dict[str, str]:
    """label → "cached" | "left out" from --cached-only progress lines."""
    found = {}
    for line in out.splitlines():
        if m := re.match(r"\[\d+/\d+\] (\S+): (cached|not finished yet, left out)", line):
            found[m[1]] = m[2].split(",")[0].replace("not finished yet", "left out")
    return found


def test_lab_resumes_a_killed_run_accumulates_its_wall_time_and_keys_the_cache(tmp_path, monkeypatch, capsys):
    tool = load_tool("compare_methods")
    config = tmp_path / "tiny.yaml"
    config.write_text((ROOT / "configs" / "tiny_cpu.yaml").read_text())
    argv = ["--config", str(config), "--methods", "grpo", "--seeds", "0",
            "--set", "data.init_args.batches_per_epoch=2",
            "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"), "--keep-checkpoints",
            "--no-plots"]  # fmt: skip
    # a clock of our own: attempt 1 starts at 1000 and is killed at 1100, its last.ckpt written at 1060; attempt 2
    # runs from 2000 to 2030. The run's wall time is 60 (to the checkpoint) + 30 = 90 s, not the last attempt's 30.
    clock = {"now": 1000.0}
    monkeypatch.setattr(
        tool, "code_version", lambda: "c0de"
    )  # not the working tree's, which may change meanwhile
    monkeypatch.setattr(tool, "time", types.SimpleNamespace(time=lambda: clock["now"]))
    real_run, commands = subprocess.run, []

    def killed_after_one_iteration(cmd, **kwargs):
        if cmd[1:3] != ["-m", "epr_lightning"]:  # git
            return real_run(cmd, **kwargs)
        commands.append(cmd)
        if len(commands) == 1:  # stops after iteration 1 of 2 (1 optimizer step each) and reports a kill
            real_run([*cmd, "--trainer.max_steps=1"], **kwargs)
            last = next((tmp_path / "runs").rglob("last.ckpt"))
            os.utime(last, (1060.0, 1060.0))
            clock["now"] = 1100.0
            return subprocess.CompletedProcess(cmd, -9)
        proc = real_run(cmd, **kwargs)
        clock["now"] = 2030.0
        return proc

    monkeypatch.setattr(tool.subprocess, "run", killed_after_one_iteration)
    with pytest.raises(SystemExit, match="failed"):
        tool.main(argv)
    assert "--ckpt_path" not in commands[0]
    clock["now"] = 2000.0
    rows = tool.main(argv)["rows"]
    out = capsys.readouterr().out
    assert "grpo_s0: training (resuming)" in out
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    assert commands[1][-2:] == ["--ckpt_path", str(last)]  # from where it was killed, not from scratch
    assert rows[0]["iterations"] == 2.0 and rows[0]["wall_min"] == pytest.approx(90.0 / 60.0)
    monkeypatch.setattr(tool.subprocess, "run", real_run)

    # the cache: the same command is cached; another --set, a changed config file or other code are not
    def cached_only(*extra: str, **kwargs) -> dict[str, str]:
        tool.main([*argv, "--cached-only", *extra])
        return _cached_labels(capsys.readouterr().out)

    assert cached_only() == {"grpo_s0": "cached"}
    assert cached_only("--set", "model.init_args.sampling.temperature=0.5") == {"grpo_s0": "left out"}
    config.write_text(config.read_text() + "# a comment changes the config's content\n")
    assert cached_only() == {"grpo_s0": "left out"}
    config.write_text((ROOT / "configs" / "tiny_cpu.yaml").read_text())
    assert cached_only() == {"grpo_s0": "cached"}
    monkeypatch.setattr(tool, "code_version", lambda: "c0de+dirty12345678")
    assert cached_only() == {"grpo_s0": "left out"}
    monkeypatch.setattr(tool, "code_version", lambda: "c0de")
    # --vary: one run per value, each its own label and cache key, with its override on the command line
    assert cached_only("--vary", "model.init_args.sampling.temperature=1.0,0.5") == {
        "grpo[temperature1.0]_s0": "left out",
        "grpo[temperature0.5]_s0": "left out",
    }
    runs = []
    monkeypatch.setattr(
        tool.Lab, "run", lambda self, label, key, cli, total, index: runs.append((label, key, cli))
    )
    # a sweep's values pair by their run names, e.g. each temperature against 1.0
    tool.main([*argv, "--vary", "model.init_args.sampling.temperature=1.0,0.5",
               "--pairs", "grpo[temperature=1.0]:grpo[temperature=0.5]"])  # fmt: skip
    assert [label for label, _, _ in runs] == ["grpo[temperature1.0]_s0", "grpo[temperature0.5]_s0"]
    assert [cli[-1] for _, _, cli in runs] == [
        "--model.init_args.sampling.temperature=1.0",
        "--model.init_args.sampling.temperature=0.5",
    ]
    keys = {key for _, key, _ in runs}
    assert len(keys) == 2 and not any((tmp_path / "runs" / "cache" / f"{k}.json").is_file() for k in keys)


def test_code_version_is_the_last_code_commit_plus_a_hash_of_uncommitted_code_changes(monkeypatch):
    tool = load_tool("compare_methods")
    answers = {"log": "abc1234", "diff": ""}
    monkeypatch.setattr(tool, "git", lambda *args: answers[args[0]])
    assert tool.code_version() == "abc1234"
    answers["diff"] = "+x = 1"
    dirty = tool.code_version()
    assert dirty == "abc1234+dirty" + hashlib.sha256(b"+x = 1").hexdigest()[:8]
    answers["diff"] = "+x = 2"
    assert tool.code_version() != dirty  # another uncommitted change, another key


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
