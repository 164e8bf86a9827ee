"""The update stage of an iteration (epochs × minibatches of clipped policy-gradient steps) and reward scoring.

Kept apart from the LightningModule so the module reads as the list of stages and this file as the loop
of the paper's algorithm box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from epr_lightning.logprobs import PolicyPass
from epr_lightning.objectives.aggregation import global_normaliser
from epr_lightning.objectives.base import PolicyBatch
from epr_lightning.rollout.base import Rollout, TokenBatch
from epr_lightning.tasks.base import Example, RewardFunction

if TYPE_CHECKING:
    from epr_lightning.module import RLModule


@dataclass
class UpdateStats:
    old: PolicyPass  # π_old over the whole rollout (detached)
    token_advantages: Tensor  # [N, T] after transforms, first epoch
    clip_upper: Tensor | None
    clip_lower: Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


def score_rollout(
    reward: RewardFunction, examples: list[Example], rollout: Rollout, timeout_s: float
) -> tuple[Tensor, Tensor, list[str | None], int]:
    """Rewards [N], correctness [N], extracted answers and the number of failed reward calls."""
    from epr_lightning.tasks.scoring import score_completions

    per_sample = [examples[g] for g in rollout.group_index]
    result = score_completions(reward, per_sample, rollout.completion_text, timeout_s=timeout_s)
    rewards = torch.tensor(result.rewards, dtype=torch.float32)
    correct = rewards >= reward.success_threshold
    answers = []
    for text in rollout.completion_text:
        try:
            answers.append(reward.extract_answer(text))
        except Exception:  # an extractor bug must not stop training; the answer just counts as missing
            answers.append(None)
    failures = result.errors + result.timeouts + result.nonfinite
    return rewards, correct, answers, failures


def _scatter(full: Tensor, rows: Tensor, part: Tensor) -> None:
    full[rows, : part.shape[1]] = part.detach().to(full.dtype)


def optimizer_step(module: RLModule, loss: Tensor) -> float | None:
    """Backward, clip, step. Returns the grad norm, or None when the update was skipped as non-finite.

    The backward always runs (under DDP every rank must join the gradient all-reduce); a non-finite
    gradient norm — which a non-finite loss on any rank produces — skips the step on all ranks alike.
    """
    opt = module.optimizers()
    sch = module.lr_schedulers()
    opt.zero_grad(set_to_none=True)
    module.manual_backward(loss)
    params = [p for p in module.policy.parameters() if p.grad is not None]
    max_norm = module.grad_clip if module.grad_clip is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    norm_value = float(norm)
    if not (math.isfinite(norm_value) and math.isfinite(float(loss.detach()))):
        opt.zero_grad(set_to_none=True)
        module.nonfinite_in_row += 1
        module.nonfinite_total += 1
        if module.nonfinite_in_row >= module.max_nonfinite_updates:
            raise RuntimeError(
                f"{module.nonfinite_in_row} consecutive non-finite updates (loss={float(loss.detach())}, "
                f"grad_norm={norm_value}) at iteration {module.iteration}; aborting. The last checkpoint "
                "written before this point is intact; lower the learning rate or check the rewards."
            )
        return None
    module.nonfinite_in_row = 0
    opt.step()
    if sch is not None:
        sch.step()
    return norm_value


def minibatch_rows(n: int, num_minibatches: int | None, minibatch_size: int | None) -> int:
    """Rows per minibatch: ⌈n / num_minibatches⌉, else ``minibatch_size``, else the whole rollout (≤ n)."""
    if num_minibatches is not None:
        return max(1, math.ceil(n / num_minibatches))
    return min(minibatch_size or n, n)


def run_update(module: RLModule, tokens: TokenBatch, seq_adv: Tensor) -> UpdateStats:
    """``ppo_epochs`` passes of minibatch updates over one rollout.

    With one epoch and one minibatch the update is exactly on-policy: π_old is the same forward pass as the
    gradient's (detached), so the ratio is exactly 1 and no extra no-grad pass is spent.
    """
    obj = module.objective
    n = len(tokens)
    mb = minibatch_rows(n, module.num_minibatches, module.minibatch_size)
    fused = module.ppo_epochs == 1 and mb >= n
    old = None if fused else module.policy_pass(tokens, grad=False).detached()
    ref_logp = _reference_logp(module, tokens) if obj.needs_reference else None
    shape = tokens.input_ids.shape
    full = {k: torch.zeros(shape, device=tokens.input_ids.device) for k in ("adv", "up", "low")}
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    gen = torch.Generator().manual_seed(1_000_003 * module.iteration + 17)
    for epoch in range(module.ppo_epochs):
        order = torch.randperm(n, generator=gen) if mb < n else torch.arange(n)
        for start in range(0, n, mb):
            rows = order[start : start + mb].to(tokens.input_ids.device)
            sub = tokens.select(rows)
            width = sub.input_ids.shape[1]
            cur = module.policy_pass(sub, grad=True)
            sub_old = cur.detached() if fused else old.rows(rows, width)
            if fused:
                old = cur.detached()  # one minibatch of the whole rollout: this pass is π_old
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
            out = obj.compute_loss(batch, global_normaliser(sub.loss_mask, tokens.input_ids.device))
            norm = optimizer_step(module, out.loss)
            if epoch == 0:
                _scatter(full["adv"], rows, adv)
            if epoch == module.ppo_epochs - 1:
                for key, name in (("up", "clip_upper"), ("low", "clip_lower")):
                    if name in out.token_stats:
                        _scatter(full[key], rows, out.token_stats[name])
            step_metrics = {k: float(v) for k, v in out.metrics.items()}
            step_metrics.update(
                {
                    f"policy/{k}": float(v)
                    for t in obj.transforms
                    for k, v in getattr(t, "last_stats", {}).items()
                }
            )
            if norm is not None:
                step_metrics["train/grad_norm"] = norm
            for k, v in step_metrics.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
    metrics = {k: sums[k] / counts[k] for k in sums}
    opt = module.optimizers()
    metrics["train/lr"] = float(opt.param_groups[0]["lr"])
    has_clip = bool(full["up"].any() or full["low"].any()) or "policy/clipfrac_upper" in metrics
    return UpdateStats(
        old=old,
        token_advantages=full["adv"],
        clip_upper=full["up"] if has_clip else None,
        clip_lower=full["low"] if has_clip else None,
        metrics=metrics,
    )


def _reference_logp(module: RLModule, tokens: TokenBatch) -> Tensor:
    ref = module.reference
    if ref.device != tokens.input_ids.device:
        ref.to(tokens.input_ids.device)
    return module.policy_pass(tokens, grad=False, model=ref).logp
