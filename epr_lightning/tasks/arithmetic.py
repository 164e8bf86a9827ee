"""Generated arithmetic problems with one exact integer answer (offline, deterministic by seed)."""

from __future__ import annotations

import random

from epr_lightning.tasks.answers import ExactAnswerReward
from epr_lightning.tasks.base import Example, RewardFunction, Split
from epr_lightning.tasks.expressions import ExpressionError, safe_eval
from epr_lightning.tasks.generated import GeneratedTask

ANSWER_INSTRUCTION = "Put the final answer after 'Answer:'."
_OPS = "+-*/"
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jade"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "coins", "books", "shells", "cards"]


def _word_problem(rng: random.Random, a: int, op: str, b: int) -> str:
    """A one-sentence story for ``a op b`` (two operands only)."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    if op == "+":
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    if op == "-":
        return f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"
    if op == "*":
        return f"{name} has {a} bags with {b} {item} in each bag. How many {item} does {name} have in total?"
    return f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"


class ArithmeticTask(GeneratedTask):
    """Problems like "What is 7 + 5?"; the reference answer is the exact integer value.

    Problems are drawn from ``random.Random`` seeded by ``(seed, split)``: the same arguments give the same
    examples on every machine. An expression is redrawn until its value is an integer (division is exact)
    and, for word problems, non-negative (with a divisor ≥ 2). Validation problems are kept out of the training set when the
    problem space is large enough (best effort: a training draw that repeats a validation prompt is redrawn
    up to 20 times).

    Args:
        num_train: number of training examples.
        num_val: number of validation examples.
        min_value: smallest operand.
        max_value: largest operand.
        ops: operators to draw from, a subset of ``"+-*/"``.
        num_operands: operands per expression (≥ 2); word problems need exactly 2.
        word_problems: phrase problems as short stories instead of bare expressions.
        seed: generation seed.
        reward: overrides the default ``ExactAnswerReward()`` (1 correct and tagged, else 0).
        system_prompt: optional system message.
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 64,
        min_value: int = 0,
        max_value: int = 20,
        ops: str = "+-",
        num_operands: int = 2,
        word_problems: bool = False,
        seed: int = 0,
        reward: RewardFunction | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(num_train, num_val, seed, reward=reward, system_prompt=system_prompt)
        if min_value > max_value:
            raise ValueError(f"min_value ({min_value}) must be ≤ max_value ({max_value})")
        if not ops or any(op not in _OPS for op in ops):
            raise ValueError(f"ops must be a non-empty subset of '+-*/', got {ops!r}")
        if num_operands < 2:
            raise ValueError(f"num_operands must be ≥ 2, got {num_operands}")
        if word_problems and num_operands != 2:
            raise ValueError("word_problems=True needs num_operands=2")
        if word_problems and min_value < 0:
            raise ValueError("word_problems=True needs min_value ≥ 0")
        if ops == "/" and max_value <= 0:
            raise ValueError("ops='/' needs max_value > 0 (a non-zero divisor)")
        self.min_value, self.max_value = min_value, max_value
        self.ops, self.num_operands = ops, num_operands
        self.word_problems = word_problems

    def default_reward(self) -> RewardFunction:
        return ExactAnswerReward()

    def _draw(self, rng: random.Random) -> tuple[str, int, list[int], list[str]]:
        for _ in range(10_000):
            nums = [rng.randint(self.min_value, self.max_value) for _ in range(self.num_operands)]
            ops = [rng.choice(self.ops) for _ in range(self.num_operands - 1)]
            expr = str(nums[0]) + "".join(f" {op} {n}" for op, n in zip(ops, nums[1:], strict=True))
            try:
                value = safe_eval(expr)
            except ExpressionError:
                continue  # division by zero
            if value.denominator != 1 or (self.word_problems and value < 0):
                continue
            if self.word_problems and ops[0] == "/" and nums[1] < 2:
                continue  # "shares among 1 friends"
            return expr, int(value), nums, ops
        raise ValueError(
            f"could not draw an integer-valued problem from ops={self.ops!r} "
            f"and values in [{self.min_value}, {self.max_value}]"
        )

    def _make(self, rng: random.Random, split: str, index: int) -> Example:
        expr, value, nums, ops = self._draw(rng)
        if self.word_problems:
            question = _word_problem(rng, nums[0], ops[0], nums[1])
        else:
            question = f"What is {expr}?"
        return Example(
            id=f"arith-{split}-{index}",
            prompt=f"{question} {ANSWER_INSTRUCTION}",
            answer=str(value),
            meta={"expression": expr},
        )

    def generate(self, split: Split) -> list[Example]:
        if split == "val":
            val_rng = random.Random(f"arithmetic-{self.seed}-val")
            return [self._make(val_rng, "val", i) for i in range(self.num_val)]
        seen = {ex.meta["expression"] for ex in self.examples("val")}
        train_rng = random.Random(f"arithmetic-{self.seed}-train")
        train = []
        for i in range(self.num_train):
            ex = self._make(train_rng, "train", i)
            for _ in range(20):
                if ex.meta["expression"] not in seen:
                    break
                ex = self._make(train_rng, "train", i)
            train.append(ex)
        return train
