"""MathAnswerReward: equivalent forms score 1, wrong answers and garbage 0, and a pathological answer (a
10-billion-digit power that holds the GIL) is killed at the reward's own timeout — all scored from the
scorer's worker threads, with the runaway worker process really stopped."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("math_verify")

from epr_lightning.tasks import Example, MathAnswerReward, score_completions

# (reference answer, completion, expected reward)
CASES = [
    # equivalent forms
    ("\\frac{1}{2}", "The answer is \\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("\\frac{1}{2}", "Answer: 1/2", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\dfrac12}", 1.0),
    ("\\frac{1}{2}", "So $x = \\frac{2}{4}$.", 1.0),
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("1/2", "\\boxed{0.50}", 1.0),
    ("3", "\\boxed{3}", 1.0),
    ("3", "The final answer is 3", 1.0),
    ("3", "\\boxed{3.0}", 1.0),
    ("\\sqrt{2}", "\\boxed{\\sqrt{2}}", 1.0),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
    ("(1, 2)", "\\boxed{(1,2)}", 1.0),
    ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}", 1.0),
    ("x^2+1", "\\boxed{1 + x^2}", 1.0),
    ("\\pi", "\\boxed{\\pi}", 1.0),
    ("10\\%", "\\boxed{10\\%}", 1.0),
    ("-\\frac{1}{2}", "\\boxed{-0.5}", 1.0),
    ("1000", "\\boxed{1,000}", 1.0),
    ("12", "We get 5 + 7 = 12, so the answer is $12$.", 1.0),
    ("\\frac{3}{4}", "0.75", 1.0),
    # wrong answers
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", 0.0),
    ("3", "\\boxed{4}", 0.0),
    ("(1, 2)", "\\boxed{(2,1)}", 0.0),
    ("\\sqrt{2}", "\\boxed{2}", 0.0),
    ("x^2+1", "\\boxed{x^2 - 1}", 0.0),
    ("\\frac{1}{2}", "\\boxed{1/2} is wrong, it is \\boxed{2}", 0.0),  # the last boxed answer counts
    ("3", "3 apples and then \\boxed{4}", 0.0),
    # garbage
    ("3", "", 0.0),
    ("3", "}{\\boxed{ $$ \\frac{", 0.0),
    ("3", "\x00\x01 ### %%%", 0.0),
    ("\\frac{1}{2}", "a" * 20_000, 0.0),
]
# answers whose check runs for minutes inside one sympy call (unless stopped)
PATHOLOGICAL = ["\\boxed{10^{10^{10}}}", "\\boxed{9^{9^{9^{9}}}}"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture()
def reward():
    reward = MathAnswerReward(timeout_s=4.0, workers=4)
    reward.warm_up()
    yield reward
    reward.close()


def test_answer_variants_and_a_pathological_one_from_worker_threads(reward: MathAnswerReward) -> None:
    examples = [Example(id=str(i), prompt="q", answer=gold) for i, (gold, _, _) in enumerate(CASES)]
    examples += [Example(id=f"p{i}", prompt="q", answer="2") for i in range(len(PATHOLOGICAL))]
    completions = [c for _, c, _ in CASES] + PATHOLOGICAL
    pids = {w.proc.pid for w in list(reward._idle().queue)}
    assert len(pids) == 4 and all(alive(p) for p in pids)
    start = time.monotonic()
    result = score_completions(reward, examples, completions, timeout_s=30.0, max_workers=4)
    elapsed = time.monotonic() - start
    assert result.rewards == [r for _, _, r in CASES] + [0.0] * len(PATHOLOGICAL)
    assert result.error_kinds == [None] * len(CASES) + ["error:TimeoutError"] * len(PATHOLOGICAL)
    assert elapsed < 20.0  # the reward's own 4 s limit, well before the scorer's 30 s
    dead = [p for p in pids if not alive(p)]
    assert len(dead) == len(PATHOLOGICAL)  # the runaway computations were stopped, not abandoned
    time.sleep(0.2)
    again = score_completions(reward, examples[:3], completions[:3], timeout_s=30.0, max_workers=4)
    assert again.rewards == [1.0, 1.0, 1.0] and again.failures == 0  # restarted workers serve the next batch


def test_format_bonus_answer_extraction_and_missing_reference(reward: MathAnswerReward) -> None:
    shaped = MathAnswerReward(timeout_s=2.0, workers=1, format_bonus=0.1)
    try:
        ex = Example(id="1", prompt="q", answer="\\frac{1}{2}")
        assert shaped(ex, "\\boxed{0.5}") == 1.0
        assert shaped(ex, "\\boxed{7}") == 0.1  # wrong but boxed
        assert shaped(ex, "it is 7") == 0.0
    finally:
        shaped.close()
    assert reward.extract_answer("so \\boxed{ \\frac{1}{2} }") == "\\frac{1}{2}"
    assert reward.extract_answer("no answer here") is None
    with pytest.raises(ValueError, match="no reference answer"):
        reward(Example(id="x", prompt="q"), "\\boxed{1}")
