"""A reward that fails says so: the first failure of each kind is printed once, and a run whose every reward
fails stops.

A failing reward call (raising, timing out, non-finite) or a failed episode (``env_error``) scores 0 and is
counted (``rollout/reward_errors``; ``episode/ended_by/env_error``), so one bad sample never stops training.
A reward that fails on *every* call, though, would otherwise train to the end at reward 0 in silence.
``RewardFailureStop`` therefore

* warns (``RewardFailureWarning``, on stderr) with the first failure of each kind — ``error:<Exception>``,
  ``timeout``, ``nonfinite``, or ``env_…`` for environments — once per kind per run, naming the exception, its
  message and the file:line in the reward's own code;
* raises ``RewardFailureError`` (one line from the CLI) when every reward of ``max_in_row`` iterations in a row
  failed: ``model.max_failed_reward_iterations`` (default 3; ``null`` or 0 never stops). It raises before
  that iteration's update, so every checkpoint written before it is intact.
"""

from __future__ import annotations

import inspect
import os
import sysconfig
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import torch
from torch import Tensor

from epr_lightning.metrics import all_reduce

#: the argument that sets ``max_in_row``, named in the stop message.
SETTING = "model.max_failed_reward_iterations"
_MAX_MESSAGE = 300
#: files that only call the reward (their frames are never "the reward's code").
_CALLERS = {
    str(Path(__file__).resolve().parent / rel)
    for rel in ("tasks/scoring.py", "tasks/trl_reward.py", "rollout/episodes.py", "reward_failures.py")
}
_LIBRARIES = tuple(
    os.path.realpath(sysconfig.get_paths()[k]) + os.sep
    for k in ("stdlib", "platstdlib", "purelib", "platlib")
)


class RewardFailureError(RuntimeError):
    """Every reward (or episode) failed for ``max_failed_reward_iterations`` iterations in a row."""


class RewardFailureWarning(UserWarning):
    """The first failure of a kind in this run (shown once per kind)."""


@dataclass(frozen=True)
class Failure:
    """One failed reward call or episode: its kind, what went wrong (one line) and where (``file:line``)."""

    kind: str
    message: str
    where: str | None = None

    def describe(self) -> str:
        return f"{self.message} ({self.where})" if self.where else self.message


class ScoredBatch(Protocol):
    """What ``RewardFailureStop.check`` reads of an iteration's scores (``tasks.scoring.RolloutScores``)."""

    rewards: Tensor
    failures: int
    first_failures: dict[str, Failure]


def one_line(text: str) -> str:
    """Whitespace collapsed, at most ``_MAX_MESSAGE`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def user_frame(tb: TracebackType | None) -> str | None:
    """``file:line in function`` of the innermost traceback frame in the reward's own code: frames of the
    standard library, installed packages and the scoring machinery are skipped (the innermost frame outside
    the machinery when the reward itself is an installed package); None when no frame qualifies."""
    frames = [
        (frame.f_code, lineno)
        for frame, lineno in traceback.walk_tb(tb)
        if os.path.realpath(frame.f_code.co_filename) not in _CALLERS
    ]
    own = [f for f in frames if not os.path.realpath(f[0].co_filename).startswith(_LIBRARIES)]
    chosen = own or frames
    if not chosen:
        return None
    code, lineno = chosen[-1]
    return f"{code.co_filename}:{lineno} in {code.co_qualname}"


def code_location(fn: Any) -> str | None:
    """``file:line in name`` where a reward is defined: a function, a callable object's ``__call__``, or the first
    of a TRL-style reward's ``functions``; None when it cannot be found (builtins, C extensions)."""
    target = (getattr(fn, "functions", None) or [fn])[0]
    if not (inspect.isfunction(target) or inspect.ismethod(target)) and callable(target):
        target = type(target).__call__  # a callable object: where its __call__ is defined
    target = inspect.unwrap(target)
    code = getattr(target, "__code__", None)
    if code is None:
        return None
    return f"{code.co_filename}:{code.co_firstlineno} in {getattr(target, '__qualname__', code.co_name)}"


def exception_failure(err: BaseException, fallback_where: str | None = None, prefix: str = "") -> Failure:
    """The ``error:<Type>`` failure of a raised exception, located in the reward's code (else ``fallback_where``)."""
    name = type(err).__name__
    where = user_frame(err.__traceback__) or fallback_where
    return Failure(f"{prefix}error:{name}", one_line(f"{name}: {err}"), where)


