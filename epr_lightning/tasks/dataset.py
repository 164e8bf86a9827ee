"""Prompts (and reference answers) from local JSONL / Parquet / CSV files, read with 🤗 ``datasets``.

Columns are mapped onto ``Example``: ``prompt_column`` (a text, or a list of chat messages), ``answer_column``,
``id_column``; every column except the prompt also goes into ``Example.meta`` under its own name, so a
TRL-style reward receives them as keyword arguments. Nothing is fetched from a hub: ``data_files`` are local.
"""

from __future__ import annotations

import glob
import json
import logging
import random
from pathlib import Path
from typing import Any, Literal

from epr_lightning.config_hub import shipped_data_file
from epr_lightning.tasks.answers import ExactAnswerReward
from epr_lightning.tasks.base import Example, RewardFunction, Split, Task

Format = Literal["json", "parquet", "csv"]
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
DataFiles = str | list[str] | dict[str, str | list[str]]


def _as_dict(data_files: DataFiles) -> dict[str, list[str]]:
    if isinstance(data_files, dict):
        return {k: [v] if isinstance(v, str) else list(v) for k, v in data_files.items()}
    return {"train": [data_files] if isinstance(data_files, str) else list(data_files)}


def _check_exists(files: dict[str, list[str]]) -> None:
    for paths in files.values():
        for path in paths:
            if glob.has_magic(path):
                if not glob.glob(path):
                    raise FileNotFoundError(
                        f"data_files: no file matches {path!r} (relative to {Path.cwd()})"
                    )
            elif not Path(path).is_file():
                raise FileNotFoundError(f"data_files: {path!r} does not exist (relative to {Path.cwd()})")


def _first_bad_json_line(files: dict[str, list[str]]) -> str | None:
    """``file:line: malformed JSON: …`` for the first line of a JSON Lines file that does not parse (or
    ``file:line: expected a JSON object`` for the first that is not an object)."""
    for paths in files.values():
        for pattern in paths:
            for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
                with open(path, encoding="utf-8") as handle:
                    for lineno, line in enumerate(handle, start=1):
                        if line.strip():
                            try:
                                record = json.loads(line)
                            except json.JSONDecodeError as err:
                                return f"{path}:{lineno}: malformed JSON: {err.msg} (column {err.colno})"
                            if not isinstance(record, dict):
                                return f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
    return None


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    """A chat-message prompt, checked: a non-empty list of ``{"role": str, "content": str}``."""
    if not value or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise ValueError(f"{where}: a message-list prompt must be [{{'role': ..., 'content': ...}}, ...]")
    return [{"role": m["role"], "content": m["content"]} for m in value]


