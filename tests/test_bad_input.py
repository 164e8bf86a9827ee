"""Bad input end to end through the CLI: each case either fails with one clear line naming the field/file/line
(exit code 2) or is skipped/zeroed, counted and logged while the run continues. The README's bad-input table
points at these tests."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import torch

from epr_lightning.cli import build_cli, main
from epr_lightning.tasks.base import Example, RewardFunction

ROOT = Path(__file__).resolve().parents[1]


def base_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.batches_per_epoch", "1",
        *extra,
    ]  # fmt: skip


def run_main(tmp_path: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    """Run ``epr-lightning fit`` in-process; returns (exit code, stderr)."""
    code = 0
    try:
        main(["fit", *base_args(tmp_path, *extra)])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, exactly one ``epr-lightning: error:`` line containing every needle, no traceback."""
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("epr-lightning: error:")]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def jsonl_task(path: Path, **init: str) -> list[str]:
    args = [
        "--data.init_args.task",
        "epr_lightning.tasks.DatasetTask",
        "--data.init_args.task.init_args.data_files",
        str(path),
    ]
    for key, value in init.items():
        args += [f"--data.init_args.task.init_args.{key}", value]
    return args


GOOD = '{"prompt": "What is 1 + 1?", "answer": "2"}\n'


# ---------------------------------------------------------------------------------------------- data files
def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(GOOD * 2 + '{"prompt": "oops", "answer": \n' + GOOD)
    code, err = run_main(tmp_path, capsys, *jsonl_task(data))
    one_line_error(code, err, f"{data}:3", "malformed JSON")


def test_missing_field_names_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "missing.jsonl"
    data.write_text(GOOD + '{"question": "What is 2 + 2?", "answer": "4"}\n')
    code, err = run_main(tmp_path, capsys, *jsonl_task(data))
    one_line_error(code, err, f"{data} row 1", "column 'prompt' (the prompt_column) is empty")


def test_empty_prompt_errors_or_is_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_text(GOOD * 4 + '{"prompt": "   ", "answer": "1"}\n' + GOOD * 4)
    code, err = run_main(tmp_path, capsys, *jsonl_task(data))
    one_line_error(code, err, f"{data} row 4", "the prompt is empty")

    cli = build_cli(base_args(tmp_path, *jsonl_task(data, on_empty_prompt="skip")), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.datamodule.task.skipped_empty == 1
    assert len(cli.datamodule.task.examples("train")) == 8
    assert cli.model.iteration == 1


def test_long_prompts_are_skipped_and_counted_or_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "long.jsonl"
    # 4 prompts per step, no shuffling: the first batch is [short, long, short, long]
    long_prompt = '{"prompt": "' + "What is 1 + 1? " * 20 + '", "answer": "2"}\n'
    data.write_text((GOOD + long_prompt) * 4)
    limit = ["--model.init_args.max_prompt_tokens", "100", "--data.init_args.shuffle", "false"]
    cli = build_cli(base_args(tmp_path, *jsonl_task(data), *limit), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.skipped_prompts == 2
    assert float(cli.trainer.callback_metrics["rollout/skipped_prompts"]) == 2.0

    code, err = run_main(
        tmp_path, capsys, *jsonl_task(data), *limit, "--model.init_args.long_prompts", "error"
    )
    one_line_error(code, err, "example 'train:1'", "> model.max_prompt_tokens=100")


def test_prompt_longer_than_the_model_context_is_caught_without_max_prompt_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "huge.jsonl"
    data.write_text('{"prompt": "' + "x" * 600 + '", "answer": "1"}\n' + GOOD * 3)  # tiny model context: 512
    code, err = run_main(
        tmp_path,
        capsys,
        *jsonl_task(data),
        "--data.init_args.shuffle",
        "false",
        "--model.init_args.long_prompts",
        "error",
    )
    one_line_error(code, err, "example 'train:0'", "the model context 512 - sampling.max_new_tokens=12 = 500")


# ---------------------------------------------------------------------------------------------- config values
def only_line(code: int, err: str, *needles: str) -> str:
    """Exit code 2 and stderr is exactly one ``epr-lightning: error:`` line containing every needle."""
    assert code == 2, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("epr-lightning: error: "), err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_unknown_class_path_is_rejected_at_parse_time(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = run_main(tmp_path, capsys, "--model.init_args.policy", "epr_lightning.models.NoSuchModel")
    line = only_line(code, err, "model.policy:", "'epr_lightning.models.NoSuchModel'", "cannot be imported")
    assert line == (
        "epr-lightning: error: model.policy: class_path 'epr_lightning.models.NoSuchModel' cannot be imported "
        "(module 'epr_lightning.models' has no attribute 'NoSuchModel')"
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model.init_args.no_such_key", "3"], "model.no_such_key: unknown key 'no_such_key'"),
        (["--trainer.no_such_key", "3"], "trainer.no_such_key: unknown key"),
        (["--model.init_args.reward_timeout_s", "abc"], "model.reward_timeout_s: expected float, got 'abc'"),
        (["--trainer.max_epochs", "xyz"], "trainer.max_epochs: expected int or None, got 'xyz'"),
        (["--config", "{tmp}/no-such.yaml"], "config: File does not exist: '{tmp}/no-such.yaml'"),
        (["--config", "{tmp}/bad_key.yaml"], "model.not_a_field: unknown key 'not_a_field'"),
        (["--config", "{tmp}/bad_type.yaml"], "model.sampling.temperature: expected float, got 'hot'"),
    ],
    ids=["key", "trainer_key", "type", "trainer_type", "no_config_file", "yaml_key", "yaml_type"],
)
def test_parse_errors_are_one_line_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], expected: str
) -> None:
    (tmp_path / "bad_key.yaml").write_text("model:\n  init_args:\n    not_a_field: 3\n")
    (tmp_path / "bad_type.yaml").write_text("model:\n  init_args:\n    sampling:\n      temperature: hot\n")
    code, err = run_main(tmp_path, capsys, *(a.format(tmp=tmp_path) for a in extra))
    only_line(code, err, f"epr-lightning: error: {expected.format(tmp=tmp_path)}")


