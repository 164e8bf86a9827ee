"""A reward that fails says so: the first failure of each kind is shown once (type, message, file:line of the
reward's own code), and a run whose every reward (or every episode) fails N iterations in a row stops with one
line, leaving the checkpoints already written intact."""

from __future__ import annotations

import json
import math
import textwrap
import threading
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from epr_lightning.cli import build_cli, main
from epr_lightning.envs import EnvironmentTask
from epr_lightning.reward_failures import (
    SETTING,
    Failure,
    RewardFailureError,
    RewardFailureStop,
    RewardFailureWarning,
    user_frame,
)
from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.episodes import run_episodes
from epr_lightning.rollout.hf import HFEngine
from epr_lightning.tasks import Example, RewardFunction, TRLReward, score_completions
from epr_lightning.tasks.scoring import RolloutScores
from epr_lightning.testing import scripted_env
from epr_lightning.testing.scripted_env import BadEnvironment

ROOT = Path(__file__).resolve().parents[1]

REWARDS = textwrap.dedent(
    """
    def broken(prompts, completions, **kwargs):
        helper = len(completions)
        raise RuntimeError(f"bug in my reward ({helper} completions)")

    def nan_reward(prompts, completions, **kwargs):
        return [float("nan")] * len(completions)

    def hangs(prompts, completions, **kwargs):
        import time
        time.sleep(3)
    """
)


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line of ``text`` that contains ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def def_line(path: Path | str, needle: str) -> int:
    return line_of(Path(path).read_text(), needle)


@pytest.fixture()
def reward_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_failing_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "my_failing_rewards.py"


def reward_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RewardFailureWarning)]


def examples(n: int) -> list[Example]:
    return [Example(id=str(i), prompt=f"p{i}", answer=str(i)) for i in range(n)]


def scores(failed: int, total: int, first: Failure | None = None) -> RolloutScores:
    rewards = torch.zeros(total)
    return RolloutScores(rewards, rewards > 0, [None] * total, failed, {first.kind: first} if first else {})


BOOM = Failure("error:RuntimeError", "RuntimeError: boom", "my_rewards.py:3 in broken")


