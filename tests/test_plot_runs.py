"""tools/plot_runs.py on two tiny TensorBoard runs written with SummaryWriter."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import load_tool
from torch.utils.tensorboard import SummaryWriter


def write_run(run_dir: Path, decay: float, with_val: bool = True, version: str = "version_0") -> None:
    w = SummaryWriter(str(run_dir / "tb" / version))
    for step in range(6):
        w.add_scalar("policy/entropy", 2.0 * math.exp(-decay * step), step)
        w.add_scalar("rollout/reward_mean", 0.1 * step, step)
        if with_val and step % 2 == 1:
            w.add_scalar("val/pass@1", 0.05 * step, step)
            w.add_scalar("val/pass@4", 0.1 * step, step)
    w.close()


def test_plots_two_runs(tmp_path, capsys):
    tool = load_tool("plot_runs")
    write_run(tmp_path / "grpo", decay=0.5)
    write_run(tmp_path / "repo", decay=0.05)
    out = tmp_path / "plots"
    assert (
        tool.main([str(tmp_path / "grpo"), str(tmp_path / "repo"), "--out", str(out), "--smooth", "0.5"]) == 0
    )
    names = {
        "entropy.png",
        "reward.png",
        "val_pass_at_k.png",
        "reward_vs_entropy.png",
        "val_pass1_vs_entropy.png",
    }
    assert {p.name for p in out.iterdir()} == names
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 1000


def test_loaded_series_and_helpers(tmp_path):
    tool = load_tool("plot_runs")
    write_run(tmp_path / "run", decay=0.5)
    write_run(tmp_path / "run", decay=0.0, version="version_1")  # a resumed version: later file wins per step
    scalars = tool.load_scalars(tmp_path / "run")
    steps, values = scalars["policy/entropy"]
    assert steps == list(range(6)) and values == pytest.approx([2.0] * 6)
    assert scalars["val/pass@4"][0] == [1, 3, 5]
    assert tool.value_at(([0, 10, 20], [1.0, 2.0, 3.0]), 14) == 2.0
    assert tool.ema([1.0, 3.0], 0.5) == [1.0, 2.0]
    assert tool.run_labels([tmp_path / "a" / "x", tmp_path / "b" / "x", tmp_path / "c"]) == [
        "a/x",
        "b/x",
        "c",
    ]


def test_missing_tags_are_skipped_with_a_message(tmp_path, capsys):
    tool = load_tool("plot_runs")
    write_run(tmp_path / "noval", decay=0.3, with_val=False)
    out = tmp_path / "plots"
    assert tool.main([str(tmp_path / "noval"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skip val_pass_at_k.png" in printed and "skip val_pass1_vs_entropy.png" in printed
    assert {p.name for p in out.iterdir()} == {"entropy.png", "reward.png", "reward_vs_entropy.png"}


def test_dir_without_event_files_is_a_clear_error(tmp_path, capsys):
    tool = load_tool("plot_runs")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert tool.main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert (
        f"no TensorBoard event files (events.out.tfevents.*) under run dir {empty}" in capsys.readouterr().err
    )
    assert tool.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
