"""Contracts of the objective pieces: what an advantage estimator, an advantage transform, a policy loss
and an extra loss term take and return. Implementations live beside this file, one concept per module.

Every [n, T] tensor is aligned with ``TokenBatch.input_ids`` (position t = token t); values at positions
where ``mask`` is 0 are ignored. Everything here is fp32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from torch import Tensor


@dataclass
class PolicyBatch:
    """One minibatch as the loss sees it.

    Attributes:
        logp: current policy log-prob of each token (carries the gradient).
        old_logp: log-prob under the policy that the update started from (π_old, detached).
        sampler_logp: log-prob reported by the rollout engine (detached).
        advantages: token-level advantages [n, T] after the transform chain (detached).
        mask: loss mask [n, T] (1.0 on completion tokens).
        entropy: exact per-token entropy [n, T] of the current policy (with grad when the objective's
            ``needs_entropy_grad``), or None when not computed.
        ref_logp: reference-policy log-probs (detached) when ``needs_reference``.
        logp_fp32 / old_logp_fp32: fp32 versions of ``logp`` / ``old_logp`` (detached) when the trainer computes
            its log-probs in bf16 (the precision experiment); the clipped losses then report how many clip
            decisions the bf16 ratio changed.
    """

    logp: Tensor
    old_logp: Tensor
    sampler_logp: Tensor
    advantages: Tensor
    mask: Tensor
    entropy: Tensor | None = None
    ref_logp: Tensor | None = None
    logp_fp32: Tensor | None = None
    old_logp_fp32: Tensor | None = None


@dataclass
class LossOutput:
    """A loss value plus what to log and what callbacks may want.

    ``metrics`` holds detached scalars named without a namespace (the module prefixes ``loss/`` or
    ``policy/``); ``token_stats`` holds detached [n, T] tensors such as ``clip_upper``/``clip_lower`` masks.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    token_stats: dict[str, Tensor] = field(default_factory=dict)


class Adaptable:
    """A piece with adaptable coefficients: ``coefficients`` maps each one's public name (what
    ``Objective.coefficient`` / ``Objective.set_coefficient`` take, e.g. ``zeta``) to the attribute the piece
    reads. The objective saves and restores them (keyed by attribute; None values are left out)."""

    coefficients: ClassVar[dict[str, str]] = {}

    def state_dict(self) -> dict[str, float]:
        values = {attr: getattr(self, attr) for attr in self.coefficients.values()}
        return {attr: value for attr, value in values.items() if value is not None}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class AdvantageEstimator(ABC):
    """Sequence-level advantages from scalar rewards and group membership."""

    @abstractmethod
    def __call__(self, rewards: Tensor, group_index: Tensor) -> Tensor:
        """rewards [N] float, group_index [N] long → advantages [N]."""


class AdvantageTransform(Adaptable, ABC):
    """Token-level rewrite of the advantages (REPO family, masks…); applied per minibatch.

    ``logp`` is the detached log-prob of the sampled token (the current policy's or π_old's, as the
    objective is configured); ``entropy`` the detached exact entropy at that position, or None; ``collision``
    the detached S = Σ_a π_a²·(log π_a + H) at that position (``logprobs.PolicyPass``), or None.
    """

    #: True when the transform needs the exact full-vocab entropy.
    needs_entropy: bool = False
    #: True when it maps A = 0 to exactly 0 token by token, and each token's output depends on that token's own
    #: inputs only (no statistic over the minibatch): rows whose advantages are all 0 may then be left out of the
    #: gradient pass (``update.py``) without changing any other row's advantages.
    keeps_zero_advantage: bool = False
    #: What the last call measured (floats), logged per minibatch as ``policy/<name>``; a transform sets it in
    #: ``__call__``. Empty (read-only) until then, and for transforms that measure nothing.
    last_stats: Mapping[str, float] = MappingProxyType({})

    @abstractmethod
    def __call__(
        self,
        advantages: Tensor,
        logp: Tensor,
        entropy: Tensor | None,
        mask: Tensor,
        collision: Tensor | None = None,
    ) -> Tensor:
        """advantages [n, T] → advantages [n, T]."""


class PolicyLoss(Adaptable, ABC):
    """The surrogate: per-token (or per-sequence) policy-gradient loss before aggregation."""

    #: True when the loss is only valid strictly on-policy (one update per rollout, no ratio).
    on_policy_only: bool = False
    #: True when a token with A = 0 has exactly zero loss and zero gradient and each row's loss depends on that
    #: row only (no statistic over the minibatch): rows whose advantages are all 0 may then be left out of the
    #: gradient pass (``update.py``) with the same update.
    zero_advantage_inert: bool = False

    @abstractmethod
    def __call__(self, batch: PolicyBatch) -> LossOutput:
        """Returns ``LossOutput`` whose ``loss`` is a per-token [n, T] tensor (aggregated by the Objective)."""


class LossTerm(Adaptable, ABC):
    """An extra per-token term added to the policy loss (entropy bonus, KL to reference, KL-Cov…)."""

    needs_entropy_grad: bool = False
    needs_reference: bool = False

    @abstractmethod
    def __call__(self, batch: PolicyBatch) -> LossOutput:
        """Returns a per-token [n, T] loss (aggregated together with the policy loss)."""


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def broadcast_to_tokens(seq_values: Tensor, mask: Tensor) -> Tensor:
    """[N] per-sequence values → [N, T] token values (zero where mask is 0)."""
    return seq_values[:, None].to(mask.dtype) * mask
