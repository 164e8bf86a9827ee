"""Environments for tests: one whose episodes end on a schedule (to drive every end cause with a random tiny
model), and one that misbehaves on purpose (raises, hangs, returns a non-string observation or a bad reward)."""

from __future__ import annotations

import time
from typing import Any, Literal

from epr_lightning.envs.base import Environment, StepResult
from epr_lightning.tasks.base import Example, Split


class ScriptedEnvironment(Environment):
    """Example ``i`` answers ``finish_after[i % k]`` model turns with observations of ``observation_chars[i % k]``
    characters, then ends (``done``) with reward 1 if the model's last turn has an even number of characters.

    Args:
        finish_after: model turns until ``done`` per example (cycled); more than ``max_turns`` → turn limit.
        observation_chars: observation length per example (cycled); past the token budget → token budget.
        num_examples: examples per split.
    """

    def __init__(
        self,
        finish_after: list[int] | None = None,
        observation_chars: list[int] | None = None,
        num_examples: int = 8,
    ) -> None:
        self.finish_after = list(finish_after or [2])
        self.observation_chars = list(observation_chars or [12])
        self.num_examples = num_examples

    def examples(self, split: Split) -> list[Example]:
        out = []
        for i in range(self.num_examples):
            k = i % len(self.finish_after)
            meta = {
                "finish_after": self.finish_after[k],
                "chars": self.observation_chars[k % len(self.observation_chars)],
                "difficulty": 1 + i % 2,
            }
            out.append(
                Example(
                    f"{split}/{i}",
                    f"Task {i}: say something.",
                    None,
                    meta,
                    [{"role": "user", "content": f"Task {i}: say something."}],
                )
            )
        return out

    def reset(self, example: Example) -> list[dict[str, Any]]:
        self.example, self.turn = example, 0
        return list(example.messages or [])

    def step(self, action: str) -> StepResult:
        self.turn += 1
        if self.turn >= self.example.meta["finish_after"]:
            return StepResult(done=True, reward=float(len(action) % 2 == 0))
        text = (f"obs{self.turn}:" + "x" * self.example.meta["chars"])[: max(self.example.meta["chars"], 1)]
        return StepResult(text, info={"tool_calls": 1.0})

    def final_reward(self) -> float:
        return 0.5


class BadEnvironment(ScriptedEnvironment):
    """Like ``ScriptedEnvironment(finish_after=[2])``, but every ``every``-th example (by default every other
    one; 1 = all) misbehaves on its first step.

    Args:
        mode: "raise", "hang" (sleeps ``hang_s``), "non_string" (an int observation), "bad_reward" (NaN reward
            at the end) or "not_a_result" (returns a plain string).
        hang_s: how long a hanging step sleeps.
        every: which examples misbehave: those whose index i has i % every == every - 1.
    """

    def __init__(
        self,
        mode: Literal["raise", "hang", "non_string", "bad_reward", "not_a_result"] = "raise",
        hang_s: float = 30.0,
        num_examples: int = 8,
        every: int = 2,
    ) -> None:
        super().__init__([2], [8], num_examples)
        self.mode, self.hang_s, self.every = mode, hang_s, every

    def step(self, action: str) -> Any:
        bad = int(self.example.id.split("/")[1]) % self.every == self.every - 1
        if not bad:
            return super().step(action)
        if self.mode == "raise":
            raise RuntimeError("the environment broke")
        if self.mode == "hang":
            time.sleep(self.hang_s)
        if self.mode == "non_string":
            return StepResult(observation=42)  # type: ignore[arg-type]
        if self.mode == "bad_reward":
            return StepResult(done=True, reward=float("nan"))
        return "not a StepResult"
