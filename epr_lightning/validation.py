"""Validation metrics of one batch of held-out prompts (logged under ``val/`` by the module), and the
iteration-0 validation that gives every run a baseline before its first update."""

from __future__ import annotations

from typing import Any

from epr_lightning.logprobs import PolicyPass
from epr_lightning.metrics import distinct_correct, distinct_n, group_by, pass_at_k, self_bleu
from epr_lightning.objectives.base import masked_mean
from epr_lightning.rollout.base import Rollout, TokenBatch
from epr_lightning.tasks.scoring import RolloutScores


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def validation_metrics(
    tokens: TokenBatch,
    old: PolicyPass,
    scores: RolloutScores,
    rollout: Rollout,
    num_generations: int,
) -> dict[str, float]:
    """Reward, pass@k for k = 1..G (unbiased), entropy and within-group diversity of the batch."""
    mask, rewards, correct, answers = tokens.loss_mask, scores.rewards, scores.correct, scores.answers
    out: dict[str, float] = {
        "reward_mean": float(rewards.mean()),
        "entropy": float(masked_mean(old.entropy, mask)),
        "completion_len": float(mask.sum(dim=1).float().mean()),
    }
    groups_correct = group_by(correct.tolist(), rollout.group_index)
    for k in range(1, num_generations + 1):
        out[f"pass@{k}"] = sum(pass_at_k(len(g), sum(g), k) for g in groups_correct) / len(groups_correct)
    texts = group_by(rollout.completion_text, rollout.group_index)
    for n in (1, 2):
        value = _mean([distinct_n(g, n) for g in texts])
        if value is not None:
            out[f"distinct_{n}"] = value
    bleu = _mean([self_bleu(g) for g in texts])
    if bleu is not None:
        out["self_bleu"] = bleu
    answer_groups = group_by(answers, rollout.group_index)
    out["distinct_correct"] = sum(
        distinct_correct(a, c) for a, c in zip(answer_groups, groups_correct, strict=True)
    ) / len(answer_groups)
    return out


def run_validation_now(trainer: Any) -> bool:
    """Run the fit loop's validation once, now (before the first update: the iteration-0 baseline).

    Does what Lightning's training epoch loop does when ``val_check_interval`` fires, so the ``val/`` metrics are
    logged at the current logger step (0 before any update). Returns whether validation ran (it does not when
    the Trainer validates nothing, e.g. ``limit_val_batches=0``).
    """
    if not trainer.enable_validation or trainer.sanity_checking:
        return False
    loop = trainer.fit_loop.epoch_loop
    first_loop_iter = trainer._logger_connector._first_loop_iter
    trainer.validating = True
    loop.val_loop.run()
    trainer.training = True
    trainer._logger_connector._first_loop_iter = first_loop_iter
    return True
