"""The Objective: advantage estimator → transform chain → policy loss (+ extra terms) → aggregation.

Each piece is a class chosen by ``class_path`` in YAML; this class only composes them, in the order of the
paper's algorithm box. Adaptable coefficients (REPO ζ, ADAPO ε_high, entropy-bonus β) live on the pieces
and are saved through ``state_dict`` into every checkpoint.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from epr_lightning.objectives.advantages import GRPOAdvantage
from epr_lightning.objectives.aggregation import AggregationMode, Normaliser, aggregate
from epr_lightning.objectives.base import (
    Adaptable,
    AdvantageEstimator,
    AdvantageTransform,
    LossOutput,
    LossTerm,
    PolicyBatch,
    PolicyLoss,
    broadcast_to_tokens,
)
from epr_lightning.objectives.losses import PPOClipLoss


class Objective:
    """Composes the RL objective.

    Args:
        advantage: sequence-level estimator (GRPO, Dr.GRPO, RLOO…).
        transforms: token-level advantage transforms applied in order (REPO, REPO-R, REPO-D…).
        loss: the policy surrogate (PPO-clip with ε_low/ε_high, GSPO, REINFORCE…).
        terms: extra per-token loss terms (entropy bonus, KL to reference, KL-Cov…).
        aggregation: how per-token losses become a scalar.
        norm_length: the constant divisor of ``seq_mean_token_sum_norm`` (Dr.GRPO); None = the generation
            budget ``sampling.max_new_tokens``, which the module passes in.
        transform_logprob: which detached log-prob the transforms see: ``current`` (the paper's choice) or
            ``old`` (π_old, recomputed by the trainer before the update).
    """

    def __init__(
        self,
        advantage: AdvantageEstimator | None = None,
        transforms: list[AdvantageTransform] | None = None,
        loss: PolicyLoss | None = None,
        terms: list[LossTerm] | None = None,
        aggregation: AggregationMode = "token_mean",
        transform_logprob: str = "current",
        norm_length: int | None = None,
    ) -> None:
        if transform_logprob not in ("current", "old"):
            raise ValueError(
                f"objective.transform_logprob must be 'current' or 'old', got {transform_logprob!r}"
            )
        if aggregation not in get_args(AggregationMode):
            raise ValueError(
                f"objective.aggregation must be one of {get_args(AggregationMode)}, got {aggregation!r}"
            )
        self.advantage = advantage if advantage is not None else GRPOAdvantage()
        self.transforms = list(transforms or [])
        self.loss = loss if loss is not None else PPOClipLoss()
        self.terms = list(terms or [])
        self.aggregation = aggregation
        self.transform_logprob = transform_logprob
        if norm_length is not None and norm_length < 1:
            raise ValueError(f"objective.norm_length must be >= 1 or null, got {norm_length!r}")
        self.norm_length = norm_length

    def set_generation_budget(self, max_new_tokens: int) -> None:
        """Dr.GRPO's constant normaliser defaults to the generation budget (called by the module)."""
        if self.norm_length is None:
            self.norm_length = int(max_new_tokens)

    # -- what the module must compute for us ---------------------------------------------------------
    @property
    def needs_entropy_grad(self) -> bool:
        return any(t.needs_entropy_grad for t in self.terms)

    @property
    def needs_reference(self) -> bool:
        return any(t.needs_reference for t in self.terms)

    @property
    def on_policy_only(self) -> bool:
        return self.loss.on_policy_only

    @property
    def zero_advantage_rows_inert(self) -> bool:
        """True when a row whose sequence advantage is 0 adds exactly nothing to the update, so the update may
        leave it out of the gradient pass (``update.py``): the surrogate gives no gradient at A = 0
        (``PolicyLoss.zero_advantage_inert``), every transform keeps A = 0 at 0 token by token
        (``AdvantageTransform.keeps_zero_advantage``: REPO-R yes, REPO's A − β·L no), there is no extra term
        (an entropy bonus or a KL acts at A = 0 too), and the aggregation's denominators do not depend on which
        rows are scored (Dr.GRPO's constant is set; the token and sequence counts come from the whole minibatch).
        """
        fixed_norm = self.aggregation != "seq_mean_token_sum_norm" or self.norm_length is not None
        return (
            fixed_norm
            and not self.terms
            and self.loss.zero_advantage_inert
            and all(t.keeps_zero_advantage for t in self.transforms)
        )

    def check_settings(self, num_generations: int, single_step: bool) -> None:
        """Fail at config time, not after the first rollout: a strictly on-policy loss with more than one
        optimizer step per rollout, or a group size the advantage cannot use (GRPO's std or RLOO at G=1)."""
        if self.on_policy_only and not single_step:
            raise ValueError(
                f"{type(self.loss).__name__} is strictly on-policy: use ppo_epochs=1, "
                "num_minibatches=1 (or null) and minibatch_size=null (one update per rollout)"
            )
        try:
            self.sequence_advantages(
                torch.arange(float(num_generations)), torch.zeros(num_generations, dtype=torch.long)
            )
        except ValueError as err:
            raise ValueError(
                f"model.num_generations={num_generations} does not suit "
                f"{type(self.advantage).__name__}: {err}"
            ) from None

    # -- the stages ----------------------------------------------------------------------------------
    def sequence_advantages(self, rewards: Tensor, group_index: Tensor) -> Tensor:
        return self.advantage(rewards.float(), group_index)

    def token_advantages(
        self,
        seq_adv: Tensor,
        mask: Tensor,
        logp: Tensor,
        entropy: Tensor | None,
        collision: Tensor | None = None,
    ) -> Tensor:
        """Broadcast to tokens, then run the transform chain on detached inputs."""
        adv = broadcast_to_tokens(seq_adv, mask)
        ent = entropy.detach() if entropy is not None else None
        col = collision.detach() if collision is not None else None
        for transform in self.transforms:
            adv = transform(adv, logp.detach(), ent, mask, collision=col) * mask
        return adv.detach()

    def compute_loss(self, batch: PolicyBatch, normaliser: Normaliser | None = None) -> LossOutput:
        """Per-token policy loss + extra terms, aggregated to a scalar (global means given a ``normaliser``).

        Metric names come back namespaced: ``loss/pg``, ``loss/<TermClass>``, ``loss/total`` and
        ``policy/<name>`` for what the pieces report (clip fractions, ratios…).
        """

        def reduce(per_token: Tensor) -> Tensor:
            return aggregate(per_token, batch.mask, self.aggregation, self.norm_length, normaliser)

        out = self.loss(batch)
        per_token = out.loss
        metrics = {f"policy/{k}": v for k, v in out.metrics.items()}
        metrics["loss/pg"] = reduce(out.loss).detach()
        token_stats = dict(out.token_stats)
        for term in self.terms:
            t = term(batch)
            per_token = per_token + t.loss
            metrics.update({f"policy/{k}": v for k, v in t.metrics.items()})
            metrics[f"loss/{type(term).__name__}"] = reduce(t.loss).detach()
            token_stats.update(t.token_stats)
        loss = reduce(per_token)
        metrics["loss/total"] = loss.detach()
        return LossOutput(loss=loss, metrics=metrics, token_stats=token_stats)

    # -- persistence of adapted coefficients ----------------------------------------------------------
    def _pieces(self) -> dict[str, object]:
        pieces: dict[str, object] = {"loss": self.loss}
        inner, name = getattr(self.loss, "base", None), "loss.base"
        while isinstance(inner, PolicyLoss):  # wrappers (Clip-Cov, KL-Cov) expose the surrogate they wrap
            pieces[name] = inner
            inner, name = getattr(inner, "base", None), name + ".base"
        pieces.update({f"transforms.{i}": t for i, t in enumerate(self.transforms)})
        pieces.update({f"terms.{i}": t for i, t in enumerate(self.terms)})
        return pieces

    def state_dict(self) -> dict[str, dict[str, float]]:
        return {name: piece.state_dict() for name, piece in self._pieces().items()}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        pieces = self._pieces()
        for name, sub in state.items():
            if name not in pieces:
                raise KeyError(f"checkpoint has objective state for {name!r}, which this objective lacks")
            pieces[name].load_state_dict(sub)  # type: ignore[attr-defined]

    # -- named coefficients: what controllers adapt --------------------------------------------------
    def _owners(self, name: str) -> list[tuple[Adaptable, str]]:
        pieces = [p for p in self._pieces().values() if isinstance(p, Adaptable)]
        return [(p, p.coefficients[name]) for p in pieces if name in p.coefficients]

    def coefficients(self) -> dict[str, float | None]:
        """Every adaptable coefficient of the pieces by name (``zeta``, ``beta``, ``eps_high``, …)."""
        pieces = [p for p in self._pieces().values() if isinstance(p, Adaptable)]
        return {name: getattr(p, attr) for p in pieces for name, attr in p.coefficients.items()}

    def coefficient_pieces(self, name: str) -> list[str]:
        """The type names of the pieces that hold a coefficient called ``name`` (one, unless misconfigured)."""
        return [type(p).__name__ for p, _ in self._owners(name)]

    def _owner(self, name: str) -> tuple[Adaptable, str]:
        owners = self._owners(name)
        if len(owners) != 1:
            pieces = ", ".join(type(p).__name__ for p, _ in owners)
            raise KeyError(
                f"the objective has {'no' if not owners else 'several'} coefficient {name!r}"
                + (f" ({pieces})" if owners else f"; it has {sorted(self.coefficients())}")
            )
        return owners[0]

    def coefficient(self, name: str) -> float:
        piece, attr = self._owner(name)
        return float(getattr(piece, attr))

    def set_coefficient(self, name: str, value: float) -> None:
        """The one way a coefficient changes during training (the piece reads it from the next step on)."""
        piece, attr = self._owner(name)
        setattr(piece, attr, float(value))

    def find(self, kind: type) -> list[object]:
        """Every piece of the given type (wrapped surrogates included)."""
        return [p for p in self._pieces().values() if isinstance(p, kind)]
