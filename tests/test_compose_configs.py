"""Configs compose without surprises: every stack the README documents keeps the monitoring callbacks (a later
file's ``trainer.callbacks`` cannot drop them) and a scale config's own generation budget wins over the demo's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from epr_lightning.callbacks import (
    DiversityMonitor,
    EntropyDynamics,
    EntropyTracker,
    GracefulStop,
    PrecisionAudit,
    SampleLogger,
    ValidationRecords,
)
from epr_lightning.checkpointing import RolloutCheckpoint
from epr_lightning.cli import build_cli, main

ROOT = Path(__file__).resolve().parents[1]
C = ROOT / "configs"
MONITORS = {EntropyTracker, DiversityMonitor, PrecisionAudit, SampleLogger, ValidationRecords}
MONITOR_PATHS = [
    f"epr_lightning.callbacks.{t.__name__}"
    for t in (EntropyTracker, DiversityMonitor, PrecisionAudit, SampleLogger, ValidationRecords)
]
SCALES = sorted((C / "scale").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*/config.yaml"))

# the stacks the README documents (every method, task and scale file after the demo; the full 4-file stack;
# the neutral base under each example)
STACKS = (
    [[C / "demo.yaml"]]
    + [[C / "demo.yaml", m] for m in sorted((C / "method").glob("*.yaml"))]
    + [[C / "demo.yaml", t] for t in sorted((C / "task").glob("*.yaml"))]
    + [[C / "demo.yaml", s] for s in SCALES]
    + [[C / "demo.yaml", C / "task/countdown.yaml", C / "method/repo_r.yaml", s] for s in SCALES]
    + [[C / "base.yaml", e] for e in EXAMPLES]
    + [[C / "base.yaml", e, C / "method/repo_r.yaml"] for e in EXAMPLES]
)


def scale_budget(files: list[Path]) -> int | None:
    for f in reversed(files):
        sampling = (yaml.safe_load(f.read_text()).get("model") or {}).get("init_args", {}).get(
            "sampling"
        ) or {}
        if "max_new_tokens" in sampling:
            return sampling["max_new_tokens"]
    return None


def compose(files: list[Path], *extra: str):
    args = [a for f in files for a in ("--config", str(f))]
    return build_cli([*args, "--trainer.logger", "false", *extra], run=False)


@pytest.mark.parametrize("files", STACKS, ids=lambda fs: "+".join(str(f.relative_to(ROOT)) for f in fs))
def test_documented_stacks_keep_the_monitors_and_the_last_budget(files: list[Path], monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # example configs name their files relative to the repository root
    cli = compose(files)
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert MONITORS <= set(kinds), kinds
    assert all(kinds.count(t) == 1 for t in MONITORS)
    assert sum(issubclass(t, ModelCheckpoint) for t in kinds) == 1
    assert cli.model.sampling.max_new_tokens == scale_budget(files)


@pytest.mark.parametrize("scale", SCALES, ids=lambda p: p.name)
def test_print_config_of_demo_plus_scale_lists_the_monitors_and_the_scale_budget(scale: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(C / "demo.yaml"), "--config", str(scale), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [m["class_path"] for m in printed["monitors"]] == MONITOR_PATHS
    sampling = printed["model"]["init_args"]["sampling"]
    assert sampling["max_new_tokens"] == scale_budget([scale]) >= 1024
    assert sampling["temperature"] == 1.0  # the scale file's, not the demo's 0.7


def test_demo_callbacks_are_unchanged() -> None:
    cli = compose([C / "demo.yaml"])
    by_type = {type(c): c for c in cli.trainer.callbacks if type(c).__module__.startswith("epr_lightning")}
    assert set(by_type) == MONITORS | {RolloutCheckpoint, GracefulStop}
    assert by_type[RolloutCheckpoint].every_n_iterations == 5 and by_type[SampleLogger].every_n == 5
    assert (cli.model.sampling.max_new_tokens, cli.model.sampling.temperature) == (24, 0.7)


def test_monitors_can_be_turned_off_extended_and_are_not_duplicated(tmp_path: Path) -> None:
    off = compose([C / "demo.yaml"], "--monitors", "[]")
    assert not MONITORS & {type(c) for c in off.trainer.callbacks}
    more = tmp_path / "more.yaml"
    more.write_text("monitors+:\n  - class_path: epr_lightning.callbacks.EntropyDynamics\n")
    kinds = [type(c) for c in compose([C / "demo.yaml", more]).trainer.callbacks]
    assert MONITORS | {EntropyDynamics} <= set(kinds)
    # a config that lists a monitor in trainer.callbacks itself (with its own settings) gets no second one
    own = tmp_path / "own.yaml"
    own.write_text(
        "trainer:\n  callbacks:\n    - class_path: epr_lightning.callbacks.SampleLogger\n"
        "      init_args: {every_n: 2}\n"
    )
    loggers = [c for c in compose([C / "demo.yaml", own]).trainer.callbacks if isinstance(c, SampleLogger)]
    assert [c.every_n for c in loggers] == [2]
