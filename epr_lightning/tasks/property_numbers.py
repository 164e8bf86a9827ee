"""Prompts like "Give a number between 1 and 50 divisible by 7": the simplest task with many correct answers.

A uniform policy over the valid numbers is the maximum-entropy solution, so the number of distinct correct
answers per prompt directly shows whether a method keeps exploring or collapses onto one answer.
"""

from __future__ import annotations

import math
import random

from epr_lightning.tasks.answers import extract_number
from epr_lightning.tasks.base import Example, RewardFunction, Split
from epr_lightning.tasks.generated import GeneratedTask

PROPERTIES = ("divisible", "prime", "square")
_MAX_INT_DIGITS = 18


def has_property(n: int, prop: str, divisor: int | None = None) -> bool:
    """Whether integer ``n`` has ``prop`` (``divisible`` by ``divisor`` / ``prime`` / perfect ``square``)."""
    if prop == "divisible":
        if not divisor:
            raise ValueError("property 'divisible' needs a non-zero divisor")
        return n % divisor == 0
    if prop == "prime":
        return n >= 2 and all(n % p for p in range(2, math.isqrt(n) + 1))
    if prop == "square":
        return n >= 0 and math.isqrt(n) ** 2 == n
    raise ValueError(f"unknown property {prop!r}; expected one of {PROPERTIES}")


class NumberPropertyReward(RewardFunction):
    """1.0 when the final number is an integer in ``[meta.low, meta.high]`` with ``meta.property``.

    ``Example.meta`` holds ``low``, ``high``, ``property`` and, for ``divisible``, ``divisor``.
    A correct number found only by the last-number fallback (no ``Answer:``/``\\boxed{}``) gets
    ``fallback_credit``; a tagged wrong number gets ``format_bonus``.

    Args:
        format_bonus: reward for a tagged but wrong number.
        fallback_credit: reward for a correct but untagged number.
    """

    def __init__(self, format_bonus: float = 0.0, fallback_credit: float = 0.0) -> None:
        if not 0.0 <= format_bonus < 1.0:
            raise ValueError(f"format_bonus must be in [0, 1), got {format_bonus}")
        if not 0.0 <= fallback_credit <= 1.0:
            raise ValueError(f"fallback_credit must be in [0, 1], got {fallback_credit}")
        self.format_bonus, self.fallback_credit = format_bonus, fallback_credit

    def __call__(self, example: Example, completion: str) -> float:
        meta = example.meta
        try:
            low, high, prop = int(meta["low"]), int(meta["high"]), str(meta["property"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"example {example.id!r}: meta needs 'low', 'high' and 'property'") from err
        value, source = extract_number(completion)
        if value is None:
            return 0.0
        ok = False
        digits = value.lstrip("-")
        if digits.isdigit() and len(digits) <= _MAX_INT_DIGITS:
            n = int(value)
            ok = low <= n <= high and has_property(n, prop, meta.get("divisor"))
        if source == "fallback":
            return self.fallback_credit if ok else 0.0
        return 1.0 if ok else self.format_bonus

    def extract_answer(self, completion: str) -> str | None:
        return extract_number(completion)[0]


class NumbersWithPropertyTask(GeneratedTask):
    """Prompts like "Give a number between 1 and 50 that is divisible by 7." with several valid answers.

    Each instance draws a property from ``properties``, a divisor in ``[2, max_divisor]`` for
    ``divisible``, and a range ``[low, low + width - 1]`` inside ``[1, max_high]``, redrawn until it holds at
    least ``min_solutions`` valid numbers (stored in ``meta["num_solutions"]``). Deterministic by seed.

    Args:
        num_train: number of training examples.
        num_val: number of validation examples.
        properties: which of ``divisible``, ``prime``, ``square`` to draw from.
        max_high: upper end of every range.
        min_width: smallest range width.
        max_width: largest range width.
        max_divisor: largest divisor for ``divisible`` (divisors are drawn from 2..max_divisor).
        divisors: draw the divisor from this list instead (e.g. [2, 5, 10]: properties a small model can learn
            from the last digit); overrides ``max_divisor``.
        min_solutions: least number of valid answers per prompt.
        seed: generation seed.
        reward: overrides the default ``NumberPropertyReward()``.
        system_prompt: optional system message.
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 64,
        properties: list[str] | None = None,
        max_high: int = 100,
        min_width: int = 10,
        max_width: int = 50,
        max_divisor: int = 9,
        min_solutions: int = 2,
        seed: int = 0,
        reward: RewardFunction | None = None,
        system_prompt: str | None = None,
        divisors: list[int] | None = None,
    ) -> None:
        super().__init__(num_train, num_val, seed, reward=reward, system_prompt=system_prompt)
        props = list(properties) if properties is not None else list(PROPERTIES)
        if not props or any(p not in PROPERTIES for p in props):
            raise ValueError(f"properties must be a non-empty subset of {PROPERTIES}, got {props}")
        if not 1 <= min_width <= max_width <= max_high:
            raise ValueError(
                f"need 1 ≤ min_width ≤ max_width ≤ max_high, got {min_width}, {max_width}, {max_high}"
            )
        if max_divisor < 2:
            raise ValueError(f"max_divisor must be ≥ 2, got {max_divisor}")
        if divisors is not None and (not divisors or any(int(d) < 2 for d in divisors)):
            raise ValueError(f"divisors must be a non-empty list of integers ≥ 2, got {divisors}")
        self.divisors = None if divisors is None else [int(d) for d in divisors]
        if min_solutions < 1:
            raise ValueError(f"min_solutions must be ≥ 1, got {min_solutions}")
        self.properties = props
        self.max_high, self.min_width, self.max_width = max_high, min_width, max_width
        self.max_divisor, self.min_solutions = max_divisor, min_solutions

    def default_reward(self) -> RewardFunction:
        return NumberPropertyReward()

    def _make(self, rng: random.Random, split: str, index: int) -> Example:
        for _ in range(10_000):
            prop = rng.choice(self.properties)
            if prop != "divisible":
                divisor = None
            elif self.divisors is not None:
                divisor = rng.choice(self.divisors)
            else:
                divisor = rng.randint(2, self.max_divisor)
            width = rng.randint(self.min_width, self.max_width)
            low = rng.randint(1, self.max_high - width + 1)
            high = low + width - 1
            count = sum(has_property(n, prop, divisor) for n in range(low, high + 1))
            if count < self.min_solutions:
                continue
            phrase = {
                "divisible": f"is divisible by {divisor}",
                "prime": "is a prime number",
                "square": "is a perfect square",
            }[prop]
            prompt = (
                f"Give a number between {low} and {high} (inclusive) that {phrase}. "
                "Put the final answer after 'Answer:'."
            )
            meta = {"low": low, "high": high, "property": prop, "num_solutions": count}
            if divisor is not None:
                meta["divisor"] = divisor
            return Example(id=f"numprop-{split}-{index}", prompt=prompt, answer=None, meta=meta)
        raise ValueError(
            "could not draw a range with enough solutions; widen the ranges or lower min_solutions"
        )

    def generate(self, split: Split) -> list[Example]:
        rng = random.Random(f"numprop-{self.seed}-{split}")
        return [self._make(rng, split, i) for i in range(self.count(split))]
