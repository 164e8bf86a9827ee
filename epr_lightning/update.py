"""The update stage of an iteration: ``ppo_epochs`` passes of minibatch policy-gradient steps over one rollout.

``PolicyUpdate`` is built once from its settings (``UpdateSettings``) and handed its collaborators: the
objective and the log-prob pass when it is built, the optimizer handles (``Optimization``) and the frozen
reference model when it runs. It reads nothing else of the LightningModule and owns the non-finite guard
(``NonFiniteGuard``). The loop is docs/methods.md §7.

No wasted work: when the objective gives rows whose advantage is 0 exactly no gradient
(``Objective.zero_advantage_rows_inert``: no entropy bonus, no KL, no transform that acts at A = 0), those rows
— every row of a group whose rewards are all equal, under GRPO — are left out of the gradient pass. The update is
the same: the minibatches, their order and the loss denominators (token and sequence counts of the whole
minibatch) do not change, and every minibatch keeps at least one row, so it still takes its optimizer step
(AdamW moves weights on a zero gradient too) and every rank joins the backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from epr_lightning.logprobs import PolicyPass, scatter_rows
from epr_lightning.master_weights import MasterWeights
from epr_lightning.objectives.aggregation import global_normaliser
from epr_lightning.objectives.base import LossOutput, PolicyBatch
from epr_lightning.objectives.objective import Objective
from epr_lightning.rollout.base import TokenBatch


def _multi_rank() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class PolicyPassFn(Protocol):
    """The log-prob pass (``RLModule.policy_pass``): the current policy's, or ``model``'s."""

    def __call__(
        self, tokens: TokenBatch, *, grad: bool, model: torch.nn.Module | None = None
    ) -> PolicyPass: ...


def scored_rows(rows: Tensor, skip: Tensor) -> Tensor:
    """The rows of a minibatch that get the gradient pass: those not in ``skip`` ([N] bool), or the first one when
    all are (so the minibatch still takes its optimizer step, on a zero gradient, and joins the all-reduce)."""
    kept = rows[~skip[rows]]
    return kept if len(kept) else rows[:1]


def zero_advantage_group_frac(seq_adv: Tensor, group_index: Tensor) -> float:
    """The share of groups (prompts) whose sequence advantages are all exactly 0."""
    _, group = torch.unique(group_index, return_inverse=True)
    nonzero = torch.zeros(int(group.max()) + 1, device=seq_adv.device)
    nonzero.index_add_(0, group, (seq_adv != 0).float())
    return float((nonzero == 0).float().mean())


def minibatch_rows(n: int, num_minibatches: int | None, minibatch_size: int | None) -> int:
    """Rows per minibatch: ⌈n / num_minibatches⌉, else ``minibatch_size``, else the whole rollout (≤ n)."""
    if num_minibatches is not None:
        return max(1, math.ceil(n / num_minibatches))
    return min(minibatch_size or n, n)


@dataclass(frozen=True)
class UpdateSettings:
    """The schedule and safeguards of the update (the ``model.*`` arguments of the same names)."""

    ppo_epochs: int = 1
    num_minibatches: int | None = None
    minibatch_size: int | None = None
    grad_clip: float | None = 1.0
    max_nonfinite_updates: int = 3
    skip_zero_advantage: bool = True  # leave inert rows (A = 0) out of the gradient pass; the same update

    def __post_init__(self) -> None:
        if self.ppo_epochs < 1:
            raise ValueError(f"model.ppo_epochs must be >= 1, got {self.ppo_epochs}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"model.minibatch_size must be >= 1, got {self.minibatch_size}")
        if self.num_minibatches is not None and self.num_minibatches < 1:
            raise ValueError(f"model.num_minibatches must be >= 1, got {self.num_minibatches}")
        if self.num_minibatches is not None and self.minibatch_size is not None:
            raise ValueError(
                f"set only one of model.num_minibatches ({self.num_minibatches}) and model.minibatch_size "
                f"({self.minibatch_size})"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"model.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.max_nonfinite_updates < 1:
            raise ValueError(f"model.max_nonfinite_updates must be >= 1, got {self.max_nonfinite_updates}")

    @property
    def single_step(self) -> bool:
        """At most one optimizer step per rollout, whatever its size (what on-policy-only losses need)."""
        return (
            self.ppo_epochs == 1
            and self.minibatch_size is None
            and (self.num_minibatches is None or self.num_minibatches == 1)
        )

    def rows_per_minibatch(self, n: int) -> int:
        return minibatch_rows(n, self.num_minibatches, self.minibatch_size)


@dataclass
class NonFiniteGuard:
    """Counts optimizer steps skipped for a non-finite loss or gradient; ``max_in_row`` in a row abort."""

    max_in_row: int
    in_row: int = 0
    total: int = 0

    def check(self, loss: float, grad_norm: float, iteration: int) -> bool:
        """True (and the streak reset) when both are finite; else count the skip, raising at ``max_in_row``."""
        if math.isfinite(grad_norm) and math.isfinite(loss):
            self.in_row = 0
            return True
        self.in_row += 1
        self.total += 1
        if self.in_row >= self.max_in_row:
            raise RuntimeError(
                f"{self.in_row} consecutive non-finite updates (loss={loss}, grad_norm={grad_norm}) at iteration "
                f"{iteration}; aborting. The last checkpoint written before this point is intact; lower the "
                "learning rate or check the rewards."
            )
        return False


@dataclass
class Optimization:
    """The trainer-side handles of one optimizer step (Lightning's optimizer and scheduler, manual backward)."""

    optimizer: Any
    scheduler: Any | None
    backward: Callable[[Tensor], None]
    params: Callable[[], Iterable[Tensor]]  # read after backward (FSDP2 swaps its parameters)
    master: MasterWeights | None = None  # bf16 compute: the grads go to its fp32 masters, clipped there


@dataclass
class UpdateStats:
    old: PolicyPass  # π_old over the whole rollout (detached)
    token_advantages: Tensor  # [N, T] after transforms, first epoch
    clip_upper: Tensor | None
    clip_lower: Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


def optimizer_step(
    optim: Optimization, loss: Tensor, grad_clip: float | None, guard: NonFiniteGuard, iteration: int
) -> float | None:
    """Backward, clip, step. Returns the grad norm, or None when the update was skipped as non-finite.

    In bf16 compute (``optim.master``) the gradients are moved to the fp32 masters first: the norm, the clip and
    the step are on fp32 gradients, and the step refreshes the bf16 working weights (``master_weights.py``).

    The backward always runs (under DDP every rank must join the gradient all-reduce); a non-finite
    gradient norm — which a non-finite loss on any rank produces — skips the step on all ranks alike.
    """
    opt = optim.optimizer
    opt.zero_grad(set_to_none=True)
    optim.backward(loss)
    if optim.master is not None:
        optim.master.take_grads()
    tensors = optim.params() if optim.master is None else optim.master.optimized
    params = [p for p in tensors if p.grad is not None]
    max_norm = grad_clip if grad_clip is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
    full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2
    norm_value = float(full_tensor() if full_tensor is not None else norm)
    if not guard.check(float(loss.detach()), norm_value, iteration):
        opt.zero_grad(set_to_none=True)
        return None
    opt.step()
    if optim.scheduler is not None:
        optim.scheduler.step()
    return norm_value


class OldPolicy:
    """π_old over the whole rollout, which the first minibatch completes.

    π_old is needed for every row before the first optimizer step, but the first minibatch is still on-policy
    when its gradient pass runs: that pass (detached) is its π_old, so the no-grad pass (``rest``) covers only
    the other rows, and with one epoch of one minibatch there is none at all (the ratio is then exactly 1).
    """

    def __init__(self, shape: torch.Size, first: Tensor, rest: Tensor, old_rest: PolicyPass | None) -> None:
        self.shape = shape
        self.first = first
        self.rest = rest
        self.old_rest = old_rest
        self.whole: PolicyPass | None = None  # assembled on the first minibatch

    def for_minibatch(self, rows: Tensor, width: int, cur: PolicyPass) -> PolicyPass:
        """π_old of ``rows`` (trimmed to ``width``); ``cur`` is their gradient pass, π_old before any step."""
        if self.whole is None:  # the first minibatch, before any step: this pass is its π_old
            sub_old = cur.detached()
            parts = [(self.first, sub_old)] + (
                [(self.rest, self.old_rest)] if self.old_rest is not None else []
            )
            self.whole = PolicyPass.assemble(self.shape, parts)
            return sub_old
        return self.whole.rows(rows, width)


@dataclass
class MinibatchStep:
    """What one minibatch step produced: its rows, their advantages after the transforms, the loss output, the
    transforms' stats and the gradient norm (None when the step was skipped as non-finite)."""

    rows: Tensor
    advantages: Tensor
    out: LossOutput
    transform_stats: dict[str, float]
    grad_norm: float | None


class UpdateAccumulator:
    """The update's statistics: scalars averaged over its minibatch steps, the first epoch's token advantages
    and the last epoch's clip masks, scattered into whole-rollout [N, T] tensors."""

    def __init__(self, shape: torch.Size, device: torch.device, ppo_epochs: int) -> None:
        self.full = {k: torch.zeros(shape, device=device) for k in ("adv", "up", "low")}
        self.last_epoch = ppo_epochs - 1
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, epoch: int, step: MinibatchStep) -> None:
        if epoch == 0:
            scatter_rows(self.full["adv"], step.rows, step.advantages)
        if epoch == self.last_epoch:
            for key, name in (("up", "clip_upper"), ("low", "clip_lower")):
                if name in step.out.token_stats:
                    scatter_rows(self.full[key], step.rows, step.out.token_stats[name])
        step_metrics = {k: float(v) for k, v in step.out.metrics.items()}
        step_metrics.update({f"policy/{k}": v for k, v in step.transform_stats.items()})
        if step.grad_norm is not None:
            step_metrics["train/grad_norm"] = step.grad_norm
        for k, v in step_metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def result(self, old: PolicyPass, lr: float) -> UpdateStats:
        metrics = {k: self.sums[k] / self.counts[k] for k in self.sums}
        metrics["train/lr"] = lr
        full = self.full
        has_clip = bool(full["up"].any() or full["low"].any()) or "policy/clipfrac_upper" in metrics
        return UpdateStats(
            old=old,
            token_advantages=full["adv"],
            clip_upper=full["up"] if has_clip else None,
            clip_lower=full["low"] if has_clip else None,
            metrics=metrics,
        )


