"""Reward functions written for TRL's ``GRPOTrainer``, loaded from your own Python file and called in batches.

A TRL reward function takes the batch's prompts and completions plus every other dataset column as a
keyword argument (one list per column) and returns one float per completion (``None`` = not applicable)::

    def word_count_reward(prompts, completions, n_words, **kwargs) -> list[float]:
        return [1.0 if len(c.split()) == int(n) else 0.0 for c, n in zip(completions, n_words)]

``TRLReward(path="my_rewards.py", functions=["word_count_reward"])`` calls it once per rollout batch, under the
run's reward timeout; several functions are summed with ``weights``, as TRL does.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from epr_lightning.tasks.base import Example, RewardFunction


def load_module(path: str) -> Any:
    """A Python file (``*.py``, relative to the working directory) or an importable module name."""
    file = Path(path).expanduser()
    if file.suffix == ".py" or file.is_file():
        if not file.is_file():
            raise FileNotFoundError(f"reward file {path!r} does not exist (relative to {Path.cwd()})")
        name = "epr_reward_" + "".join(c if c.isalnum() else "_" for c in str(file.resolve().with_suffix("")))
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return sys.modules[name]
    return importlib.import_module(path)


class TRLReward(RewardFunction):
    """TRL-style batched reward functions ``fn(prompts, completions, **columns) -> list[float | None]``.

    ``prompts`` are the prompt texts (or the message lists of chat-message prompts, and then each completion
    is ``[{"role": "assistant", "content": text}]``, as TRL passes conversational data); ``columns`` are the
    example's other fields (``Example.meta``, e.g. every dataset column but the prompt) plus ``answer``. A
    function's ``None`` counts as 0 in the weighted sum; an item for which every function says ``None`` is
    non-finite (reward 0, counted). A function that raises, hangs past the timeout or returns the wrong number
    of values gives the whole batch 0, counted in ``rollout/reward_errors``; the first failure of each kind is
    printed once with the file:line in your function, and ``model.max_failed_reward_iterations`` iterations in a
    row in which every reward failed stop the run (``reward_failures.py``).

    Args:
        path: the Python file defining the functions (relative to the working directory), or a module name.
        functions: the function name(s).
        weights: one weight per function (None = all 1).
        success_threshold: a summed reward ≥ this counts as correct (pass@k, distinct correct answers).
    """

    batched = True

    def __init__(
        self,
        path: str,
        functions: str | list[str] = "reward",
        weights: list[float] | None = None,
        success_threshold: float = 1.0,
    ) -> None:
        names = [functions] if isinstance(functions, str) else list(functions)
        if not names:
            raise ValueError("TRLReward.functions is empty")
        if weights is not None and len(weights) != len(names):
            raise ValueError(f"TRLReward.weights has {len(weights)} values for {len(names)} functions")
        module = load_module(path)
        self.functions: list[Callable[..., Sequence[float | None]]] = []
        for name in names:
            fn = getattr(module, name, None)
            if not callable(fn):
                raise ValueError(f"reward file {path!r} has no function {name!r}")
            self.functions.append(fn)
        self.path, self.names = path, names
        self.weights = list(weights) if weights is not None else [1.0] * len(names)
        self.success_threshold = success_threshold

    def score_batch(self, examples: Sequence[Example], completions: Sequence[str]) -> list[float]:
        """One call of every function on the whole batch; the weighted sum per completion (NaN = no value)."""
        prompts = [e.messages if e.messages else e.prompt for e in examples]
        texts: list[Any] = [
            [{"role": "assistant", "content": c}] if e.messages else c
            for e, c in zip(examples, completions, strict=True)
        ]
        keys = dict.fromkeys(k for e in examples for k in e.meta if not k.startswith("_"))
        columns = {k: [e.meta.get(k) for e in examples] for k in keys}
        columns.setdefault("answer", [e.answer for e in examples])
        total = [0.0] * len(examples)
        seen = [False] * len(examples)
        for name, fn, weight in zip(self.names, self.functions, self.weights, strict=True):
            values = list(fn(prompts=prompts, completions=texts, **columns))
            if len(values) != len(examples):
                raise ValueError(f"{name} returned {len(values)} rewards for {len(examples)} completions")
            for i, value in enumerate(values):
                if value is not None:
                    total[i] += weight * float(value)
                    seen[i] = True
        return [t if s else math.nan for t, s in zip(total, seen, strict=True)]

    def __call__(self, example: Example, completion: str) -> float:
        return self.score_batch([example], [completion])[0]
