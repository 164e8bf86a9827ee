"""The prompt DataModule: a map-style dataset of ``Example``s, batches of plain lists.

Rollouts happen in ``training_step`` (never in an IterableDataset, which Lightning prefetches one update
stale). The train sampler is a seeded, resumable permutation stream: its position is saved in checkpoints so
a resumed run sees exactly the prompts an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from epr_lightning.tasks.base import Example, Task


class ExampleDataset(Dataset):
    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches from seeded per-pass permutations; ``state_dict`` records how many were drawn.

    One Lightning "epoch" is ``batches_per_epoch`` batches; passes over the data are independent of epochs.
    With ``world_size`` ranks each draw is one global batch of ``batch_size * world_size`` prompts and rank
    ``r`` takes its ``r``-th contiguous slice, so N ranks with ``batch_size`` B see exactly the prompts (in the
    same order, concatenated) that one process with ``batch_size`` N·B sees.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        batches_per_epoch: int,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_items, self.batch_size = num_items, batch_size
        self.batches_per_epoch, self.seed, self.shuffle = batches_per_epoch, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.drawn = 0  # batches handed out so far, over the whole run
        self._restored: int | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _order(self, pass_index: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * pass_index)
        return torch.randperm(self.num_items, generator=g).tolist()

    def batch_at(self, index: int) -> list[int]:
        """This rank's part of the ``index``-th global batch of the endless stream (deterministic)."""
        size = self.batch_size * self.world_size
        start = index * size
        out: list[int] = []
        while len(out) < size:
            pass_index, offset = divmod(start + len(out), self.num_items)
            order = self._order(pass_index)
            out += order[offset : offset + size - len(out)]
        return out[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.batches_per_epoch):
            batch = self.batch_at(self.drawn)
            self.drawn += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.drawn = int(state["drawn"])


def collate_examples(batch: list[Example]) -> list[Example]:
    return list(batch)


class PromptDataModule(pl.LightningDataModule):
    """Prompts for rollouts and validation.

    Args:
        task: where prompts come from and how completions are scored.
        prompts_per_step: prompts per rollout iteration and rank (each sampled ``num_generations`` times);
            under DDP/FSDP2 the ranks split one global batch of ``prompts_per_step × world_size`` prompts.
            This sampler does the split itself, so multi-process runs need
            ``trainer.use_distributed_sampler: false``.
        batches_per_epoch: rollout iterations per Lightning epoch (None = one pass over the train prompts).
        val_prompts: held-out prompts used per validation run (None = all of the task's val split).
        val_batch_size: prompts per validation step.
        shuffle: shuffle train prompts (seeded by ``seed``).
        seed: data-order seed.
    """

    def __init__(
        self,
        task: Task,
        prompts_per_step: int = 8,
        batches_per_epoch: int | None = None,
        val_prompts: int | None = 16,
        val_batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("prompts_per_step", prompts_per_step), ("val_batch_size", val_batch_size)):
            if value <= 0:
                raise ValueError(f"data.{name} must be > 0, got {value}")
        self.task = task
        self.prompts_per_step = prompts_per_step
        self.batches_per_epoch = batches_per_epoch
        self.val_prompts = val_prompts
        self.val_batch_size = val_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self._train: list[Example] | None = None
        self._val: list[Example] | None = None
        self.sampler: ResumableBatchSampler | None = None
        self._pending_state: dict[str, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            self._train = self.task.examples("train")
            if not self._train:
                raise ValueError(f"task {type(self.task).__name__} produced no training prompts")
        if self._val is None:
            val = self.task.examples("val")
            self._val = val[: self.val_prompts] if self.val_prompts is not None else val
            warm_up = getattr(self.task.reward, "warm_up", None)  # e.g. verifier processes, started before
            if warm_up is not None:  # the first batch's rewards are timed
                warm_up()

    def train_dataloader(self) -> DataLoader:
        assert self._train is not None
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if (
            trainer is not None
            and world > 1
            and getattr(trainer._accelerator_connector, "use_distributed_sampler", False)
        ):
            raise ValueError(
                "PromptDataModule splits each prompt batch across ranks itself: set "
                "trainer.use_distributed_sampler=false for multi-process runs"
            )
        per_epoch = self.batches_per_epoch or max(1, len(self._train) // (self.prompts_per_step * world))
        if self.sampler is None:
            self.sampler = ResumableBatchSampler(
                len(self._train), self.prompts_per_step, per_epoch, self.seed, self.shuffle, rank, world
            )
            if self._pending_state is not None:
                self.sampler.load_state_dict(self._pending_state)
        return DataLoader(
            ExampleDataset(self._train), batch_sampler=self.sampler, collate_fn=collate_examples
        )

    def val_dataloader(self) -> DataLoader:
        # Not split across ranks (trainer.use_distributed_sampler=false): every rank scores all validation
        # prompts, so every rank runs the same number of (collective) validation steps.
        assert self._val is not None
        return DataLoader(
            ExampleDataset(self._val),
            batch_size=self.val_batch_size,
            shuffle=False,
            collate_fn=collate_examples,
        )

    def state_dict(self) -> dict[str, Any]:
        # Lightning fetches one batch ahead, so the sampler's own count runs ahead of training; the number of
        # batches actually trained on is the module's iteration counter.
        module = self.trainer.lightning_module if self.trainer is not None else None
        consumed = getattr(module, "iteration", None)
        if consumed is None:
            return {"sampler": self.sampler.state_dict()} if self.sampler is not None else {}
        return {"sampler": {"drawn": int(consumed)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            if self.sampler is not None:
                self.sampler.load_state_dict(state["sampler"])
            else:
                self._pending_state = state["sampler"]