# --------------------------------------------------------------------------- end to end (tiny CPU model)
def test_a_trl_reward_raising_on_every_call_is_shown_once_and_stops_after_n_iterations(
    reward_file: Path, capsys: pytest.CaptureFixture
) -> None:
    tmp_path = reward_file.parent
    reward = {
        "class_path": "epr_lightning.tasks.TRLReward",
        "init_args": {"path": reward_file.name, "functions": "broken"},
    }
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("always")
        main([
            "fit", "--config", str(ROOT / "configs/tiny_cpu.yaml"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--data.init_args.batches_per_epoch", "4",
            "--data.init_args.task.init_args.reward", yaml.safe_dump(reward, default_flow_style=True).strip(),
            "--model.init_args.max_failed_reward_iterations", "2",
        ])  # fmt: skip
    assert exit_info.value.code == 2
    where = f"{reward_file}:{line_of(REWARDS, 'raise RuntimeError')} in broken"
    shown = reward_warnings(caught)
    assert len(shown) == 1, shown  # two failed iterations, one message
    assert "'error:RuntimeError' at iteration 0" in shown[0]
    assert f"RuntimeError: bug in my reward (16 completions) ({where})" in shown[0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith(
        "epr-lightning: error: RewardFailureError: every reward failed in 2 iterations in a row (iterations 0-1); "
        f"first error: RuntimeError: bug in my reward (16 completions) ({where})."
    )
    assert f"{SETTING} (now 2; null never stops)" in err[0]
    # the checkpoint of iteration 0 is intact and the streak travels with it
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["epr"]["iteration"] == 1 and ckpt["epr"]["reward_failures"]["in_row"] == 1
    assert ckpt["state_dict"]


def _env_fit(tmp_path: Path, mode: str, n: int) -> None:
    env = {
        "class_path": "epr_lightning.testing.scripted_env.BadEnvironment",
        "init_args": {"mode": mode, "every": 1},
    }
    task = {"environment": env, "max_turns": 3, "max_episode_tokens": 160, "step_timeout_s": 0.5}
    path = tmp_path / "env.yaml"
    cfg = {
        "data": {
            "init_args": {"task": {"class_path": "epr_lightning.envs.EnvironmentTask", "init_args": task}}
        }
    }
    path.write_text(yaml.safe_dump(cfg))
    cli = build_cli(
        ["--config", str(ROOT / "configs/tiny_cpu.yaml"), "--config", str(path),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
         "--trainer.limit_val_batches", "0", "--data.init_args.prompts_per_step", "2",
         "--data.init_args.batches_per_epoch", str(n + 1), "--model.init_args.max_failed_reward_iterations", str(n)],
        run=False,
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_an_environment_failing_every_episode_is_shown_once_and_stops_the_run(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RewardFailureError) as info:
        warnings.simplefilter("always")
        _env_fit(tmp_path, "raise", n=2)
    where = f"{scripted_env.__file__}:{def_line(scripted_env.__file__, 'the environment broke')} in BadEnvironment.step"
    shown = reward_warnings(caught)
    assert len(shown) == 1 and "'env_error:RuntimeError' at iteration 0" in shown[0], shown
    assert f"RuntimeError: the environment broke ({where})" in shown[0]
    message = str(info.value)
    assert message.startswith("every episode ended with env_error in 2 iterations in a row (iterations 0-1)")
    assert f"first error: RuntimeError: the environment broke ({where})" in message and SETTING in message


# --------------------------------------------------------------------------- what is shown, per path
class _Failing(RewardFunction):
    """Per-sample reward: 'raise' raises, 'nan' returns NaN, 'hang' sleeps past the timeout, else 1."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, example: Example, completion: str) -> float:
        if completion == "raise":
            return 1.0 / (len(completion) - 5)  # ZeroDivisionError, here
        if completion == "hang":
            self.release.wait(3.0)
        return math.nan if completion == "nan" else 1.0


def test_per_sample_failures_keep_the_first_of_each_kind_with_the_reward_s_file_and_line() -> None:
    fn = _Failing()
    texts = ["ok", "raise", "nan", "hang", "raise", "nan"]
    result = score_completions(fn, examples(6), texts, timeout_s=0.3, max_workers=3)
    fn.release.set()
    assert result.error_kinds == [
        None,
        "error:ZeroDivisionError",
        "nonfinite",
        "timeout",
        "error:ZeroDivisionError",
        "nonfinite",
    ]
    first = result.first_failures
    assert list(first) == ["error:ZeroDivisionError", "nonfinite", "timeout"]
    here = Path(__file__).read_text()
    assert first["error:ZeroDivisionError"] == Failure(
        "error:ZeroDivisionError", "ZeroDivisionError: float division by zero",
        f"{__file__}:{line_of(here, '# ZeroDivisionError, here')} in _Failing.__call__",
    )  # fmt: skip
    call = f"{__file__}:{line_of(here, 'def __call__(self, example: Example, completion: str) -> float:')}"
    assert first["nonfinite"] == Failure("nonfinite", "returned nan", f"{call} in _Failing.__call__")
    assert first["timeout"].where == f"{call} in _Failing.__call__"
    assert "0.3s" in first["timeout"].message


@pytest.mark.parametrize(
    "function,kind,message,needle",
    [
        (
            "broken",
            "error:RuntimeError",
            "RuntimeError: bug in my reward (3 completions)",
            "raise RuntimeError",
        ),
        ("nan_reward", "nonfinite", "returned nan", "def nan_reward"),
        ("hangs", "timeout", "no result within 0.3s (set by model.reward_timeout_s)", "def hangs"),
    ],
)
def test_batched_failures_name_the_user_function_s_file_and_line(
    reward_file: Path, function: str, kind: str, message: str, needle: str
) -> None:
    reward = TRLReward(path=reward_file.name, functions=function)
    result = score_completions(reward, examples(3), ["a", "b", "c"], timeout_s=0.3, max_workers=4)
    where = f"{reward_file.resolve()}:{line_of(REWARDS, needle)} in {function}"
    assert result.failures == 3 and result.first_failures == {kind: Failure(kind, message, where)}


def _json_reward(text: str) -> float:
    return float(json.loads(text))  # raises inside the json package


def test_an_exception_is_located_in_the_reward_s_code_not_in_the_library_it_called() -> None:
    with pytest.raises(ValueError) as info:
        _json_reward("{")
    assert info.traceback[-1].path.name == "decoder.py"  # the innermost frame is json's …
    here = Path(__file__).read_text()  # … the reward's own line is the one shown
    assert (
        user_frame(info.value.__traceback__)
        == f"{__file__}:{line_of(here, '# raises inside the json')} in _json_reward"
    )


def test_environment_failures_are_located_in_the_environment_s_code(tiny_model, tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    engine = HFEngine()
    engine.setup(tiny_model, tok)
    params = SamplingParams(max_new_tokens=8, stop_token_ids=[tok.eos_token_id], seed=3)
    for mode, kind, needle in [
        ("raise", "env_error:RuntimeError", "the environment broke"),
        ("bad_reward", "env_bad_value", "    def step(self, action: str) -> Any:"),
    ]:
        task = EnvironmentTask(BadEnvironment(mode, every=1), max_turns=3, max_episode_tokens=200)
        rollout = run_episodes(engine, tiny_model, tok, task, task.examples("train")[:2], params, 2)
        result = rollout.scores(1.0)
        assert result.failures == 4 and list(result.first_failures) == [kind]
        line = def_line(scripted_env.__file__, needle)
        assert result.first_failures[kind].where == f"{scripted_env.__file__}:{line} in BadEnvironment.step"


# --------------------------------------------------------------------------- the streak
def test_n_minus_one_failed_iterations_do_not_stop_and_the_nth_does() -> None:
    stop = RewardFailureStop(3)
    stop.observe(4, 4, 0, BOOM)
    stop.observe(4, 4, 1)
    assert stop.in_row == 2
    with pytest.raises(RewardFailureError) as info:
        stop.observe(4, 4, 2)
    assert str(info.value).startswith(
        "every reward failed in 3 iterations in a row (iterations 0-2); first error: RuntimeError: boom "
        "(my_rewards.py:3 in broken). Stopped before the update of iteration 2"
    )
    assert str(info.value).endswith(f"set {SETTING} (now 3; null never stops).")


def test_one_success_in_a_batch_resets_the_streak() -> None:
    stop = RewardFailureStop(2)
    stop.observe(4, 4, 0, BOOM)
    stop.observe(3, 4, 1)  # one reward of four worked
    assert (stop.in_row, stop.first) == (0, None)
    stop.observe(4, 4, 2, BOOM)
    with pytest.raises(RewardFailureError, match=r"in 2 iterations in a row \(iterations 2-3\)"):
        stop.observe(4, 4, 3)


def test_an_iteration_with_nothing_scored_neither_counts_nor_resets() -> None:
    stop = RewardFailureStop(2)
    stop.observe(4, 4, 0, BOOM)
    stop.observe(0, 0, 1)
    with pytest.raises(RewardFailureError, match=r"iterations 0-2"):
        stop.observe(4, 4, 2)


@pytest.mark.parametrize("limit", [None, 0])
def test_no_limit_never_stops_but_still_shows_each_kind_once(limit: int | None) -> None:
    stop = RewardFailureStop(limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for it in range(10):
            stop.check(scores(4, 4, BOOM), it)
        stop.check(scores(4, 4, Failure("timeout", "no result within 5s", None)), 10)
    shown = reward_warnings(caught)
    assert len(shown) == 2
    assert shown[0].startswith(
        "reward failure 'error:RuntimeError' at iteration 0: RuntimeError: boom (my_rewards.py:3 in broken); "
        "failed samples score 0 (rollout/reward_errors)."
    )
    assert shown[1].startswith("reward failure 'timeout' at iteration 10: no result within 5s;")


def test_check_counts_from_the_scores_and_raises_on_the_nth() -> None:
    stop = RewardFailureStop(2)
    with pytest.warns(
        RewardFailureWarning, match="the run stops after 2 iterations in a row in which every reward"
    ):
        stop.check(scores(3, 3, BOOM), 0)
    stop.check(scores(2, 3, BOOM), 1)  # resets
    stop.check(scores(3, 3, BOOM), 2)
    with pytest.raises(RewardFailureError, match=r"iterations 2-3"):
        stop.check(scores(3, 3), 3)


def test_the_streak_survives_a_resume_through_state_dict() -> None:
    stop = RewardFailureStop(3)
    stop.observe(4, 4, 5, BOOM)
    stop.observe(4, 4, 6)
    resumed = RewardFailureStop(3)
    resumed.load_state_dict(stop.state_dict())
    assert (resumed.in_row, resumed.streak_start, resumed.first) == (2, 5, BOOM)
    with pytest.raises(RewardFailureError, match=r"iterations 5-7\); first error: RuntimeError: boom"):
        resumed.observe(4, 4, 7)
    clean = RewardFailureStop(3)
    clean.load_state_dict(RewardFailureStop(3).state_dict())  # no failure yet: nothing to restore
    assert (clean.in_row, clean.first) == (0, None)


def test_a_negative_limit_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"model.max_failed_reward_iterations must be >= 0 or null, got -1"):
        RewardFailureStop(-1)
