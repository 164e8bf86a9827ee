"""Score a batch of completions robustly: a failing, hanging or non-finite reward becomes 0 and is counted.

Timeouts use daemon worker threads. A call that runs past ``timeout_s`` is abandoned: its thread keeps
running in the background until the reward function returns (Python cannot kill a thread), its result is
ignored, and a replacement worker takes over the remaining work. Because the workers are daemon threads
(not a ``ThreadPoolExecutor``, whose threads are joined at interpreter exit), a reward that never returns
cannot keep the process alive. A CPU-bound pure-Python reward holds the GIL in slices, so it slows the other
threads but cannot block the timeout check. Reward functions that can hang should be made interruptible
(e.g. bounded input sizes, as the built-in ones are) — abandoned threads still use CPU.

Each result keeps the first failure of each kind with its message and the file:line in the reward's code
(``first_failures``), which ``reward_failures.RewardFailureStop`` shows once per run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from epr_lightning.reward_failures import Failure, code_location, exception_failure, first_of_each_kind
from epr_lightning.tasks.base import Example, RewardFunction

if TYPE_CHECKING:
    from epr_lightning.rollout.base import Rollout

#: error kinds reported per sample (None = scored normally).
TIMEOUT, NONFINITE = "timeout", "nonfinite"


@dataclass
class ScoreResult:
    """Rewards for a batch plus failure counts.

    Attributes:
        rewards: one finite float per completion (0.0 where the reward failed).
        errors: calls that raised (or returned something that is not a number).
        timeouts: calls abandoned after ``timeout_s``.
        nonfinite: calls that returned NaN or ±inf.
        error_kinds: per sample ``None`` or ``"error:<ExceptionName>"`` / ``"timeout"`` / ``"nonfinite"``.
        first_failures: the first failure of each kind (message and file:line), by kind.
    """

    rewards: list[float]
    errors: int = 0
    timeouts: int = 0
    nonfinite: int = 0
    error_kinds: list[str | None] = field(default_factory=list)
    first_failures: dict[str, Failure] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        """All replaced rewards (errors + timeouts + non-finite)."""
        return self.errors + self.timeouts + self.nonfinite


Outcome = tuple[float, Failure | None]


def _score_one(reward_fn: RewardFunction, example: Example, completion: str) -> Outcome:
    try:
        value = float(reward_fn(example, completion))
    except Exception as err:
        return 0.0, exception_failure(err, code_location(reward_fn))
    if not math.isfinite(value):
        return 0.0, Failure(NONFINITE, f"returned {value}", code_location(reward_fn))
    return value, None


def _timeout(reward_fn: Any, limit_s: float) -> Failure:
    return Failure(
        TIMEOUT, f"no result within {limit_s:g}s (set by model.reward_timeout_s)", code_location(reward_fn)
    )


class _Batch:
    """Shared state between the caller and the worker threads of one ``score_completions`` call."""

    def __init__(self, n: int) -> None:
        self.cond = threading.Condition()
        self.next_index = 0
        self.n = n
        self.started: dict[int, float] = {}  # index → monotonic start time, while running
        self.results: list[Outcome | None] = [None] * n

    def worker(
        self, reward_fn: RewardFunction, examples: Sequence[Example], completions: Sequence[str]
    ) -> None:
        while True:
            with self.cond:
                if self.next_index >= self.n:
                    return
                i = self.next_index
                self.next_index += 1
                self.started[i] = time.monotonic()
            outcome = _score_one(reward_fn, examples[i], completions[i])
            with self.cond:
                if i not in self.started:  # timed out meanwhile: this thread was replaced, so stop
                    return
                del self.started[i]
                self.results[i] = outcome
                self.cond.notify_all()


def score_completions(
    reward_fn: RewardFunction,
    examples: Sequence[Example],
    completions: Sequence[str],
    timeout_s: float | None = 5.0,
    max_workers: int = 4,
) -> ScoreResult:
    """Score ``completions[i]`` against ``examples[i]``; never raises because of the reward function.

    Args:
        reward_fn: the verifier.
        examples: one example per completion.
        completions: the texts to score.
        timeout_s: per-call limit in seconds; ``None`` runs every call inline in this thread (no timeout).
        max_workers: concurrent worker threads (rewards are mostly GIL-bound; a few suffice).
    """
    if len(examples) != len(completions):
        raise ValueError(f"got {len(examples)} examples but {len(completions)} completions")
    if getattr(reward_fn, "batched", False):  # one call per batch (TRL-style rewards: tasks/trl_reward.py)
        return score_batched(reward_fn, examples, completions, timeout_s, max_workers)
    n = len(completions)
    if timeout_s is None:
        outcomes = [_score_one(reward_fn, e, c) for e, c in zip(examples, completions, strict=True)]
        return _collect(outcomes)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    if max_workers < 1:
        raise ValueError(f"max_workers must be ≥ 1, got {max_workers}")
    batch = _Batch(n)

    def spawn() -> None:
        threading.Thread(
            target=batch.worker, args=(reward_fn, examples, completions), daemon=True, name="reward-worker"
        ).start()

    for _ in range(min(max_workers, n)):
        spawn()
    with batch.cond:
        while any(r is None for r in batch.results):
            now = time.monotonic()
            for i, start in list(batch.started.items()):
                if now - start >= timeout_s:
                    del batch.started[i]  # abandon the call; its thread exits when (if) it returns
                    batch.results[i] = (0.0, _timeout(reward_fn, timeout_s))
                    spawn()
            if batch.started:
                wait = min(start + timeout_s for start in batch.started.values()) - now
            else:
                wait = timeout_s
            batch.cond.wait(timeout=max(wait, 0.001))
    return _collect(batch.results)  # type: ignore[arg-type]


def _collect(outcomes: list[Outcome]) -> ScoreResult:
    failures = [failure for _, failure in outcomes]
    kinds = [None if f is None else f.kind for f in failures]
    return ScoreResult(
        rewards=[value for value, _ in outcomes],
        errors=sum(1 for k in kinds if k is not None and k.startswith("error:")),
        timeouts=kinds.count(TIMEOUT),
        nonfinite=kinds.count(NONFINITE),
        error_kinds=kinds,
        first_failures=first_of_each_kind(failures),
    )


def score_batched(
    reward_fn: Any,
    examples: Sequence[Example],
    completions: Sequence[str],
    timeout_s: float | None,
    max_workers: int = 4,
) -> ScoreResult:
    """``reward_fn.score_batch`` once for the whole batch, bounded by the time the per-completion scorer would
    allow (``timeout_s`` × ⌈n / max_workers⌉); never raises because of the reward function."""
    n = len(completions)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["values"] = reward_fn.score_batch(examples, completions)
        except Exception as err:
            box["error"] = err

    limit = None if timeout_s is None else timeout_s * max(1, math.ceil(n / max_workers))
    if limit is None:
        run()
    else:
        worker = threading.Thread(target=run, daemon=True, name="reward-batch")
        worker.start()
        worker.join(limit)
    if "values" not in box and "error" not in box:
        assert limit is not None
        first = {TIMEOUT: _timeout(reward_fn, limit)}
        return ScoreResult(rewards=[0.0] * n, timeouts=n, error_kinds=[TIMEOUT] * n, first_failures=first)
    if "error" in box:
        failure = exception_failure(box["error"], code_location(reward_fn))
        first = {failure.kind: failure}
        return ScoreResult([0.0] * n, errors=n, error_kinds=[failure.kind] * n, first_failures=first)
    outcomes: list[Outcome] = []
    for value in box["values"]:
        if isinstance(value, (int, float)) and math.isfinite(value):
            outcomes.append((float(value), None))
        else:
            outcomes.append((0.0, Failure(NONFINITE, f"returned {value!r}", code_location(reward_fn))))
    return _collect(outcomes)


@dataclass
class RolloutScores:
    """The scored rollout: rewards [N], correctness [N] (reward ≥ the task's success threshold), the extracted
    answers (None where none was found), how many reward calls failed (raised, timed out, non-finite) and the
    first failure of each kind."""

    rewards: Tensor
    correct: Tensor
    answers: list[str | None]
    failures: int
    first_failures: dict[str, Failure] = field(default_factory=dict)


def score_rollout(
    reward: RewardFunction, examples: list[Example], rollout: Rollout, timeout_s: float
) -> RolloutScores:
    """Score every completion of ``rollout`` against the example of its group."""
    per_sample = [examples[g] for g in rollout.group_index]
    result = score_completions(reward, per_sample, rollout.completion_text, timeout_s=timeout_s)
    rewards = torch.tensor(result.rewards, dtype=torch.float32)
    answers: list[str | None] = []
    for text in rollout.completion_text:
        try:
            answers.append(reward.extract_answer(text))
        except Exception:  # an extractor bug must not stop training; the answer just counts as missing
            answers.append(None)
    threshold = reward.success_threshold
    return RolloutScores(rewards, rewards >= threshold, answers, result.failures, result.first_failures)
