"""Entropy controllers: once per rollout iteration, move one objective coefficient so entropy tracks H*.

| Controller | Adapts | Rule (pure function) |
|---|---|---|
| ``REPOZetaController`` | ζ of ``REPOR``/``REPOD`` (β of ``REPO``) | ``zeta_step``: double/halve on a signed log scale (docs/methods.md §6.1) |
| ``ClipHigherController`` (ADAPO) | ε_high of ``PPOClipLoss``/``GSPOLoss`` | ``clip_higher_step``: ×κ^{±1} within [ε_low, max] [X] |
| ``AdaptiveEntropyBonus`` | coef of ``EntropyBonus`` | ``adaptive_bonus_step``: ±δ within [min, max] (Skywork-OR1) |

The pure rules (and ``iteration_entropy``) live in ``control_rules.py``, the shared plumbing (timing, state,
saturation warning) in ``controller_base.py``.
"""

from __future__ import annotations

import math

from .control_rules import (
    EntropySource,
    InitialSource,
    adaptive_bonus_step,
    clip_higher_step,
    zeta_step,
)
from .controller_base import EntropyController, _positive
from .targets import EntropyTarget


class REPOZetaController(EntropyController):
    """The REPO ζ controller (docs/methods.md §6.1): entropy below H* doubles ζ, above halves it, on a signed log scale.

    Adapts ``REPOR.zeta`` or ``REPOD.zeta`` (the REPO-D YAML uses bounds [1e-3, 10]); on a general ``REPO``
    transform it adapts ``beta`` with the same rule (our extension [X]; set bounds in β's units).

    Args:
        target: H* (default: the iteration-0 entropy).
        zeta_min: smallest |ζ| (> 0); a halving below it flips the sign.
        zeta_max: largest |ζ| (> zeta_min).
        initial_zeta: starting ζ (None = the transform's configured value); |initial_zeta| ≤ zeta_max.
        tolerance: no change while |H − H*| ≤ tolerance·H* (0 = the paper's rule).
        entropy_source: ``exact`` (full-vocab H) or ``mc`` (mean −log π of sampled tokens).
        name: distinguishes several controllers (metrics ``ctrl/<name>/…``, checkpoint key).
        saturation_patience: warn after this many consecutive iterations at ±zeta_max with entropy still on the
            wrong side (0 = never).
        initial_entropy_from: what H* is measured on (see ``EntropyController.measure_initial_entropy``):
            ``validation`` (the iteration-0 validation when the run has one, else the first rollout) or
            ``rollout``.
        smoothing: weight of the previous reading in an exponential moving average of the rollout entropy
            (0 = each rollout's own entropy, the paper's rule; see ``EntropyController.read``).
        sign_flip: True (the paper's rule): above target, a halving below zeta_min flips ζ negative (REPO then
            sharpens). False [X]: ζ stays in [zeta_min, zeta_max], so zeta_min is a floor that keeps preserving
            entropy (see ``zeta_step``).
    """

    adapts = ("zeta", "beta")
    method_yaml = "configs/method/repo_r.yaml"

    def __init__(
        self,
        target: EntropyTarget | None = None,
        zeta_min: float = 1e-4,
        zeta_max: float = 0.05,
        initial_zeta: float | None = None,
        tolerance: float = 0.0,
        entropy_source: EntropySource = "exact",
        name: str | None = None,
        saturation_patience: int = 5,
        initial_entropy_from: InitialSource = "validation",
        smoothing: float = 0.0,
        sign_flip: bool = True,
    ) -> None:
        super().__init__(
            target, entropy_source, tolerance, name, saturation_patience, initial_entropy_from, smoothing
        )
        self.sign_flip = bool(sign_flip)
        self.zeta_min = _positive("zeta_min", zeta_min)
        self.zeta_max = _positive("zeta_max", zeta_max)
        if not self.zeta_min < self.zeta_max:
            raise ValueError(f"zeta_min must be < zeta_max, got zeta_min={zeta_min!r}, zeta_max={zeta_max!r}")
        if initial_zeta is not None:
            self.check_coef(float(initial_zeta), "initial_zeta")
            self.initial_coef = float(initial_zeta)

    def check_coef(self, coef: float, where: str) -> None:
        if not (math.isfinite(coef) and abs(coef) <= self.zeta_max):
            raise ValueError(
                f"{where}={coef!r} is outside the controller's range |ζ| ≤ zeta_max={self.zeta_max} "
                "(REPO-D uses zeta_min=1e-3, zeta_max=10: configs/method/repo_d.yaml)"
            )
        if not self.sign_flip and not self.zeta_min <= coef:
            raise ValueError(
                f"{where}={coef!r} is below zeta_min={self.zeta_min}: with sign_flip=false ζ stays in "
                f"[zeta_min, zeta_max]; start at zeta_min or above"
            )

    def limit(self, direction: int) -> tuple[float, str]:
        if direction < 0 and not self.sign_flip:
            return self.zeta_min, "zeta_min"
        return direction * self.zeta_max, "zeta_max"

    def rule(self, coef: float, entropy: float, target: float) -> float:
        return zeta_step(coef, entropy, target, self.zeta_min, self.zeta_max, self.tolerance, self.sign_flip)