def test_epr_debug_keeps_the_full_parse_report(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPR_DEBUG", "1")
    code, err = run_main(tmp_path, capsys, "--model.init_args.policy", "epr_lightning.models.NoSuchModel")
    assert code == 2
    assert err.startswith("usage: ") and len(err.splitlines()) > 20
    assert "Problem with given class_path 'epr_lightning.models.NoSuchModel'" in err


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--model.init_args.sampling.temperature", "0"], ["sampling.temperature must be > 0"]),
        (["--model.init_args.sampling.max_new_tokens", "0"], ["sampling.max_new_tokens must be > 0"]),
        (
            [
                "--model.init_args.objective",
                '{"loss": {"class_path": "epr_lightning.objectives.PPOClipLoss", '
                '"init_args": {"eps_low": -0.1}}}',
            ],
            ["eps_low must be >= 0"],
        ),  # fmt: skip
        (
            [
                "--model.init_args.objective",
                '{"loss": {"class_path": "epr_lightning.objectives.PPOClipLoss", '
                '"init_args": {"eps_high": -0.1}}}',
            ],
            ["eps_high must be a finite number >= 0"],
        ),  # fmt: skip
        (
            ["--model.init_args.num_generations", "1"],
            ["model.num_generations=1", "GRPOAdvantage", "at least 2"],
        ),
        (
            [
                "--trainer.callbacks+=epr_lightning.callbacks.REPOZetaController",
                "--trainer.callbacks.zeta_min",
                "0.1",
                "--trainer.callbacks.zeta_max",
                "0.01",
            ],
            ["zeta_min must be < zeta_max"],
        ),  # fmt: skip
        (["--model.init_args.max_prompt_tokens", "0"], ["model.max_prompt_tokens must be >= 1"]),
        (["--model.init_args.reward_timeout_s", "0"], ["model.reward_timeout_s must be > 0"]),
        (["--data.init_args.prompts_per_step", "0"], ["data.prompts_per_step must be > 0"]),
    ],
    ids=[
        "temperature",
        "max_new_tokens",
        "eps_low",
        "eps_high",
        "group1_std",
        "zeta",
        "max_prompt",
        "timeout",
        "pps",
    ],
)
def test_invalid_values_are_rejected_with_the_field_named(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], needles: list[str]
) -> None:
    start = time.monotonic()
    code, err = run_main(tmp_path, capsys, *extra)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err[-2000:])
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").exists()  # nothing trained
    assert time.monotonic() - start < 30


def test_missing_model_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-such-model"
    code, err = run_main(
        tmp_path, capsys, "--model.init_args.policy", "epr_lightning.models.HFModel",
        "--model.init_args.policy.init_args.path", str(missing),
    )  # fmt: skip
    one_line_error(code, err, "FileNotFoundError", "policy.path", str(missing))


# ---------------------------------------------------------------------------------------------- rewards
class FlakyReward(RewardFunction):
    """Cycles through: raise, hang past the timeout, NaN, +inf, 1.0 — in call order."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, example: Example, completion: str) -> float:
        with self.lock:
            kind = self.calls % 5
            self.calls += 1
        if kind == 0:
            raise RuntimeError("reward bug")
        if kind == 1:
            time.sleep(3.0)  # abandoned after reward_timeout_s
            return 1.0
        if kind == 2:
            return math.nan
        if kind == 3:
            return math.inf
        return 1.0


def test_failing_hanging_and_nan_rewards_become_zero_and_are_counted(tmp_path: Path) -> None:
    # 4 prompts x 5 samples = 20 completions per iteration: 4 of each kind, 16 failures, 4 rewards of 1
    extra = ["--model.init_args.num_generations", "5", "--model.init_args.reward_timeout_s", "0.3"]
    extra += ["--data.init_args.batches_per_epoch", "2"]
    cli = build_cli(base_args(tmp_path, *extra), run=False)
    cli.datamodule.task._reward = FlakyReward()
    seen: list[tuple[float, float]] = []

    from lightning.pytorch.callbacks import Callback

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            m = trainer.callback_metrics
            seen.append((float(m["rollout/reward_errors"]), float(m["rollout/reward_mean"])))
            record = outputs["record"]
            assert torch.isfinite(record.rewards).all()
            assert sorted(record.rewards.tolist()) == [0.0] * 16 + [1.0] * 4

    cli.trainer.callbacks.append(Probe())
    start = time.monotonic()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.iteration == 2  # the run went on
    assert [e for e, _ in seen] == [16.0, 16.0]
    assert [r for _, r in seen] == pytest.approx([0.2, 0.2])  # 4 of 20 rewards are 1
    assert time.monotonic() - start < 60  # hanging calls were abandoned, not waited for