class PolicyUpdate:
    """``ppo_epochs`` passes of minibatch updates over one rollout: π_old (``OldPolicy``), then one
    ``minibatch_step`` per minibatch, whose results an ``UpdateAccumulator`` gathers."""

    def __init__(self, settings: UpdateSettings, objective: Objective, policy_pass: PolicyPassFn) -> None:
        self.settings = settings
        self.objective = objective
        self.policy_pass = policy_pass
        self.guard = NonFiniteGuard(settings.max_nonfinite_updates)

    def __call__(
        self,
        tokens: TokenBatch,
        seq_adv: Tensor,
        *,
        iteration: int,
        optim: Optimization,
        reference: torch.nn.Module | None = None,
    ) -> UpdateStats:
        device = tokens.input_ids.device
        n = len(tokens)
        mb = self.settings.rows_per_minibatch(n)
        orders = self.epoch_orders(n, mb, iteration)
        skip = self.skipped_rows(seq_adv)
        old = self.old_policy(tokens, orders[0], mb, skip)
        ref_logp = self._reference_logp(reference, tokens) if self.objective.needs_reference else None
        stats = UpdateAccumulator(tokens.input_ids.shape, device, self.settings.ppo_epochs)
        scored = 0
        for epoch, order in enumerate(orders):
            for start in range(0, n, mb):
                rows = order[start : start + mb].to(device)
                step = self.minibatch_step(tokens, rows, seq_adv, old, ref_logp, iteration, optim, skip)
                stats.add(epoch, step)
                scored += len(step.rows)
        assert old.whole is not None  # the rollout has at least one row
        result = stats.result(old.whole, float(optim.optimizer.param_groups[0]["lr"]))
        result.metrics["rollout/zero_adv_group_frac"] = zero_advantage_group_frac(seq_adv, tokens.group_index)
        result.metrics["train/skipped_rows_frac"] = 1.0 - scored / (n * self.settings.ppo_epochs)
        return result

    @property
    def skipping(self) -> bool:
        """Rows with advantage 0 are left out of the gradient pass (the objective makes them inert)."""
        return self.settings.skip_zero_advantage and self.objective.zero_advantage_rows_inert

    def skipped_rows(self, seq_adv: Tensor) -> Tensor:
        """[N] bool: the rows left out of the gradient pass (advantage exactly 0, when ``skipping``)."""
        return (seq_adv == 0) if self.skipping else torch.zeros_like(seq_adv, dtype=torch.bool)

    def epoch_orders(self, n: int, mb: int, iteration: int) -> list[Tensor]:
        """The row order of each epoch: a fresh permutation per epoch (seeded by the iteration) when the rollout
        is split into minibatches, else the rows in order."""
        gen = torch.Generator().manual_seed(1_000_003 * iteration + 17)
        return [
            torch.randperm(n, generator=gen) if mb < n else torch.arange(n)
            for _ in range(self.settings.ppo_epochs)
        ]

    def old_policy(self, tokens: TokenBatch, first_order: Tensor, mb: int, skip: Tensor) -> OldPolicy:
        """π_old: a no-grad pass over the rows after the first minibatch and the first minibatch's skipped rows;
        its scored rows get theirs from its gradient pass."""
        device = tokens.input_ids.device
        whole_first = first_order[:mb].to(device)  # the on-policy minibatch
        first = scored_rows(whole_first, skip)
        rest = torch.cat([first_order[mb:].to(device), whole_first[~torch.isin(whole_first, first)]])
        old_rest = self.policy_pass(tokens.select(rest), grad=False).detached() if len(rest) else None
        if old_rest is None and self.skipping and _multi_rank():
            # another rank may have skipped rows there and run this pass: every rank runs as many forward passes
            # (FSDP2 gathers the parameters in each), so join it with one row, whose result is not needed
            self.policy_pass(tokens.select(first[:1]), grad=False)
        return OldPolicy(tokens.input_ids.shape, first, rest, old_rest)

    def minibatch_step(
        self,
        tokens: TokenBatch,
        rows: Tensor,
        seq_adv: Tensor,
        old: OldPolicy,
        ref_logp: Tensor | None,
        iteration: int,
        optim: Optimization,
        skip: Tensor,
    ) -> MinibatchStep:
        """Gradient pass over ``rows`` (less the ``skip`` ones), token advantages, loss, and one optimizer step.

        The loss is normalised by the token and sequence counts of all of ``rows``, the skipped ones included."""
        obj = self.objective
        normaliser = global_normaliser(tokens.loss_mask[rows], tokens.input_ids.device)
        rows = scored_rows(rows, skip)
        sub = tokens.select(rows)
        width = sub.input_ids.shape[1]
        cur = self.policy_pass(sub, grad=True)
        sub_old = old.for_minibatch(rows, width, cur)
        seen = cur.detached() if obj.transform_logprob == "current" else sub_old
        adv = obj.token_advantages(seq_adv[rows], sub.loss_mask, seen.logp, seen.entropy, seen.collision)
        batch = PolicyBatch(
            logp=cur.logp,
            old_logp=sub_old.logp,
            sampler_logp=sub.sampler_logprobs,
            advantages=adv,
            mask=sub.loss_mask,
            entropy=cur.entropy if obj.needs_entropy_grad else cur.entropy.detach(),
            ref_logp=None if ref_logp is None else ref_logp[rows, :width],
            logp_fp32=cur.logp_fp32,
            old_logp_fp32=sub_old.logp_fp32,
        )
        out = obj.compute_loss(batch, normaliser)
        norm = optimizer_step(optim, out.loss, self.settings.grad_clip, self.guard, iteration)
        transform_stats = {k: float(v) for t in obj.transforms for k, v in t.last_stats.items()}
        return MinibatchStep(rows, adv, out, transform_stats, norm)

    def _reference_logp(self, reference: torch.nn.Module | None, tokens: TokenBatch) -> Tensor:
        if reference is None:
            raise RuntimeError(f"{type(self.objective).__name__} needs a reference model; none was built")
        if reference.device != tokens.input_ids.device:
            reference.to(tokens.input_ids.device)
        return self.policy_pass(tokens, grad=False, model=reference).logp