class ClipHigherController(EntropyController):
    """ADAPO [X] (our design, docs/methods.md §6.2): ε_high ← clip(ε_high·κ^{±1}, ε_low, eps_high_max) once per iteration.

    Raises ε_high while entropy is below H*, lowers it while above. Adapts ``PPOClipLoss`` or ``GSPOLoss``
    (also when wrapped by Clip-Cov/KL-Cov); ε_low is read from that loss and stays fixed.

    Args:
        target: H* (default: the iteration-0 entropy).
        kappa: multiplicative step (> 1); 2 mirrors the ζ controller, 1.1–1.25 is gentler.
        eps_high_max: upper bound of ε_high.
        initial_eps_high: starting ε_high (None = the loss's configured value).
        tolerance: no change while |H − H*| ≤ tolerance·H*.
        entropy_source: ``exact`` or ``mc``.
        name: distinguishes several controllers (metrics ``ctrl/<name>/…``, checkpoint key).
        saturation_patience: warn after this many consecutive iterations at eps_high_max (entropy below H*) or
            at ε_low (above H*) (0 = never).
        initial_entropy_from: ``validation`` or ``rollout`` (as for ``REPOZetaController``).
        smoothing: moving-average weight of the previous entropy reading (as for ``REPOZetaController``).
    """

    adapts = ("eps_high",)
    method_yaml = "configs/method/adapo.yaml"

    def __init__(
        self,
        target: EntropyTarget | None = None,
        kappa: float = 1.25,
        eps_high_max: float = 1.0,
        initial_eps_high: float | None = None,
        tolerance: float = 0.0,
        entropy_source: EntropySource = "exact",
        name: str | None = None,
        saturation_patience: int = 5,
        initial_entropy_from: InitialSource = "validation",
        smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            target, entropy_source, tolerance, name, saturation_patience, initial_entropy_from, smoothing
        )
        self.kappa = _positive("kappa", kappa)
        if not self.kappa > 1:
            raise ValueError(f"kappa must be > 1 (the multiplicative step), got {kappa!r}")
        self.eps_high_max = _positive("eps_high_max", eps_high_max)
        if initial_eps_high is not None:
            self.initial_coef = _positive("initial_eps_high", initial_eps_high)

    @property
    def eps_low(self) -> float:
        """ε_low of the adapted loss (fixed; the lower bound of ε_high)."""
        return self._objective.coefficient("eps_low")

    def check_coef(self, coef: float, where: str) -> None:
        low = self.eps_low
        if not (low <= coef <= self.eps_high_max) or coef <= 0:
            raise ValueError(
                f"{where}={coef!r} must be > 0 and within [eps_low={low}, eps_high_max={self.eps_high_max}]"
            )

    def limit(self, direction: int) -> tuple[float, str]:
        return (self.eps_high_max, "eps_high_max") if direction > 0 else (self.eps_low, "eps_low")

    def rule(self, coef: float, entropy: float, target: float) -> float:
        return clip_higher_step(
            coef, entropy, target, self.eps_low, self.eps_high_max, self.kappa, self.tolerance
        )


class AdaptiveEntropyBonus(EntropyController):
    """Adaptive entropy-bonus coefficient (Skywork-OR1; TRL-style): coef += δ below H*, −= δ above, clipped.

    Adapts ``EntropyBonus.coef`` (an explicit −coef·H loss term; needs full logits) and hands H* to the term,
    which then applies the bonus only while the entropy is at or below it (coef·1{H ≤ H*}, Skywork-OR1's rule):
    after an overshoot the bonus stops acting at once instead of waiting for coef to decay.

    Args:
        target: H* (default: the iteration-0 entropy).
        delta: additive step per iteration (> 0).
        coef_min: lower bound (>= 0).
        coef_max: upper bound (> coef_min).
        initial_coef: starting coefficient (None = the term's configured value).
        tolerance: no change while |H − H*| ≤ tolerance·H*.
        entropy_source: ``exact`` or ``mc``.
        name: distinguishes several controllers (metrics ``ctrl/<name>/…``, checkpoint key).
        saturation_patience: warn after this many consecutive iterations at coef_max (entropy below H*) or
            coef_min (above H*) (0 = never).
        initial_entropy_from: ``validation`` or ``rollout`` (as for ``REPOZetaController``).
        smoothing: moving-average weight of the previous entropy reading (as for ``REPOZetaController``).
    """

    adapts = ("entropy_coef",)
    method_yaml = "configs/method/adaptive_entropy_bonus.yaml"

    def __init__(
        self,
        target: EntropyTarget | None = None,
        delta: float = 1e-3,
        coef_min: float = 0.0,
        coef_max: float = 0.05,
        initial_coef: float | None = None,
        tolerance: float = 0.0,
        entropy_source: EntropySource = "exact",
        name: str | None = None,
        saturation_patience: int = 5,
        initial_entropy_from: InitialSource = "validation",
        smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            target, entropy_source, tolerance, name, saturation_patience, initial_entropy_from, smoothing
        )
        self.delta = _positive("delta", delta)
        self.coef_min = float(coef_min)
        self.coef_max = _positive("coef_max", coef_max)
        if not (math.isfinite(self.coef_min) and 0 <= self.coef_min < self.coef_max):
            raise ValueError(
                f"need 0 <= coef_min < coef_max, got coef_min={coef_min!r}, coef_max={coef_max!r}"
            )
        if initial_coef is not None:
            self.check_coef(float(initial_coef), "initial_coef")
            self.initial_coef = float(initial_coef)

    def check_coef(self, coef: float, where: str) -> None:
        if not (self.coef_min <= coef <= self.coef_max):
            raise ValueError(
                f"{where}={coef!r} must be within [coef_min={self.coef_min}, coef_max={self.coef_max}]"
            )

    def limit(self, direction: int) -> tuple[float, str]:
        return (self.coef_max, "coef_max") if direction > 0 else (self.coef_min, "coef_min")

    def publish_target(self, target: float) -> None:
        self._objective.set_coefficient("entropy_target", target)

    def rule(self, coef: float, entropy: float, target: float) -> float:
        return adaptive_bonus_step(
            coef, entropy, target, self.delta, self.coef_min, self.coef_max, self.tolerance
        )
