"""``EntropyController``: the plumbing every entropy controller shares (``controllers.py`` has the three).

Timing (docs/methods.md §6): ``on_train_batch_end`` runs after the iteration's optimizer steps; the entropy it reads is
``StepRecord.entropy`` of π_old, i.e. measured *before* this iteration's update. H* comes from iteration 0's
record (before any update). The new coefficient is written through ``Objective.set_coefficient`` and is used from
the next iteration on. Entropy sums are all-reduced, so every DDP rank computes the same coefficient.

Controllers are usually given to the module (``model.init_args.controllers`` in ``configs/method/*.yaml``), which
returns them from ``configure_callbacks``: that way a method config never replaces ``trainer.callbacks``.
The objective alone owns and checkpoints the coefficient; a controller checkpoints only its own state (H*,
counters) under ``state_key``.

Saturation: a bounded knob can run out. When the coefficient has sat at the bound of the direction entropy needs
(e.g. ADAPO's ε_high at ``eps_high_max`` while H < H*) for ``saturation_patience`` consecutive iterations, the
controller warns once per such episode: it can no longer move entropy toward H*, and the run needs a wider bound
or another method. ``ctrl/saturated`` is 1 in every iteration that ends at that bound (0 otherwise).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from ._logging import get_record
from .control_rules import EntropySource, InitialSource, entropy_direction, iteration_entropy
from .targets import EntropyTarget, InitialEntropy


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


class EntropyController(Callback):
    """Shared plumbing: find the coefficient, read H and H*, apply ``rule``, write back, log, checkpoint.

    Subclasses define ``adapts`` (the objective coefficients it can adapt; the objective must hold exactly one of
    them) and ``rule``.
    """

    #: names of ``Objective.coefficients()`` this controller can adapt
    adapts: tuple[str, ...] = ()
    method_yaml = "configs/method/*.yaml"

    def __init__(
        self,
        target: EntropyTarget | None,
        entropy_source: EntropySource,
        tolerance: float,
        name: str | None,
        saturation_patience: int = 5,
        initial_entropy_from: InitialSource = "validation",
        smoothing: float = 0.0,
    ) -> None:
        if not (math.isfinite(float(smoothing)) and 0.0 <= smoothing < 1.0):
            raise ValueError(
                f"smoothing must be a number in [0, 1) (the weight of the previous reading), got {smoothing!r}"
            )
        self.smoothing = float(smoothing)
        self.smoothed_entropy: float | None = None
        if initial_entropy_from not in get_args(InitialSource):
            raise ValueError(
                f"initial_entropy_from must be one of {get_args(InitialSource)}, got {initial_entropy_from!r}"
            )
        self.initial_entropy_from = initial_entropy_from
        if entropy_source not in get_args(EntropySource):
            raise ValueError(
                f"entropy_source must be one of {get_args(EntropySource)}, got {entropy_source!r}"
            )
        if not (math.isfinite(float(tolerance)) and tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0 (relative to H*), got {tolerance!r}")
        if (
            isinstance(saturation_patience, bool)
            or not isinstance(saturation_patience, int)
            or saturation_patience < 0
        ):
            raise ValueError(
                f"saturation_patience must be an integer >= 0 (0 = never warn), got {saturation_patience!r}"
            )
        self.saturation_patience = saturation_patience
        self.saturated_iterations = 0
        self.target = target if target is not None else InitialEntropy()
        self.entropy_source = entropy_source
        self.tolerance = float(tolerance)
        self.name = name
        self.initial_coef: float | None = None  # None: start from the objective's configured value
        self.initial_entropy: float | None = None
        self.updates = 0
        self.last_entropy: float | None = None
        self.last_target: float | None = None
        self._restored = False
        self._objective: Any = None
        self._name = ""

    # -- subclass API ---------------------------------------------------------------------------------
    @abstractmethod
    def rule(self, coef: float, entropy: float, target: float) -> float:
        """The next coefficient."""

    def check_coef(self, coef: float, where: str) -> None:
        """Raise a clear error when a starting coefficient is outside the controller's range."""

    def publish_target(self, target: float) -> None:
        """Hand H* to the adapted piece when its rule needs it (the adaptive bonus's gate); no-op by default."""

    @abstractmethod
    def limit(self, direction: int) -> tuple[float, str]:
        """(bound, the argument that sets it): where the coefficient ends up after pushing entropy in
        ``direction`` (+1 raise, −1 lower) as far as the controller can."""

    @property
    def coef_name(self) -> str:
        """The adapted coefficient's name (also the metric name)."""
        return self._name or self.adapts[0]

    @property
    def coef(self) -> float:
        """The coefficient, as the objective holds it (the controller keeps no copy)."""
        if self._objective is None:
            raise RuntimeError(f"{type(self).__name__} reads its coefficient only after setup()")
        return self._objective.coefficient(self._name)

    # -- naming and state -----------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return type(self).__qualname__ + (f"[{self.name}]" if self.name else "")

    def metric(self, what: str) -> str:
        return f"ctrl/{self.name}/{what}" if self.name else f"ctrl/{what}"

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_entropy": self.initial_entropy,
            "updates": self.updates,
            "last_entropy": self.last_entropy,
            "last_target": self.last_target,
            "saturated_iterations": self.saturated_iterations,
            "smoothed_entropy": self.smoothed_entropy,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        initial, smoothed = state["initial_entropy"], state["smoothed_entropy"]
        self.initial_entropy = None if initial is None else float(initial)
        self.updates = int(state["updates"])
        self.last_entropy = state["last_entropy"]
        self.last_target = state["last_target"]
        self.saturated_iterations = int(state["saturated_iterations"])
        self.smoothed_entropy = None if smoothed is None else float(smoothed)
        self._restored = True

    # -- hooks ----------------------------------------------------------------------------------------
    def bind(self, objective: Any) -> None:
        """Find the one coefficient to adapt; a clear error when there is none or several."""
        found = [(name, piece) for name in self.adapts for piece in objective.coefficient_pieces(name)]
        if not found:
            has = ", ".join(sorted(objective.coefficients())) or "none"
            raise ValueError(
                f"{type(self).__name__} adapts {' or '.join(self.adapts)} but the objective has no such coefficient "
                f"(it has: {has}); compose the matching method config, e.g. --config {self.method_yaml}"
            )
        if len(found) > 1:
            names = ", ".join(piece for _, piece in found)
            raise ValueError(
                f"{type(self).__name__}: the objective has several pieces it could adapt ({names}); keep one"
            )
        self._objective, self._name = objective, found[0][0]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        objective = getattr(pl_module, "objective", None)
        if objective is None:
            raise ValueError(
                f"{type(self).__name__} needs a module with an `objective` (epr_lightning.module.RLModule)"
            )
        self.bind(objective)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        current = self.coef
        if self._restored:  # the objective restored its coefficient itself
            return
        start = self.initial_coef if self.initial_coef is not None else current
        (piece,) = self._objective.coefficient_pieces(self._name)
        self.check_coef(start, f"{piece}.{self._name}")
        self._objective.set_coefficient(self._name, start)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = get_record(outputs)
        if record is None:
            return
        h = iteration_entropy(record, self.entropy_source, pl_module.device)
        if self.initial_entropy is None:
            if record.iteration != 0:
                rank_zero_warn(
                    f"{type(self).__name__}: no iteration-0 entropy (controller added mid-run?); measuring H* from "
                    f"iteration {record.iteration}"
                )
            self.initial_entropy = self.measure_initial_entropy(pl_module, h)
        h = self.read(h)
        target = float(self.target.value(record.iteration, self.initial_entropy))
        self._objective.set_coefficient(self._name, float(self.rule(self.coef, h, target)))
        self.publish_target(target)
        self.updates += 1
        self.last_entropy, self.last_target = h, target
        self.track_saturation(h, target)
        for what, value in (
            (self.coef_name, self.coef),
            ("target_entropy", target),
            ("entropy_error", h - target),
            ("saturated", float(self.saturated_iterations > 0)),
        ):
            pl_module.log(self.metric(what), torch.tensor(float(value)), on_step=True, on_epoch=False)

    def read(self, rollout_entropy: float) -> float:
        """The entropy the rule compares with H*: this rollout's, or with ``smoothing`` > 0 an exponential moving
        average ``s·previous + (1 − s)·this rollout`` that starts from the initial entropy. The entropy of one
        rollout of a few prompts is noisy from the choice of prompts alone (measured in docs/results.md, "The
        regime, and why"); an average over iterations keeps that noise from driving the coefficient, at the cost
        of a lag of about s/(1 − s) iterations."""
        if self.smoothing == 0.0:
            return rollout_entropy
        previous = self.smoothed_entropy if self.smoothed_entropy is not None else self.initial_entropy
        assert previous is not None  # the initial entropy is measured before the first reading
        self.smoothed_entropy = self.smoothing * previous + (1.0 - self.smoothing) * rollout_entropy
        return self.smoothed_entropy

    def measure_initial_entropy(self, pl_module: Any, rollout_entropy: float) -> float:
        """The entropy before any update that H* is relative to.

        ``validation`` (the default): the token-mean entropy of the module's iteration-0 validation — held-out
        prompts × ``val_num_generations`` samples, usually several times the data of one rollout — when the run
        validated before its first update; otherwise, and with ``rollout``, the iteration-0 rollout's entropy. One
        rollout of a few prompts is a noisy reference (how noisy: docs/results.md, "The regime, and why"), and
        its noise would set the target off by as much for the whole run.
        """
        initial = getattr(pl_module, "initial_validation", None) or {}
        if self.initial_entropy_from == "validation" and "val/entropy" in initial:
            return float(initial["val/entropy"])
        return rollout_entropy

    def track_saturation(self, entropy: float, target: float) -> None:
        """Count iterations at the bound of the needed direction; warn once when the count reaches the patience."""
        direction = entropy_direction(entropy, target, self.tolerance)
        bound, arg = self.limit(direction) if direction else (math.nan, "")
        at_bound = direction != 0 and math.isclose(self.coef, bound, rel_tol=1e-9, abs_tol=1e-12)
        self.saturated_iterations = self.saturated_iterations + 1 if at_bound else 0
        if self.saturation_patience and self.saturated_iterations == self.saturation_patience:
            side = "below" if direction > 0 else "above"
            rank_zero_warn(
                f"{type(self).__name__}: {self.coef_name} has been at its bound {bound:g} ({arg}) for "
                f"{self.saturated_iterations} iterations while the entropy ({entropy:.4g}) is still {side} the target "
                f"({target:.4g}); this controller cannot move the entropy further. Widen {arg} or choose another "
                "method (configs/method/repo_r.yaml)"
            )