class DatasetTask(Task):
    """Your own prompts from local files; the default verifier is exact-answer match.

    Validation comes from ``val_split`` (a split of ``data_files``) or, with ``val_fraction``/``val_size``,
    from rows of ``split`` held out by a seeded shuffle: the same files and seed always give the same split.

    Args:
        data_files: a file, a glob, a list of them, or ``{split name: files}`` (paths relative to the working
            directory), as in ``datasets.load_dataset``.
        format: ``json`` (JSON Lines), ``parquet`` or ``csv``; None = from the file extension.
        split: the split to train on (a plain file or list is the split ``train``).
        val_split: a split of ``data_files`` to validate on (e.g. ``validation``), or None.
        val_fraction: fraction of ``split`` held out for validation when ``val_split`` is None.
        val_size: number of rows held out instead of a fraction.
        prompt_column: the prompt: a text column, or a column holding a list of chat messages
            (``[{role, content}, ...]``, passed through the chat template as they are).
        answer_column: the reference answer (stringified); None for rewards that need none.
        id_column: a unique id; None = ``"<split>:<row>"``.
        prompt_template: a format string over the row's columns that builds a text prompt, e.g.
            ``"{question}\\n\\nPut the final answer in \\\\boxed{{}}."`` (then ``prompt_column`` is not needed).
        max_examples: use only the first N rows of each split (None = all).
        seed: the seed of the held-out choice.
        reward: overrides the default ``ExactAnswerReward()``.
        on_empty_prompt: ``"error"`` stops at an empty prompt; ``"skip"`` drops it and counts it.
        system_prompt: optional system message (put before message-list prompts that have none).
        cache_dir: where ``datasets`` keeps its Arrow cache (None = its default).
    """

    def __init__(
        self,
        data_files: DataFiles,
        format: Format | None = None,
        split: str = "train",
        val_split: str | None = None,
        val_fraction: float = 0.0,
        val_size: int | None = None,
        prompt_column: str = "prompt",
        answer_column: str | None = "answer",
        id_column: str | None = None,
        prompt_template: str | None = None,
        max_examples: int | None = None,
        seed: int = 0,
        reward: RewardFunction | None = None,
        on_empty_prompt: Literal["error", "skip"] = "error",
        system_prompt: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(reward=reward, system_prompt=system_prompt)
        # a path the shipped configs name (configs/task/...) also works after `pip install`, outside a clone
        self.files = {k: [shipped_data_file(p) for p in v] for k, v in _as_dict(data_files).items()}
        if split not in self.files:
            raise ValueError(f"task.split {split!r} is not a split of data_files (have {sorted(self.files)})")
        if val_split is not None and val_split not in self.files:
            raise ValueError(
                f"task.val_split {val_split!r} is not a split of data_files (have {sorted(self.files)})"
            )
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"task.val_fraction must be in [0, 1), got {val_fraction}")
        if val_size is not None and val_size < 0:
            raise ValueError(f"task.val_size must be >= 0, got {val_size}")
        if val_split is not None and (val_fraction > 0 or val_size):
            raise ValueError("give task.val_split or a held-out val_fraction/val_size, not both")
        if val_fraction > 0 and val_size is not None:
            raise ValueError("give task.val_fraction or task.val_size, not both")
        if format is not None and format not in _FORMATS.values():
            raise ValueError(f"task.format must be one of {sorted(set(_FORMATS.values()))}, got {format!r}")
        if on_empty_prompt not in ("error", "skip"):
            raise ValueError(f"task.on_empty_prompt must be 'error' or 'skip', got {on_empty_prompt!r}")
        if max_examples is not None and max_examples < 1:
            raise ValueError(f"task.max_examples must be >= 1, got {max_examples}")
        self.format = format or self._infer_format()
        self.split, self.val_split = split, val_split
        self.val_fraction, self.val_size = val_fraction, val_size
        self.prompt_column, self.answer_column, self.id_column = prompt_column, answer_column, id_column
        self.prompt_template = prompt_template
        self.max_examples, self.seed = max_examples, seed
        self.on_empty_prompt = on_empty_prompt
        self.cache_dir = cache_dir
        self.skipped_empty = 0
        self._splits: dict[str, list[Example]] | None = None

    def _infer_format(self) -> str:
        first = next(iter(self.files.values()))[0]
        suffix = Path(first).suffix.lower()
        if suffix not in _FORMATS:
            raise ValueError(f"task.format: cannot tell the format of {first!r} from {suffix!r}; set format")
        return _FORMATS[suffix]

    def default_reward(self) -> RewardFunction:
        return ExactAnswerReward()

    def _where(self, split: str) -> str:
        """The split's files, for error messages (the split named when there are several)."""
        files = ", ".join(self.files[split])
        return files if len(self.files) == 1 else f"{files} (split {split!r})"

    # ------------------------------------------------------------------------------------------- reading
    def _load_rows(self) -> dict[str, list[dict[str, Any]]]:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        _check_exists(self.files)
        # the library logs a parse error before raising it, and this error says it once (naming the line)
        library_log = logging.getLogger("datasets")
        level = library_log.level
        library_log.setLevel(logging.CRITICAL)
        try:
            loaded = datasets.load_dataset(self.format, data_files=self.files, cache_dir=self.cache_dir)
        except Exception as err:  # a file that does not parse: say which (and for JSON Lines, which line)
            located = _first_bad_json_line(self.files) if self.format == "json" else None
            root: BaseException = err
            while root.__cause__ is not None:  # datasets wraps the parser's error
                root = root.__cause__
            first_line = (str(root).strip().splitlines() or [type(root).__name__])[0]
            files = ", ".join(f for fs in self.files.values() for f in fs)
            raise ValueError(located or f"{files}: not readable as {self.format}: {first_line}") from err
        finally:
            library_log.setLevel(level)
        needed = ([] if self.prompt_template else [self.prompt_column]) + [self.answer_column, self.id_column]
        rows: dict[str, list[dict[str, Any]]] = {}
        for name, data in loaded.items():
            for column in filter(None, needed):
                if column not in data.column_names:
                    role = {self.prompt_column: "prompt", self.answer_column: "answer", self.id_column: "id"}[
                        column
                    ]
                    raise ValueError(
                        f"{self._where(name)}: no column {column!r} (the {role}_column); columns are {data.column_names}"
                    )
            n = len(data) if self.max_examples is None else min(len(data), self.max_examples)
            rows[name] = [data[i] for i in range(n)]
        return rows

    def _example(self, split: str, index: int, row: dict[str, Any], seen: dict[str, int]) -> Example | None:
        where = f"{self._where(split)} row {index}"
        messages = None
        if self.prompt_template is not None:
            try:
                prompt: Any = self.prompt_template.format(**row)
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"{where}: task.prompt_template: {type(err).__name__}: {err}") from None
        else:
            prompt = row[self.prompt_column]
            if prompt is None:  # e.g. a JSON Lines row without the key
                raise ValueError(f"{where}: column {self.prompt_column!r} (the prompt_column) is empty")
            if isinstance(prompt, list):
                messages = _messages(prompt, where)
                users = [m["content"] for m in messages if m["role"] == "user"]
                prompt = users[-1] if users else messages[-1]["content"]
            elif not isinstance(prompt, str):
                raise ValueError(f"{where}: column {self.prompt_column!r} must be a text or a message list")
        if not prompt.strip():
            if self.on_empty_prompt == "skip":
                self.skipped_empty += 1
                return None
            raise ValueError(f"{where}: the prompt is empty (set task.on_empty_prompt='skip' to skip)")
        answer = None
        if self.answer_column is not None:
            if row[self.answer_column] is None:
                raise ValueError(f"{where}: column {self.answer_column!r} (the answer_column) is empty")
            answer = str(row[self.answer_column])
        if self.id_column is not None and row[self.id_column] is None:
            raise ValueError(f"{where}: column {self.id_column!r} (the id_column) is empty")
        ex_id = str(row[self.id_column]) if self.id_column is not None else f"{split}:{index}"
        if ex_id in seen:
            raise ValueError(f"{where}: duplicate id {ex_id!r} (first seen in row {seen[ex_id]})")
        seen[ex_id] = index
        meta = {k: v for k, v in row.items() if k != self.prompt_column}
        return Example(id=ex_id, prompt=prompt, answer=answer, meta=meta, messages=messages)

    def _examples_of(self, split: str, rows: list[dict[str, Any]]) -> list[Example]:
        seen: dict[str, int] = {}
        made = (self._example(split, i, row, seen) for i, row in enumerate(rows))
        return [e for e in made if e is not None]

    def _load(self) -> dict[str, list[Example]]:
        if self._splits is None:
            self.skipped_empty = 0
            rows = self._load_rows()
            train = self._examples_of(self.split, rows[self.split])
            if self.val_split is not None:
                val = self._examples_of(self.val_split, rows[self.val_split])
            else:
                n_val = self.val_size if self.val_size is not None else round(self.val_fraction * len(train))
                if n_val >= len(train):
                    raise ValueError(
                        f"task: holding out {n_val} of {len(train)} rows leaves nothing to train on"
                    )
                order = list(range(len(train)))
                random.Random(self.seed).shuffle(order)
                held = set(order[:n_val])
                train, val = (
                    [e for i, e in enumerate(train) if i not in held],
                    [e for i, e in enumerate(train) if i in held],
                )
            if not train:
                raise ValueError(f"{self._where(self.split)}: no training examples")
            self._splits = {"train": train, "val": val}
        return self._splits

    def examples(self, split: Split) -> list[Example]:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return list(self._load()[split])
