"""TRL-style reward functions from the user's own file: loaded from the working directory, called once per batch
with the dataset's columns, summed with weights; failures zero the batch and are counted. The CLI also makes
the working directory importable, so ``class_path: my_rewards.MyReward`` finds ``./my_rewards.py``."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from epr_lightning.cli import main
from epr_lightning.tasks import Example, TRLReward, score_completions
from epr_lightning.tasks.trl_reward import load_module

ROOT = Path(__file__).resolve().parents[1]

REWARDS = textwrap.dedent(
    """
    CALLS = []

    def length_match(prompts, completions, target_len, **kwargs):
        CALLS.append((list(prompts), list(completions), dict(kwargs), list(target_len)))
        return [1.0 if len(c) == int(n) else 0.0 for c, n in zip(completions, target_len)]

    def says_yes(prompts, completions, **kwargs):
        return [None if c == "skip" else float("yes" in c) for c in completions]

    def broken(prompts, completions, **kwargs):
        raise RuntimeError("bug in my reward")

    def short(prompts, completions, **kwargs):
        return [1.0]

    def hangs(prompts, completions, **kwargs):
        import time
        time.sleep(30)
    """
)


@pytest.fixture()
def in_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def examples(n: int) -> list[Example]:
    return [
        Example(id=str(i), prompt=f"p{i}", answer=str(i), meta={"target_len": 3, "_prompt_ids": [1]})
        for i in range(n)
    ]


def test_functions_are_called_once_per_batch_with_columns_and_weights(in_workdir: Path) -> None:
    reward = TRLReward(path="my_rewards.py", functions=["length_match", "says_yes"], weights=[1.0, 0.5])
    completions = ["abc", "yes", "no!", "skip", "abcd", "yes!"]
    result = score_completions(reward, examples(6), completions, timeout_s=5.0)
    assert result.rewards == [1.0, 1.5, 1.0, 0.0, 0.0, 0.5]
    assert result.failures == 0
    module = load_module("my_rewards.py")  # the module the reward loaded (cached per file)
    assert len(module.CALLS) == 1  # one call for the whole batch, not one per completion
    prompts, seen, kwargs, target = module.CALLS[0]
    assert prompts == [f"p{i}" for i in range(6)] and seen == completions and target == [3] * 6
    assert kwargs == {"answer": [str(i) for i in range(6)]}  # private meta ("_prompt_ids") is not passed
    # an item every function skips (None) is non-finite: 0 and counted
    only_yes = TRLReward(path="my_rewards.py", functions="says_yes")
    result = score_completions(only_yes, examples(2), ["skip", "yes"], timeout_s=5.0)
    assert result.rewards == [0.0, 1.0] and result.nonfinite == 1


def test_chat_prompts_reach_the_function_as_messages(in_workdir: Path) -> None:
    reward = TRLReward(path="my_rewards.py", functions="length_match")
    chat = [{"role": "user", "content": "hi"}]
    ex = [Example(id="0", prompt="hi", meta={"target_len": 2}, messages=chat)]
    result = score_completions(reward, ex, ["ok"], timeout_s=5.0)
    assert result.failures == 0 and result.rewards == [0.0]  # len() of a one-message list is 1, not 2
    module = load_module("my_rewards.py")  # the module the reward loaded (cached per file)
    assert module.CALLS[-1][:2] == ([chat], [[{"role": "assistant", "content": "ok"}]])


@pytest.mark.parametrize(
    "name,kind", [("broken", "error:RuntimeError"), ("short", "error:ValueError"), ("hangs", "timeout")]
)
def test_a_failing_function_zeroes_the_batch_and_is_counted(in_workdir: Path, name: str, kind: str) -> None:
    reward = TRLReward(path="my_rewards.py", functions=name)
    result = score_completions(reward, examples(4), ["a", "b", "c", "d"], timeout_s=0.5, max_workers=4)
    assert result.rewards == [0.0] * 4 and result.error_kinds == [kind] * 4 and result.failures == 4


def test_bad_reward_specs_are_clear(in_workdir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.py"):
        TRLReward(path="nope.py")
    with pytest.raises(ValueError, match="no function 'missing'"):
        TRLReward(path="my_rewards.py", functions="missing")
    with pytest.raises(ValueError, match="2 functions"):
        TRLReward(path="my_rewards.py", functions=["says_yes", "broken"], weights=[1.0])


MY_REWARD_CLASS = textwrap.dedent(
    """
    from epr_lightning.tasks.base import RewardFunction

    class LengthReward(RewardFunction):
        calls = 0

        def __call__(self, example, completion):
            LengthReward.calls += 1
            return min(len(completion), 10) / 10
    """
)


def test_cli_imports_a_reward_class_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_class_rewards.py").write_text(MY_REWARD_CLASS)
    monkeypatch.chdir(tmp_path)
    # as under the installed `epr-lightning` script: neither "" nor the working directory on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), ".")])
    main([
        "fit", "--config", str(ROOT / "configs/tiny_cpu.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.limit_val_batches", "0", "--data.init_args.batches_per_epoch", "1",
        "--data.init_args.task.init_args.reward", "my_class_rewards.LengthReward",
    ])  # fmt: skip
    assert sys.modules["my_class_rewards"].LengthReward.calls == 16  # 4 prompts x 4 samples
    state = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert state["epr"]["iteration"] == 1
