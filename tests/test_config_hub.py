"""Shipped configs by short name (``--config demo``), ``epr-lightning configs``, and own files taking precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from epr_lightning import cli
from epr_lightning.config_hub import (
    config_root,
    configs_main,
    resolve_config,
    resolve_config_args,
    shipped_configs,
    shipped_data_file,
    short_name,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_yaml_has_a_short_name():
    on_disk = {
        p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").rglob("*.yaml")
    }
    assert set(shipped_configs()) == on_disk
    assert config_root() == ROOT / "configs"  # a source tree: the repository's folder


@pytest.mark.parametrize("value", ["demo", "demo.yaml", "configs/demo.yaml", "./configs/demo.yml"])
def test_short_names_resolve_to_the_shipped_file_from_anywhere(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert short_name(value) == "demo"
    assert Path(resolve_config(value)) == ROOT / "configs" / "demo.yaml"
    assert Path(resolve_config("method/repo_r")) == ROOT / "configs" / "method" / "repo_r.yaml"


def test_an_existing_file_wins_over_the_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("seed_everything: 3\n")
    assert resolve_config("configs/demo.yaml") == "configs/demo.yaml"
    assert Path(resolve_config("demo")) == ROOT / "configs" / "demo.yaml"  # a bare name is not that file


def test_inline_yaml_is_left_alone_and_unknown_names_say_what_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("{seed_everything: 1}") == "{seed_everything: 1}"
    with pytest.raises(FileNotFoundError, match=r"'method/repo_rr'.*did you mean method/repo_r"):
        resolve_config("method/repo_rr")
    missing = str(tmp_path / "demo.yaml")  # an absolute path is never a short name
    assert resolve_config(missing) == missing


def test_every_config_flag_form_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo, grpo = str(ROOT / "configs" / "demo.yaml"), str(ROOT / "configs" / "method" / "grpo.yaml")
    argv = ["fit", "--config", "demo", "-c", "method/grpo", "--config=demo", "--trainer.max_steps", "1"]
    assert resolve_config_args(argv) == [
        "fit", "--config", demo, "-c", grpo, f"--config={demo}", "--trainer.max_steps", "1",
    ]  # fmt: skip


def test_configs_command_lists_and_prints(capsys):
    assert configs_main([]) == 0
    listing = capsys.readouterr().out.split()
    assert all(name in listing for name in shipped_configs())
    assert configs_main(["method/repo_r"]) == 0
    assert capsys.readouterr().out == (ROOT / "configs" / "method" / "repo_r.yaml").read_text()
    assert configs_main(["nope"]) == 2
    assert "no shipped config" in capsys.readouterr().err


def test_the_cli_takes_short_names_from_an_empty_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", "tiny_cpu", "--config", "method/grpo", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "epr_lightning.models.TinyModel" in printed and "epr_lightning.objectives.GRPOAdvantage" in printed
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["configs"])
    assert exit_info.value.code == 0 and "tiny_cpu" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", "demoo"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("epr-lightning: error: ") and "'demoo'" in err and "did you mean demo" in err


def test_a_data_file_a_shipped_config_names_is_found_outside_a_clone(tmp_path, monkeypatch):
    from epr_lightning.cli import build_cli

    monkeypatch.chdir(tmp_path)
    named = "configs/task/example_prompts.jsonl"
    assert Path(shipped_data_file(named)) == ROOT / named  # no such file here: the shipped copy
    assert shipped_data_file("configs/task/nope.jsonl") == "configs/task/nope.jsonl"  # the error names it
    args = ["--config", "tiny_cpu", "--config", "task/jsonl_example", "--trainer.logger", "false"]
    task = build_cli(resolve_config_args(args), run=False).datamodule.task
    assert task.examples("train") and task.examples("val")
    (tmp_path / "configs" / "task").mkdir(parents=True)
    (tmp_path / named).write_text('{"id": "mine", "prompt": "2 + 2?", "answer": "4"}\n')
    assert shipped_data_file(named) == named  # your own file at that path wins
