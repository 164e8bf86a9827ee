"""configs/task/toolworld*.yaml compose with every method YAML, and the tiny variant trains end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from epr_lightning.cli import build_cli
from epr_lightning.envs import EnvironmentTask, ToolWorld
from epr_lightning.envs.toolworld.apps import APPS

ROOT = Path(__file__).resolve().parents[1]
C = ROOT / "configs"
METHODS = sorted((C / "method").glob("*.yaml"))


def compose(*files: Path, extra: tuple[str, ...] = ()):
    args = [a for f in files for a in ("--config", str(f))]
    return build_cli([*args, "--trainer.logger", "false", *extra], run=False)


@pytest.mark.parametrize("method", METHODS, ids=lambda p: p.stem)
@pytest.mark.parametrize(
    "base, task", [("tiny_cpu.yaml", "toolworld_tiny.yaml"), ("demo.yaml", "toolworld.yaml")]
)
def test_toolworld_composes_with_every_method(method: Path, base: str, task: str) -> None:
    cli = compose(C / base, C / "task" / task, method)
    t = cli.datamodule.task
    assert isinstance(t, EnvironmentTask) and isinstance(t.environment, ToolWorld)
    assert cli.model.sampling.max_new_tokens == (12 if task == "toolworld_tiny.yaml" else 128)
    assert t.max_turns == (3 if task == "toolworld_tiny.yaml" else 8)


def test_full_toolworld_config_values() -> None:
    env = compose(C / "demo.yaml", C / "task/toolworld.yaml").datamodule.task.environment
    assert env.difficulties == [1, 2, 3, 4, 5] and env.val_split == "dev" and env.num_val == 100
    # every @tool method of every app, however many the apps have
    every_tool = {
        f"{app}_{attr}" for app, cls in APPS.items() for attr in dir(cls)
        if getattr(getattr(cls, attr), "__is_tool__", False)
    }  # fmt: skip
    assert every_tool and {t["function"]["name"] for t in env.tools()} == every_tool


def test_tiny_toolworld_trains_with_a_method_yaml(tmp_path: Path) -> None:
    cli = compose(
        C / "tiny_cpu.yaml", C / "task/toolworld_tiny.yaml", C / "method/repo_r.yaml",
        extra=("--trainer.default_root_dir", str(tmp_path), "--trainer.limit_val_batches", "0",
               "--trainer.callbacks", "[]", "--data.init_args.batches_per_epoch", "1",
               "--data.init_args.prompts_per_step", "2", "--trainer.enable_progress_bar", "false"),
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    assert cli.model.iteration == 1
    assert float(metrics["episode/turns"]) >= 1 and "episode/success/d1" in metrics
    ended = sum(
        float(metrics[f"episode/ended_by/{c}"])
        for c in ("final_answer", "turn_limit", "token_budget", "env_error")
    )
    assert ended == 2 * cli.model.num_generations
