"""The task contract: prompts with verifiable answers, and reward functions that score completions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "val"]


@dataclass
class Example:
    """One prompt.

    Attributes:
        id: stable identifier (used for logging and data-position bookkeeping).
        prompt: the user message; the chat template (if any) is applied by the module.
        answer: what the verifier needs (a reference answer, a target, a spec), or None.
        meta: anything else the reward function needs (JSON-serialisable).
        messages: a chat-message prompt (``[{"role": "user", "content": ...}, ...]``) given instead of a single
            user message; ``prompt`` then holds the last user message's text (for logging and rewards).
    """

    id: str
    prompt: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None


class RewardFunction(ABC):
    """Scores one completion. Must be a pure function of its inputs (no eval/exec of model output).

    A reward that raises, exceeds its timeout or returns a non-finite value is replaced by 0 and counted by
    the caller (``epr_lightning.tasks.scoring.score_completions``); it never stops the run.
    """

    #: a reward ≥ this counts as "correct" for pass@k and distinct-correct-answer metrics.
    success_threshold: float = 1.0

    @abstractmethod
    def __call__(self, example: Example, completion: str) -> float:
        """Reward of ``completion`` for ``example``."""

    def extract_answer(self, completion: str) -> str | None:
        """The completion's final answer in canonical form (for diversity metrics), or None."""
        return None

    def warm_up(self) -> None:
        """Start what the first call would otherwise start (worker processes, models); called once when the
        data is set up, so that start-up time does not count against the first batch's timeouts."""


class Task(ABC):
    """A source of prompts plus the reward function that verifies them.

    Args (common to subclasses):
        reward: overrides the task's default reward function when given.
        system_prompt: an optional system message for chat-templated models.
    """

    def __init__(self, reward: RewardFunction | None = None, system_prompt: str | None = None) -> None:
        self._reward = reward
        self.system_prompt = system_prompt

    @property
    def reward(self) -> RewardFunction:
        if self._reward is None:
            self._reward = self.default_reward()
        return self._reward

    @abstractmethod
    def default_reward(self) -> RewardFunction:
        """The verifier that fits this task."""

    @abstractmethod
    def examples(self, split: Split) -> list[Example]:
        """All examples of a split, in a fixed order (the data module shuffles)."""