def first_of_each_kind(failures: list[Failure | None]) -> dict[str, Failure]:
    """The first failure of each kind, in order."""
    out: dict[str, Failure] = {}
    for failure in failures:
        if failure is not None and failure.kind not in out:
            out[failure.kind] = failure
    return out


class RewardFailureStop:
    """Warn once per kind of reward failure; stop after ``max_in_row`` iterations whose every reward failed.

    Args:
        max_in_row: consecutive all-failed iterations that stop the run (None or 0 = never stop; still warns).

    State (``state_dict``): the current streak and its first failure, so a resumed run keeps counting. Which
    kinds were already shown is not checkpointed: a resumed run shows them again, once.
    """

    def __init__(self, max_in_row: int | None = 3) -> None:
        if max_in_row is not None and max_in_row < 0:
            raise ValueError(f"{SETTING} must be >= 0 or null, got {max_in_row}")
        self.max_in_row = max_in_row or None
        self.in_row = 0
        self.streak_start = 0
        self.first: Failure | None = None
        self.shown: set[str] = set()

    def check(self, scores: ScoredBatch, iteration: int, device: torch.device | str | None = None) -> None:
        """Warn about new kinds of failure in ``scores``; count the iteration; raise at ``max_in_row``.

        In a multi-process run the counts are summed over ranks first (every rank must call this), so all
        ranks take the same decision.
        """
        for kind, failure in scores.first_failures.items():
            if kind not in self.shown:
                self.shown.add(kind)
                warnings.warn(
                    _warning_text(failure, iteration, self.max_in_row), RewardFailureWarning, stacklevel=2
                )
        if self.max_in_row is None:
            return
        local = torch.tensor([float(scores.failures), float(scores.rewards.numel())], dtype=torch.float64)
        failed, total = all_reduce(local, "sum", device).tolist()
        self.observe(failed, total, iteration, next(iter(scores.first_failures.values()), None))

    def observe(self, failed: float, total: float, iteration: int, first: Failure | None = None) -> None:
        """Count one iteration with ``failed`` of ``total`` rewards failed (``first``: one of its failures)."""
        if total <= 0:  # nothing was scored (e.g. every prompt skipped): neither a failure nor a success
            return
        if failed < total:
            self.in_row, self.first = 0, None
            return
        if self.in_row == 0:
            self.streak_start = iteration
        self.in_row += 1
        self.first = self.first or first
        if self.max_in_row is not None and self.in_row >= self.max_in_row:
            raise RewardFailureError(self.stop_message(iteration))

    def stop_message(self, iteration: int) -> str:
        env = self.first is not None and self.first.kind.startswith("env_")
        what = "every episode ended with env_error" if env else "every reward failed"
        first = self.first.describe() if self.first is not None else "(on another rank)"
        return (
            f"{what} in {self.in_row} iterations in a row (iterations {self.streak_start}-{iteration}); first "
            f"error: {first}. Stopped before the update of iteration {iteration}; checkpoints already written "
            f"are intact. Fix the {'environment' if env else 'reward'}, or set {SETTING} (now {self.max_in_row}; "
            "null never stops)."
        )

    def state_dict(self) -> dict[str, Any]:
        first = self.first
        return {
            "in_row": self.in_row,
            "streak_start": self.streak_start,
            "first": None if first is None else [first.kind, first.message, first.where],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.in_row = int(state["in_row"])
        self.streak_start = int(state["streak_start"])
        self.first = Failure(*state["first"]) if state["first"] else None


def _warning_text(failure: Failure, iteration: int, max_in_row: int | None) -> str:
    if failure.kind.startswith("env_"):
        effect, what = (
            "failed episodes end with env_error and reward 0 (episode/ended_by/env_error)",
            "episode",
        )
    else:
        effect, what = "failed samples score 0 (rollout/reward_errors)", "reward"
    stop = f"the run stops after {max_in_row} iterations in a row" if max_in_row else "the run never stops"
    return (
        f"reward failure '{failure.kind}' at iteration {iteration}: {failure.describe()}; {effect}. Shown once per "
        f"kind; {stop} in which every {what} fails ({SETTING})."
    )
