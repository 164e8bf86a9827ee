"""Prompts with reference answers from a local JSONL file (one JSON object per line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from epr_lightning.tasks.answers import ExactAnswerReward
from epr_lightning.tasks.base import Example, RewardFunction, Split, Task


def read_jsonl_examples(
    path: str | Path,
    prompt_field: str = "prompt",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    on_empty_prompt: Literal["error", "skip"] = "error",
) -> tuple[list[Example], int]:
    """Read ``path`` into examples; returns ``(examples, number of skipped empty prompts)``.

    Blank lines are ignored. Every error is a ``ValueError`` naming ``file:line``: malformed JSON (with the
    decoder's message), a line that is not an object, a missing or non-string prompt, a missing answer
    field, a missing id field, a duplicate id. Fields other than prompt/answer/id go into ``Example.meta``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    examples: list[Example] = []
    seen_ids: dict[str, int] = {}
    skipped = 0
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            try:
                record: Any = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: malformed JSON: {err.msg} (column {err.colno})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if prompt_field not in record:
                raise ValueError(f"{where}: missing field {prompt_field!r} (the prompt_field)")
            prompt = record[prompt_field]
            if not isinstance(prompt, str):
                raise ValueError(
                    f"{where}: field {prompt_field!r} must be a string, got {type(prompt).__name__}"
                )
            if not prompt.strip():
                if on_empty_prompt == "skip":
                    skipped += 1
                    continue
                raise ValueError(
                    f"{where}: field {prompt_field!r} is empty (set on_empty_prompt='skip' to skip)"
                )
            answer = None
            if answer_field is not None:
                if answer_field not in record or record[answer_field] is None:
                    raise ValueError(f"{where}: missing field {answer_field!r} (the answer_field)")
                answer = str(record[answer_field])
            if id_field is not None:
                if id_field not in record:
                    raise ValueError(f"{where}: missing field {id_field!r} (the id_field)")
                ex_id = str(record[id_field])
            else:
                ex_id = f"{path.stem}:{lineno}"
            if ex_id in seen_ids:
                raise ValueError(f"{where}: duplicate id {ex_id!r} (first seen on line {seen_ids[ex_id]})")
            seen_ids[ex_id] = lineno
            meta = {k: v for k, v in record.items() if k not in (prompt_field, answer_field, id_field)}
            examples.append(Example(id=ex_id, prompt=prompt, answer=answer, meta=meta))
    return examples, skipped


class JSONLTask(Task):
    """Prompts and reference answers from local JSONL files; the default verifier is exact-answer match.

    Validation comes from ``val_path`` or, with ``val_fraction`` > 0, from the last
    ``round(val_fraction × n)`` lines of ``path`` (a fixed split; shuffle the file beforehand if its order
    is meaningful). Files are read on first use; ``skipped_empty`` counts prompts skipped as empty.

    Args:
        path: training JSONL file.
        prompt_field: key of the prompt text.
        answer_field: key of the reference answer (numbers are stringified); ``None`` for reward functions
            that need no reference.
        id_field: key of a unique example id; ``None`` uses ``"<file stem>:<line>"``.
        val_path: validation JSONL file (same fields).
        val_fraction: fraction of ``path`` held out for validation when ``val_path`` is not given.
        reward: overrides the default ``ExactAnswerReward()``.
        on_empty_prompt: ``"error"`` stops at an empty prompt; ``"skip"`` drops it and counts it.
        system_prompt: optional system message.
    """

    def __init__(
        self,
        path: str,
        prompt_field: str = "prompt",
        answer_field: str | None = "answer",
        id_field: str | None = None,
        val_path: str | None = None,
        val_fraction: float = 0.0,
        reward: RewardFunction | None = None,
        on_empty_prompt: Literal["error", "skip"] = "error",
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(reward=reward, system_prompt=system_prompt)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_path is not None and val_fraction > 0:
            raise ValueError("give either val_path or val_fraction, not both")
        if on_empty_prompt not in ("error", "skip"):
            raise ValueError(f"on_empty_prompt must be 'error' or 'skip', got {on_empty_prompt!r}")
        self.path, self.val_path, self.val_fraction = path, val_path, val_fraction
        self.prompt_field, self.answer_field, self.id_field = prompt_field, answer_field, id_field
        self.on_empty_prompt = on_empty_prompt
        self.skipped_empty = 0
        self._splits: dict[str, list[Example]] | None = None

    def default_reward(self) -> RewardFunction:
        return ExactAnswerReward()

    def _read(self, path: str) -> list[Example]:
        examples, skipped = read_jsonl_examples(
            path, self.prompt_field, self.answer_field, self.id_field, self.on_empty_prompt
        )
        self.skipped_empty += skipped
        return examples

    def _load(self) -> dict[str, list[Example]]:
        if self._splits is None:
            self.skipped_empty = 0
            train = self._read(self.path)
            if self.val_path is not None:
                val = self._read(self.val_path)
            else:
                n_val = round(self.val_fraction * len(train))
                train, val = train[: len(train) - n_val], train[len(train) - n_val :]
            if not train:
                raise ValueError(f"{self.path}: no training examples")
            self._splits = {"train": train, "val": val}
        return self._splits

    def examples(self, split: Split) -> list[Example]:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return list(self._load()[split])
