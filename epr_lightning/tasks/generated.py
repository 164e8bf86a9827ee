"""The common part of the generated tasks (arithmetic, countdown, numbers with a property, the character toy):
``num_train`` / ``num_val`` examples drawn offline, deterministic by ``(seed, split)``, generated once per split."""

from __future__ import annotations

from abc import abstractmethod

from epr_lightning.tasks.base import Example, RewardFunction, Split, Task


class GeneratedTask(Task):
    """A task whose examples are generated, not read: the same arguments give the same examples everywhere.

    Subclasses keep their own constructor (LightningCLI reads its signature), pass the common arguments on, and
    implement ``generate``; ``examples`` checks the split name and generates each split once.

    Args:
        num_train: number of training examples.
        num_val: number of validation examples.
        seed: generation seed.
        reward: overrides the task's default reward.
        system_prompt: optional system message.
    """

    def __init__(
        self,
        num_train: int,
        num_val: int,
        seed: int,
        reward: RewardFunction | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(reward=reward, system_prompt=system_prompt)
        if num_train < 0 or num_val < 0:
            raise ValueError(f"num_train/num_val must be ≥ 0, got {num_train}/{num_val}")
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
        self._cache: dict[str, list[Example]] = {}

    def count(self, split: Split) -> int:
        """How many examples ``split`` has."""
        return self.num_train if split == "train" else self.num_val

    @abstractmethod
    def generate(self, split: Split) -> list[Example]:
        """The split's ``count(split)`` examples, in a fixed order (``examples`` keeps them)."""

    def examples(self, split: Split) -> list[Example]:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if split not in self._cache:
            self._cache[split] = self.generate(split)
        return list(self._cache[split])
