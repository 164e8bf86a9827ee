"""A toy task with a dense, learnable reward for closed-loop tests of entropy dynamics on a tiny random model.

A random character-level model (``epr_lightning.tiny``) emits near-uniform characters; rewarding the fraction
of characters drawn from a small target set gives a signal on every sample, so a few dozen policy-gradient
steps visibly concentrate the policy (entropy falls) — exactly the collapse the controllers must counter.
"""

from __future__ import annotations

import random

from epr_lightning.tasks.base import Example, RewardFunction, Split
from epr_lightning.tasks.generated import GeneratedTask


class CharacterFractionReward(RewardFunction):
    """Reward = share of the completion's characters that belong to ``target_chars`` (0 for an empty one).

    Args:
        target_chars: the rewarded characters.
        ignore_whitespace: leave spaces/newlines out of both counts.
        success_threshold: a reward at or above this counts as correct.
    """

    def __init__(
        self,
        target_chars: str = "0123456789",
        ignore_whitespace: bool = False,
        success_threshold: float = 1.0,
    ) -> None:
        if not target_chars:
            raise ValueError("target_chars must be a non-empty string")
        self.target_chars = frozenset(target_chars)
        self.ignore_whitespace = bool(ignore_whitespace)
        self.success_threshold = float(success_threshold)

    def _chars(self, completion: str) -> str:
        return "".join(c for c in completion if not c.isspace()) if self.ignore_whitespace else completion

    def __call__(self, example: Example, completion: str) -> float:
        chars = self._chars(completion)
        if not chars:
            return 0.0
        return sum(c in self.target_chars for c in chars) / len(chars)

    def extract_answer(self, completion: str) -> str | None:
        """The first character of the completion (None when empty), for diversity metrics."""
        chars = self._chars(completion)
        return chars[0] if chars else None


class CharacterTask(GeneratedTask):
    """Prompts like ``"Write digits: 4821"``; the reward is the fraction of target characters written.

    Prompts are generated from ``random.Random(f"{seed}-{split}")``: the same arguments give the same prompts on
    every machine. The suffix is a random string of target characters (a hint, and variety between prompts).

    Args:
        target_chars: characters that earn reward.
        instruction: the prompt text before the random suffix.
        suffix_len: length of the random suffix (0 = every prompt is just ``instruction``).
        num_train: number of training prompts.
        num_val: number of validation prompts.
        seed: generation seed.
        reward: overrides the default ``CharacterFractionReward(target_chars)``.
        system_prompt: optional system message.
    """

    def __init__(
        self,
        target_chars: str = "0123456789",
        instruction: str = "Write digits:",
        suffix_len: int = 4,
        num_train: int = 64,
        num_val: int = 8,
        seed: int = 0,
        reward: RewardFunction | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(num_train, num_val, seed, reward=reward, system_prompt=system_prompt)
        if not target_chars:
            raise ValueError("CharacterTask.target_chars must be a non-empty string")
        if not instruction.strip():
            raise ValueError("CharacterTask.instruction must not be empty")
        if suffix_len < 0:
            raise ValueError(f"CharacterTask.suffix_len must be >= 0, got {suffix_len}")
        self.target_chars = target_chars
        self.instruction = instruction
        self.suffix_len = suffix_len

    def default_reward(self) -> RewardFunction:
        return CharacterFractionReward(self.target_chars)

    def generate(self, split: Split) -> list[Example]:
        rng = random.Random(f"{self.seed}-{split}")
        out = []
        for i in range(self.count(split)):
            suffix = "".join(rng.choice(self.target_chars) for _ in range(self.suffix_len))
            prompt = f"{self.instruction} {suffix}" if suffix else self.instruction
            out.append(Example(id=f"chars-{split}-{i}", prompt=prompt, answer=None))
        return out
