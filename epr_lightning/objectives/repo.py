"""REPO family: rewrite the token advantages so that a policy-gradient step stops draining entropy.

Theorem 1 of the paper (docs/methods.md §1): ΔH ≈ −η·E_π[π·A·L] with L = log π + H (the centred log-prob). Subtracting
β·L from the advantage adds η·β·E_π[π·L²] ≥ 0 (for β > 0) to that change.

| Class | A' | coefficient |
|---|---|---|
| ``REPO`` | A − β·L | fixed β (general form, needs the exact entropy H) |
| ``REPOR`` | A − ζ·\\|A\\|·log π | ζ (adapted by the controller); raw log-prob, no entropy needed |
| ``REPOD`` | A − β·L | β = ζ·ΣA·(π·L − S) / Σπ·L² over the minibatch [X] experimental |

All inputs are detached (``Objective.token_advantages`` detaches them); ``logp`` is the sampled token's
log-prob. Coefficients are plain float attributes a controller may overwrite between iterations, saved via
``state_dict``. Each call leaves ``last_stats`` (floats, declared on ``AdvantageTransform``) for logging.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from epr_lightning.objectives.base import AdvantageTransform, masked_mean


def _require_entropy(entropy: Tensor | None, who: str) -> Tensor:
    if entropy is None:
        raise ValueError(
            f"{who} needs the exact per-token entropy (needs_entropy=True) but got entropy=None; "
            "the module must compute full-vocab entropies for this objective"
        )
    return entropy


def centred_logprob(logp: Tensor, entropy: Tensor) -> Tensor:
    """L = log π(a|s) − E_π log π(·|s) = log π + H."""
    return logp + entropy


def repo_advantages(advantages: Tensor, logp: Tensor, entropy: Tensor, beta: float | Tensor) -> Tensor:
    """General REPO: A − β·L (docs/methods.md §5.1)."""
    return advantages - beta * centred_logprob(logp, entropy)


def repo_r_advantages(
    advantages: Tensor, logp: Tensor, zeta: float, logp_floor: float = -20.0, sign_preserving: bool = True
) -> Tensor:
    """REPO-R: A_R = A − ζ·|A|·max(log π, floor) (docs/methods.md §5.2).

    With ``sign_preserving`` A_R is clamped to ≥ 0 where A > 0 and ≤ 0 where A < 0 (binds only for
    log π < −1/|ζ|). A = 0 stays 0.
    """
    lp = logp.clamp_min(logp_floor)
    out = advantages - zeta * advantages.abs() * lp
    if sign_preserving:
        out = torch.where(
            advantages > 0, out.clamp_min(0.0), torch.where(advantages < 0, out.clamp_max(0.0), out)
        )
    return out


def shaping_stats(advantages: Tensor, shaped: Tensor, mask: Tensor) -> dict[str, float]:
    """What a transform did to the advantages of the masked tokens, split by the sign of A:

    ``neg_zeroed_frac`` / ``neg_flipped_frac``: share of A < 0 tokens whose shaped advantage is 0 / > 0 (the
    penalty on a wrong answer's token removed / turned into a reward); ``pos_zeroed_frac`` / ``pos_flipped_frac``
    likewise for A > 0; ``neg_ratio`` / ``pos_ratio``: mean |A'| / |A| over those tokens (1 = untouched).
    A sign with no token has no keys (so a mean over minibatches counts only those that had such tokens).
    """
    live = mask > 0
    out: dict[str, float] = {}
    for name, side in (("neg", live & (advantages < 0)), ("pos", live & (advantages > 0))):
        count = int(side.sum())
        if count == 0:
            continue
        a, b = advantages[side].float(), shaped[side].float()
        out[f"{name}_zeroed_frac"] = float((b == 0).sum()) / count
        out[f"{name}_flipped_frac"] = float((torch.sign(b) == -torch.sign(a)).sum()) / count
        out[f"{name}_ratio"] = float((b.abs() / a.abs()).mean())
    return out


def repo_d_beta(
    advantages: Tensor, logp: Tensor, entropy: Tensor, mask: Tensor, zeta: float, collision: Tensor
) -> Tensor:
    """[X] β = ζ·Σ_t A_t·(π_t·L_t − S_t) / Σ_t π_t·L_t² over the masked sampled tokens (0 if the denominator is 0).

    A step on sampled token b changes H by −η·A_b·(π_b·L_b − S) (S = Σ_a π_a²·L_a); for b ∼ π its expectation is
    −η·Σ_a π_a²·(A_a − E_π A)·L_a, and that of the −β·L_b term is +η·β·Σ_a π_a²·L_a² (E_π L = 0). So ζ = 1 cancels
    the first-order entropy change (theory.py) pooled over the minibatch rather than per state, also when the
    advantages are not centred per state (sequence advantages copied onto every token never are).
    """
    p = logp.exp()
    ell = centred_logprob(logp, entropy)
    num = (advantages * (p * ell - collision) * mask).sum()
    den = (p * ell * ell * mask).sum()
    return torch.where(
        den > 0, zeta * num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den)
    )


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


class REPO(AdvantageTransform):
    """General REPO with a fixed coefficient: A' = A − β·(log π + H).

    Args:
        beta: β; > 0 adds entropy, < 0 removes it, 0 is the identity. A constant β is a score-function
            estimate of an entropy bonus β·H (docs/methods.md §5.1).
    """

    needs_entropy = True

    def __init__(self, beta: float = 0.0) -> None:
        self.beta = _finite("beta", beta)

    def __call__(
        self,
        advantages: Tensor,
        logp: Tensor,
        entropy: Tensor | None,
        mask: Tensor,
        collision: Tensor | None = None,
    ) -> Tensor:
        entropy = _require_entropy(entropy, "REPO")
        out = repo_advantages(advantages, logp, entropy, self.beta) * mask
        self.last_stats = {
            "beta": self.beta,
            "adv_change_abs": float(masked_mean((out - advantages).abs(), mask)),
        }
        return out

    coefficients = {"beta": "beta"}


class REPOR(AdvantageTransform):
    """REPO-R, the paper's headline variant: A_R = A − ζ·|A|·log π(a|s) (docs/methods.md §5.2, sign clamp from SkyRL).

    Args:
        zeta: ζ, adapted by the ζ controller (signed; |ζ| in [1e-4, 0.05] there).
        logp_floor: log π is floored here before use (keeps −inf/very rare tokens bounded); must be < 0.
        sign_preserving: clamp A_R so it never changes the sign of a nonzero A.
        logprob: ``raw`` = the paper's log π (always ≤ 0: every token's advantage moves up, so a wrong answer's
            penalty shrinks and, with the clamp, vanishes for rare tokens); ``centred`` = [our variant] the
            centred L = log π + H of Theorem 1 (needs the exact entropy): zero on average under π, so it
            penalises a wrong answer's likely tokens more and its rare ones less instead of sparing all of them.
    """

    keeps_zero_advantage = True  # A − ζ·|A|·(log π or L) is 0 where A = 0, token by token

    def __init__(
        self,
        zeta: float = 1e-3,
        logp_floor: float = -20.0,
        sign_preserving: bool = True,
        logprob: Literal["raw", "centred"] = "raw",
    ) -> None:
        self.zeta = _finite("zeta", zeta)
        self.logp_floor = _finite("logp_floor", logp_floor)
        if self.logp_floor >= 0:
            raise ValueError(f"logp_floor must be < 0 (a log-probability), got {logp_floor!r}")
        self.sign_preserving = bool(sign_preserving)
        if logprob not in ("raw", "centred"):
            raise ValueError(f"REPOR.logprob must be 'raw' or 'centred', got {logprob!r}")
        self.logprob = logprob
        self.needs_entropy = logprob == "centred"

    def __call__(
        self,
        advantages: Tensor,
        logp: Tensor,
        entropy: Tensor | None,
        mask: Tensor,
        collision: Tensor | None = None,
    ) -> Tensor:
        if self.logprob == "centred":  # L = log π + H (floored like log π): the centred variant
            logp = centred_logprob(
                logp.clamp_min(self.logp_floor), _require_entropy(entropy, "REPOR(centred)")
            )
        out = repo_r_advantages(advantages, logp, self.zeta, self.logp_floor, self.sign_preserving) * mask
        unclamped = repo_r_advantages(advantages, logp, self.zeta, self.logp_floor, sign_preserving=False)
        self.last_stats = {
            "zeta": self.zeta,
            "adv_change_abs": float(masked_mean((out - advantages).abs(), mask)),
            "zeta_abs_logp": float(masked_mean(abs(self.zeta) * logp.clamp_min(self.logp_floor).abs(), mask)),
            "clamped_frac": float(masked_mean((unclamped != out).to(mask.dtype), mask)),
            **{f"shaping/{k}": v for k, v in shaping_stats(advantages, out, mask).items()},
        }
        return out

    coefficients = {"zeta": "zeta"}


class REPOD(AdvantageTransform):
    """[X] EXPERIMENTAL REPO-D, our reconstruction (docs/methods.md §5.3), not the paper's formula.

    A' = A − β·L with β = ζ·Σ A·(π·L − S) / Σ π·L² over the minibatch's masked sampled tokens (π = exp(log π)
    of the sampled token, L = log π + H, S = Σ_a π_a²·L_a at that position). ζ = 1 is the first-order decorrelating coefficient; the ζ controller
    adapts ζ within [1e-3, 10].

    Args:
        zeta: ζ multiplier of the decorrelating β.
    """

    needs_entropy = True

    def __init__(self, zeta: float = 1.0) -> None:
        self.zeta = _finite("zeta", zeta)

    def __call__(
        self,
        advantages: Tensor,
        logp: Tensor,
        entropy: Tensor | None,
        mask: Tensor,
        collision: Tensor | None = None,
    ) -> Tensor:
        entropy = _require_entropy(entropy, "REPOD")
        if collision is None:
            raise ValueError(
                "REPOD needs S = Σ_a π_a²·(log π_a + H) per position (collision=...); the module computes it in "
                "its log-prob pass"
            )
        beta = repo_d_beta(advantages, logp, entropy, mask, self.zeta, collision)
        out = repo_advantages(advantages, logp, entropy, beta) * mask
        self.last_stats = {
            "zeta": self.zeta,
            "beta": float(beta),
            "adv_change_abs": float(masked_mean((out - advantages).abs(), mask)),
        }
        return out

    coefficients = {"zeta": "zeta"}
