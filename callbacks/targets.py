"""Entropy targets H*(iteration) for the controllers (docs/methods.md §6: H* defaults to the entropy at iteration 0).

Every target answers ``value(iteration, initial_entropy)``: ``iteration`` is the rollout iteration whose
entropy is being compared (0-based), ``initial_entropy`` the token-mean entropy measured at iteration 0 before
any update (π_old of the first rollout). Targets are chosen by ``class_path`` in YAML, e.g.

    target:
      class_path: epr_lightning.callbacks.ScheduledEntropy
      init_args: {start: 1.0, end: 0.5, num_iterations: 200, kind: cosine, relative: true}
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal, get_args

ScheduleKind = Literal["linear", "cosine", "constant"]


def _finite_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0 (an entropy in nats), got {value!r}")
    return value


class EntropyTarget(ABC):
    """Base class: H* for a given iteration."""

    @abstractmethod
    def value(self, iteration: int, initial_entropy: float) -> float:
        """The target entropy (nats per token) at ``iteration``, given the iteration-0 entropy."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class InitialEntropy(EntropyTarget):
    """The paper's default: H* = scale × the entropy measured at iteration 0 (before any update).

    Args:
        scale: multiple of the initial entropy to hold (1.0 = preserve it; 0.8 = allow a 20% drop).
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"InitialEntropy.scale must be a finite number > 0, got {scale!r}")

    def value(self, iteration: int, initial_entropy: float) -> float:
        return self.scale * float(initial_entropy)


class FixedEntropy(EntropyTarget):
    """A constant absolute target (nats per token), independent of the initial entropy.

    Args:
        value: H* in nats per token (>= 0).
    """

    def __init__(self, value: float) -> None:
        self.target = _finite_nonneg("FixedEntropy.value", value)

    def value(self, iteration: int, initial_entropy: float) -> float:
        return self.target


def schedule_value(
    start: float, end: float, num_iterations: int, kind: ScheduleKind, iteration: int
) -> float:
    """Interpolate from ``start`` (iteration 0) to ``end`` (iteration ``num_iterations`` and after).

    linear: start + (end − start)·t;  cosine: end + (start − end)·(1 + cos(π·t))/2;  constant: start;
    with t = min(iteration / num_iterations, 1).
    """
    t = min(max(iteration, 0) / num_iterations, 1.0)
    if kind == "linear":
        return start + (end - start) * t
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "constant":
        return start
    raise ValueError(f"schedule kind must be one of {get_args(ScheduleKind)}, got {kind!r}")


class ScheduledEntropy(EntropyTarget):
    """A target that moves from ``start`` to ``end`` over ``num_iterations`` iterations, then stays at ``end``.

    Args:
        start: target at iteration 0 (nats, or a multiple of the initial entropy when ``relative``).
        end: target from iteration ``num_iterations`` on (ignored by ``kind="constant"``).
        num_iterations: length of the ramp in rollout iterations (>= 1).
        kind: ``linear``, ``cosine`` (slow–fast–slow) or ``constant`` (always ``start``).
        relative: read ``start``/``end`` as multiples of the iteration-0 entropy instead of nats.
    """

    def __init__(
        self,
        start: float,
        end: float,
        num_iterations: int,
        kind: ScheduleKind = "linear",
        relative: bool = False,
    ) -> None:
        self.start = _finite_nonneg("ScheduledEntropy.start", start)
        self.end = _finite_nonneg("ScheduledEntropy.end", end)
        if int(num_iterations) != num_iterations or num_iterations < 1:
            raise ValueError(
                f"ScheduledEntropy.num_iterations must be an integer >= 1, got {num_iterations!r}"
            )
        if kind not in get_args(ScheduleKind):
            raise ValueError(f"ScheduledEntropy.kind must be one of {get_args(ScheduleKind)}, got {kind!r}")
        self.num_iterations = int(num_iterations)
        self.kind = kind
        self.relative = bool(relative)

    def value(self, iteration: int, initial_entropy: float) -> float:
        v = schedule_value(self.start, self.end, self.num_iterations, self.kind, iteration)
        return v * float(initial_entropy) if self.relative else v
