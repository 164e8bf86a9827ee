"""Pure entropy-controller update rules: one coefficient step per rollout iteration, plus the measurement.

| Rule | Used by | Step |
|---|---|---|
| ``zeta_step`` | ``REPOZetaController`` | double/halve ζ on a signed log scale (docs/methods.md §6.1) |
| ``clip_higher_step`` | ``ClipHigherController`` (ADAPO) | ε_high ×κ^{±1} within [ε_low, max] [X] |
| ``adaptive_bonus_step`` | ``AdaptiveEntropyBonus`` | coef ±δ within [min, max] (Skywork-OR1) |

``entropy_direction`` is the shared sign (+1 raise, −1 lower, 0 inside the tolerance band) and
``iteration_entropy`` the all-reduced token-mean entropy of π_old the controllers feed into these rules.
The Callback classes that apply them live in ``controllers.py``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from epr_lightning.metrics import all_reduce
from epr_lightning.record import StepRecord

EntropySource = Literal["exact", "mc"]
InitialSource = Literal["validation", "rollout"]


def entropy_direction(entropy: float, target: float, tolerance: float = 0.0) -> int:
    """+1 when entropy is below target (raise it), −1 when above, 0 inside the band |H − H*| ≤ tolerance·H*."""
    if abs(entropy - target) <= tolerance * abs(target):
        return 0
    return 1 if entropy < target else -1


def zeta_step(
    zeta: float,
    entropy: float,
    target: float,
    zeta_min: float,
    zeta_max: float,
    tolerance: float = 0.0,
    sign_flip: bool = True,
) -> float:
    """The ζ controller rule of docs/methods.md §6.1 (doubling/halving on a signed log scale).

    Below target: ζ > 0 doubles (capped at ζ_max); ζ = 0 starts at +ζ_min; ζ < 0 halves, and a halving that
    would land inside (−ζ_min, ζ_min) flips to +ζ_min. Above target: the mirror image toward −ζ_max.
    ``sign_flip=False`` [X]: ζ stays in [ζ_min, ζ_max] — above target it halves down to ζ_min and stops there,
    so ζ_min is a floor of entropy preservation rather than the edge of a flip to sharpening.
    """
    d = entropy_direction(entropy, target, tolerance)
    if not sign_flip:
        if zeta < 0:
            raise ValueError(f"zeta={zeta!r} is negative but sign_flip=False keeps ζ in [zeta_min, zeta_max]")
        return min(max(zeta * 2.0**d, zeta_min), zeta_max)
    if d > 0:  # raise
        if zeta > 0:
            return min(2.0 * zeta, zeta_max)
        if zeta == 0:
            return zeta_min
        half = zeta / 2.0
        return zeta_min if half > -zeta_min else half
    if d < 0:  # lower
        if zeta < 0:
            return max(2.0 * zeta, -zeta_max)
        half = zeta / 2.0
        return -zeta_min if half < zeta_min else half
    return zeta


def clip_higher_step(
    eps_high: float,
    entropy: float,
    target: float,
    eps_low: float,
    eps_high_max: float = 1.0,
    kappa: float = 1.25,
    tolerance: float = 0.0,
) -> float:
    """[X] ADAPO, our design (docs/methods.md §6.2): ε_high ← clip(ε_high·κ^{±1}, ε_low, ε_high_max).

    κ when entropy is below target (a looser upper clip lets rare tokens with A > 0 grow), 1/κ when above.
    """
    d = entropy_direction(entropy, target, tolerance)
    new = eps_high * kappa**d
    return min(max(new, eps_low), eps_high_max)


def adaptive_bonus_step(
    coef: float,
    entropy: float,
    target: float,
    delta: float,
    coef_min: float = 0.0,
    coef_max: float = 1.0,
    tolerance: float = 0.0,
) -> float:
    """Skywork-OR1's adaptive entropy coefficient: coef ± δ (up when below target), clipped to [min, max]."""
    d = entropy_direction(entropy, target, tolerance)
    return min(max(coef + d * delta, coef_min), coef_max)


def iteration_entropy(record: StepRecord, source: EntropySource, device: Any = None) -> float:
    """Token-mean entropy of π_old over the completion tokens of the *global* batch (all-reduced over ranks).

    ``exact``: full-vocab H(s_t) (``record.entropy``); ``mc``: mean −log π_old of the sampled tokens.
    """
    m = record.loss_mask.double()
    values = record.entropy if source == "exact" else -record.old_logp
    sums = torch.stack([(values.double() * m).sum(), m.sum()])
    sums = all_reduce(sums, "sum", device)
    return float(sums[0] / sums[1].clamp_min(1.0))
