"""Countdown: reach a target from given numbers with + - * / — many different correct answers per prompt.

Every instance is solvable by construction: the target is the value of a random expression over a random
subset of the numbers (kept in ``meta["witness"]``). Distinct correct answers are counted on the canonical
form of the expression (see :func:`epr_lightning.tasks.answers.canonical_expression`), which makes the
task a good probe of answer diversity under entropy collapse.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

from epr_lightning.tasks.answers import extract_final_answer
from epr_lightning.tasks.base import Example, RewardFunction, Split
from epr_lightning.tasks.expressions import (
    ExpressionError,
    ExpressionLimits,
    Node,
    canonical_expression,
    evaluate,
    normalise_text,
    numbers_in,
    parse_expression,
)
from epr_lightning.tasks.generated import GeneratedTask

#: no unary minus: every literal in the answer must be one of the given numbers.
COUNTDOWN_LIMITS = ExpressionLimits(max_len=256, max_depth=16, max_digits=6, allow_unary_minus=False)
_LATEX = [
    ("\\times", "*"),
    ("\\cdot", "*"),
    ("\\div", "/"),
    ("\\left", ""),
    ("\\right", ""),
    ("\\(", ""),
    ("\\)", ""),
    ("\\[", ""),
    ("\\]", ""),
    ("$", ""),
    ("`", ""),
]
_OPERATOR_RE = re.compile(r"[-+*/]")


def _clean(span: str) -> str:
    for src, dst in _LATEX:
        span = span.replace(src, dst)
    return span.strip().strip("*").rstrip(".").strip()  # markdown bold, a final period


def _parse_span(span: str) -> Node | None:
    """The expression in an answer span (``"(7-3)*2 = 8"`` → the left side), or None."""
    for part in _clean(normalise_text(span)).split("="):
        part = part.strip()
        if not _OPERATOR_RE.search(part) and not part.isdigit():
            continue
        try:
            return parse_expression(part, COUNTDOWN_LIMITS)
        except ExpressionError:
            continue
    return None


def extract_expression(completion: str) -> tuple[Node | None, str | None]:
    """Parsed final expression and its source (``"boxed"``/``"tagged"``/``"fallback"``), or ``(None, None)``.

    Looks in the last ``\\boxed{}`` or after the last ``Answer:``; failing that, the last line of the
    completion that parses as an expression with an operator (source ``"fallback"``).
    """
    found = extract_final_answer(completion)
    if found.source in ("boxed", "tagged"):
        node = _parse_span(found.text or "")
        if node is not None:
            return node, found.source
    for line in reversed(normalise_text(completion[-4000:]).splitlines()[-50:]):
        if _OPERATOR_RE.search(line):
            node = _parse_span(line)
            if node is not None and node[0] != "num":
                return node, "fallback"
    return None, None


def _uses_allowed_numbers(used: list[int], allowed: list[int], use_all: bool) -> bool:
    have, need = Counter(allowed), Counter(used)
    if use_all:
        return have == need
    return all(need[n] <= have[n] for n in need)


class CountdownReward(RewardFunction):
    """1.0 when the final expression uses only the given numbers (each at most once) and equals the target.

    ``Example.meta`` must hold ``numbers`` (list of ints) and ``target`` (int); ``use_all`` (bool, optional)
    requires every number exactly once. A parseable but wrong tagged expression gets ``format_bonus``; a
    correct expression found only by the last-line fallback gets ``fallback_credit``.

    Args:
        format_bonus: reward for a tagged, parseable but wrong expression.
        fallback_credit: reward for a correct expression that was not tagged with ``Answer:``/``\\boxed{}``.
        commutative: canonicalise ``extract_answer`` up to reordering of ``+`` and ``*`` chains.
    """

    def __init__(
        self, format_bonus: float = 0.0, fallback_credit: float = 0.0, commutative: bool = True
    ) -> None:
        if not 0.0 <= format_bonus < 1.0:
            raise ValueError(f"format_bonus must be in [0, 1), got {format_bonus}")
        if not 0.0 <= fallback_credit <= 1.0:
            raise ValueError(f"fallback_credit must be in [0, 1], got {fallback_credit}")
        self.format_bonus, self.fallback_credit, self.commutative = format_bonus, fallback_credit, commutative

    def __call__(self, example: Example, completion: str) -> float:
        try:
            numbers, target = [int(n) for n in example.meta["numbers"]], int(example.meta["target"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"example {example.id!r}: meta needs int list 'numbers' and int 'target'"
            ) from err
        node, source = extract_expression(completion)
        if node is None:
            return 0.0
        try:
            value = evaluate(node, COUNTDOWN_LIMITS)
        except ExpressionError:
            value = None
        ok = value == target and _uses_allowed_numbers(
            numbers_in(node), numbers, example.meta.get("use_all", False)
        )
        if source == "fallback":
            return self.fallback_credit if ok else 0.0
        return 1.0 if ok else self.format_bonus

    def extract_answer(self, completion: str) -> str | None:
        node, _ = extract_expression(completion)
        return None if node is None else canonical_expression(node, self.commutative)


def _random_tree(rng: random.Random, nums: list[int], ops: str) -> Node:
    if len(nums) == 1:
        return ("num", nums[0])
    cut = rng.randint(1, len(nums) - 1)
    return ("bin", rng.choice(ops), _random_tree(rng, nums[:cut], ops), _random_tree(rng, nums[cut:], ops))


def _positive_integer_steps(node: Node) -> Fraction | None:
    """Value of ``node`` if every intermediate result is a positive integer (classic Countdown), else None."""
    if node[0] == "num":
        return Fraction(node[1])
    a, b = _positive_integer_steps(node[2]), _positive_integer_steps(node[3])
    if a is None or b is None:
        return None
    op = node[1]
    value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else (a / b if b else None)
    if value is None or value <= 0 or value.denominator != 1:
        return None
    return value


class CountdownTask(GeneratedTask):
    """Prompts like "Using the numbers 3, 5, 7 (each at most once) and + - * /, write an expression equal to 8".

    Each instance draws ``num_numbers`` numbers, builds a random expression over a random subset of at least
    two of them (all of them with ``use_all``) whose intermediate results are positive integers, and uses
    its value as the target (redrawn until it lies in ``[min_target, max_target]`` and is not one of the
    numbers). Deterministic by ``(seed, split)``.

    Args:
        num_train: number of training examples.
        num_val: number of validation examples.
        num_numbers: how many numbers each instance offers.
        min_number: smallest offered number.
        max_number: largest offered number.
        min_target: smallest target.
        max_target: largest target.
        ops: operators allowed in the generated witness (the answer may use any of ``+-*/``).
        use_all: require every number exactly once (fewer distinct answers) instead of at most once.
        seed: generation seed.
        reward: overrides the default ``CountdownReward()``.
        system_prompt: optional system message.
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 64,
        num_numbers: int = 4,
        min_number: int = 1,
        max_number: int = 12,
        min_target: int = 1,
        max_target: int = 100,
        ops: str = "+-*/",
        use_all: bool = False,
        seed: int = 0,
        reward: RewardFunction | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(num_train, num_val, seed, reward=reward, system_prompt=system_prompt)
        if not 2 <= num_numbers <= 8:
            raise ValueError(f"num_numbers must be in [2, 8], got {num_numbers}")
        if not 1 <= min_number <= max_number:
            raise ValueError(f"need 1 ≤ min_number ≤ max_number, got {min_number}, {max_number}")
        if min_target > max_target:
            raise ValueError(f"min_target ({min_target}) must be ≤ max_target ({max_target})")
        if not ops or any(op not in "+-*/" for op in ops):
            raise ValueError(f"ops must be a non-empty subset of '+-*/', got {ops!r}")
        self.num_numbers = num_numbers
        self.min_number, self.max_number = min_number, max_number
        self.min_target, self.max_target = min_target, max_target
        self.ops, self.use_all = ops, use_all

    def default_reward(self) -> RewardFunction:
        return CountdownReward()

    def _make(self, rng: random.Random, split: str, index: int) -> Example:
        for _ in range(10_000):
            numbers = sorted(rng.randint(self.min_number, self.max_number) for _ in range(self.num_numbers))
            k = self.num_numbers if self.use_all else rng.randint(2, self.num_numbers)
            chosen = rng.sample(numbers, k)
            tree = _random_tree(rng, chosen, self.ops)
            value = _positive_integer_steps(tree)
            if value is None or not self.min_target <= value <= self.max_target or value in numbers:
                continue
            target = int(value)
            rule = "each exactly once" if self.use_all else "each at most once"
            prompt = (
                f"Using the numbers {', '.join(map(str, numbers))} ({rule}) and + - * /, write an "
                f"expression equal to {target}. Put the final expression after 'Answer:'."
            )
            meta = {
                "numbers": numbers,
                "target": target,
                "use_all": self.use_all,
                "witness": canonical_expression(tree, commutative=False),
            }
            return Example(id=f"countdown-{split}-{index}", prompt=prompt, answer=str(target), meta=meta)
        raise ValueError("could not generate a Countdown instance; widen the number or target range")

    def generate(self, split: Split) -> list[Example]:
        rng = random.Random(f"countdown-{self.seed}-{split}")
        return [self._make(rng, split, i) for i in range(self.count(split))]
