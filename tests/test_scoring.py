"""score_completions: failing, hanging and non-finite rewards become 0 and are counted; nothing raises."""

from __future__ import annotations

import threading
import time

import pytest

from epr_lightning.tasks import ExactAnswerReward, Example, RewardFunction, score_completions


class _Scripted(RewardFunction):
    """Behaviour chosen by the completion text: a number, 'raise', 'hang', 'nan', 'inf', 'str'."""

    def __init__(self, hang_s: float = 2.0) -> None:
        self.hang_s = hang_s
        self.release = threading.Event()

    def __call__(self, example: Example, completion: str) -> float:
        if completion == "raise":
            raise RuntimeError("verifier crashed")
        if completion == "hang":
            self.release.wait(self.hang_s)
            return 1.0
        if completion == "nan":
            return float("nan")
        if completion == "inf":
            return float("-inf")
        if completion == "str":
            return "not a number"  # type: ignore[return-value]
        return float(completion)


EX = Example(id="e", prompt="p", answer="1")


def test_failures_are_zeroed_and_counted():
    fn = _Scripted()
    completions = ["1", "raise", "0.5", "hang", "nan", "inf", "str", "0"]
    start = time.monotonic()
    res = score_completions(fn, [EX] * len(completions), completions, timeout_s=0.2, max_workers=2)
    elapsed = time.monotonic() - start
    fn.release.set()  # let the abandoned thread finish
    assert res.rewards == [1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert (res.errors, res.timeouts, res.nonfinite) == (2, 1, 2)  # raise + str; hang; nan + inf
    assert res.failures == 5
    assert res.error_kinds == [
        None,
        "error:RuntimeError",
        None,
        "timeout",
        "nonfinite",
        "nonfinite",
        "error:ValueError",
        None,
    ]
    assert elapsed < 1.5  # the hang (2 s) was abandoned after ~0.2 s


def test_many_hangs_do_not_stall_the_batch():
    fn = _Scripted(hang_s=3.0)
    completions = ["hang"] * 3 + ["1"] * 3
    start = time.monotonic()
    res = score_completions(fn, [EX] * 6, completions, timeout_s=0.15, max_workers=2)
    elapsed = time.monotonic() - start
    fn.release.set()
    # 2 workers: two hangs time out (~0.15 s), replacements take the 3rd hang (~0.3 s), then the rest
    assert res.rewards == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert res.timeouts == 3 and res.errors == 0
    assert elapsed < 1.5


def test_real_reward_and_inline_mode_agree():
    reward = ExactAnswerReward()
    examples = [Example(id=str(i), prompt="", answer=str(i)) for i in range(20)]
    completions = [f"Answer: {i if i % 3 else i + 1}" for i in range(20)]
    threaded = score_completions(reward, examples, completions, timeout_s=5.0)
    inline = score_completions(reward, examples, completions, timeout_s=None)
    expected = [0.0 if i % 3 == 0 else 1.0 for i in range(20)]
    assert threaded.rewards == inline.rewards == expected
    assert threaded.failures == inline.failures == 0
    assert score_completions(reward, [], [], timeout_s=1.0).rewards == []


def test_inline_mode_still_catches_errors():
    res = score_completions(_Scripted(), [EX] * 3, ["raise", "nan", "0.25"], timeout_s=None)
    assert res.rewards == [0.0, 0.0, 0.25] and res.errors == 1 and res.nonfinite == 1


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="2 examples but 1 completions"):
        score_completions(ExactAnswerReward(), [EX, EX], ["x"])
    with pytest.raises(ValueError, match="timeout_s"):
        score_completions(ExactAnswerReward(), [EX], ["x"], timeout_s=0)


def test_abandoned_threads_are_daemons():
    fn = _Scripted(hang_s=5.0)
    score_completions(fn, [EX], ["hang"], timeout_s=0.05)
    workers = [t for t in threading.enumerate() if t.name == "reward-worker" and t.is_alive()]
    assert workers and all(t.daemon for t in workers)  # cannot keep the interpreter alive at exit
    fn.release.set()


def test_process_exits_despite_a_reward_that_never_returns():
    import subprocess
    import sys

    code = (
        "import time\n"
        "from epr_lightning.tasks.base import Example, RewardFunction\n"
        "from epr_lightning.tasks.scoring import score_completions\n"
        "class Forever(RewardFunction):\n"
        "    def __call__(self, example, completion):\n"
        "        time.sleep(10_000)\n"
        "res = score_completions(Forever(), [Example(id='a', prompt='p')], ['x'], timeout_s=0.1)\n"
        "print(res.timeouts)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
