"""StepRecord: everything one rollout-then-update iteration produced, for callbacks to read.

The module returns ``{"record": StepRecord}`` from ``training_step``; callbacks receive it as
``outputs["record"]`` in ``on_train_batch_end``. Tensors are detached and on the CPU. Callbacks never need to
re-run the policy unless that is their purpose (e.g. measuring entropy after the update).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from epr_lightning.objectives.base import masked_mean

if TYPE_CHECKING:
    from epr_lightning.rollout.base import Rollout, TokenBatch
    from epr_lightning.tasks.base import Example
    from epr_lightning.tasks.scoring import RolloutScores
    from epr_lightning.update import UpdateStats


@dataclass
class StepRecord:
    """One iteration's data. [N, T] tensors are aligned with ``input_ids`` (position t = token t).

    Attributes:
        iteration: rollout iteration index (0-based; ``trainer.global_step`` counts optimizer steps instead).
        input_ids, loss_mask, group_index: the token batch (loss_mask = completion tokens).
        rewards: [N] scalar rewards; ``correct`` [N] bool (reward ≥ the task's success threshold).
        seq_advantages: [N] advantages before transforms; ``token_advantages`` [N, T] after (first epoch).
        entropy: [N, T] exact full-vocab entropy of π_old (before the update), fp32.
        old_logp: [N, T] trainer log-probs of π_old; ``sampler_logp`` [N, T] the engine's.
        old_logp_fp32: [N, T] the same from an fp32 computation, when the update made one (bf16 weights on the
            precision audit's iterations, or ``logprob_dtype: bfloat16``), else None.
        collision: [N, T] S_t = Σ_a π_old(a)²·(log π_old(a) + H) per position (for Theorem 1's sampled
            estimate; see ``logprobs.PolicyPass``), or None when not computed.
        clip_upper / clip_lower: [N, T] masks of tokens clipped at 1+ε_high / 1−ε_low in the last epoch.
        prompts / completions / answers: texts for logging and diversity metrics (answers = extracted final
            answers, None when none was found).
        metrics: scalars the module already logged (loss/…, policy/…, rollout/…), as floats.
        reward_errors: how many reward calls raised, timed out or returned a non-finite value.
        num_prompts / num_generations: group layout (prompt-major, G samples per prompt).
    """

    iteration: int
    input_ids: Tensor
    loss_mask: Tensor
    group_index: Tensor
    rewards: Tensor
    correct: Tensor
    seq_advantages: Tensor
    token_advantages: Tensor
    entropy: Tensor
    old_logp: Tensor
    sampler_logp: Tensor
    clip_upper: Tensor | None
    clip_lower: Tensor | None
    prompts: list[str]
    completions: list[str]
    answers: list[str | None]
    num_prompts: int
    num_generations: int
    reward_errors: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    collision: Tensor | None = None
    old_logp_fp32: Tensor | None = None

    def token_mean_entropy(self) -> float:
        """Exact token-mean entropy of π_old over completion tokens."""
        return float(masked_mean(self.entropy, self.loss_mask))

    def mc_entropy(self) -> float:
        """Monte-Carlo entropy estimate: mean −log π_old of the sampled completion tokens."""
        return float(masked_mean(-self.old_logp, self.loss_mask))


def build_record(
    iteration: int,
    examples: list[Example],
    rollout: Rollout,
    tokens: TokenBatch,
    scores: RolloutScores,
    seq_adv: Tensor,
    stats: UpdateStats,
    num_generations: int,
) -> StepRecord:
    """The record of one iteration: its tensors detached, as float32 where computed, on the CPU."""

    def cpu(t: Tensor) -> Tensor:
        return t.detach().float().cpu()

    def cpu_or_none(t: Tensor | None) -> Tensor | None:
        return None if t is None else cpu(t)

    return StepRecord(
        iteration=iteration,
        input_ids=tokens.input_ids.cpu(),
        loss_mask=tokens.loss_mask.cpu(),
        group_index=tokens.group_index.cpu(),
        rewards=scores.rewards.cpu(),
        correct=scores.correct.cpu(),
        seq_advantages=cpu(seq_adv),
        token_advantages=cpu(stats.token_advantages),
        entropy=cpu(stats.old.entropy),
        old_logp=cpu(stats.old.logp),
        old_logp_fp32=cpu_or_none(stats.old.logp_fp32),
        collision=cpu_or_none(stats.old.collision),
        sampler_logp=tokens.sampler_logprobs.cpu(),
        clip_upper=cpu_or_none(stats.clip_upper),
        clip_lower=cpu_or_none(stats.clip_lower),
        prompts=[e.prompt for e in examples],
        completions=rollout.completion_text,
        answers=scores.answers,
        num_prompts=len(examples),
        num_generations=num_generations,
        reward_errors=scores.failures,
        metrics={k: float(v) for k, v in stats.metrics.items()},
    )


def rollout_metrics(record: StepRecord, rollout: Rollout) -> dict[str, float]:
    """The iteration's ``rollout/`` numbers and the policy's entropy (``RLModule`` owns these names)."""
    return {
        "rollout/reward_mean": float(record.rewards.mean()),
        "rollout/reward_std": float(record.rewards.std(unbiased=False)),
        "rollout/accuracy": float(record.correct.float().mean()),
        "rollout/completion_len": float(record.loss_mask.sum(dim=1).float().mean()),
        "rollout/truncated_frac": sum(f == "length" for f in rollout.finish_reason) / len(rollout),
        "rollout/reward_errors": float(record.reward_errors),
        "policy/entropy": record.token_mean_entropy(),
        "policy/entropy_mc": record.mc_entropy(),
    }
