"""Validation metrics of one batch of held-out prompts (logged under ``val/`` by the module), the per-prompt
records behind them (written by ``epr_lightning.callbacks.ValidationRecords``), and the iteration-0 validation
that gives every run a baseline before its first update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from epr_lightning.logprobs import PolicyPass
from epr_lightning.metrics import distinct_correct, distinct_n, group_by, pass_at_k, self_bleu
from epr_lightning.objectives.base import masked_mean
from epr_lightning.rollout.base import Rollout, TokenBatch
from epr_lightning.tasks.base import Example
from epr_lightning.tasks.scoring import RolloutScores


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def validation_entropy(
    rollout: Rollout, tokens: TokenBatch, policy_pass: Callable[[], PolicyPass]
) -> torch.Tensor:
    """[N, T] entropy of the policy at the completion tokens (aligned with ``tokens.loss_mask``): the one the
    engine recorded while sampling when it has it (the HF engine samples from the trained module itself, with
    fp32 logits: the same numbers, without a second pass over every sample), else ``policy_pass()``'s."""
    if rollout.sampler_entropy is None:
        return policy_pass().entropy
    out = torch.zeros_like(tokens.loss_mask)
    for i, (prompt, h) in enumerate(zip(rollout.prompt_ids, rollout.sampler_entropy, strict=True)):
        out[i, len(prompt) : len(prompt) + len(h)] = torch.tensor(h, dtype=out.dtype)
    return out


def validation_metrics(
    tokens: TokenBatch,
    entropy: torch.Tensor,
    scores: RolloutScores,
    rollout: Rollout,
    num_generations: int,
) -> dict[str, float]:
    """Reward, pass@k for k = 1..G (unbiased), entropy and within-group diversity of the batch."""
    mask, rewards, correct, answers = tokens.loss_mask, scores.rewards, scores.correct, scores.answers
    out: dict[str, float] = {
        "reward_mean": float(rewards.mean()),
        "entropy": float(masked_mean(entropy, mask)),
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


def answer_token_mask(char_ends: list[int], text: str, answer: str | None) -> list[bool]:
    """Which completion tokens hold the extracted answer: those whose characters overlap the answer's last
    occurrence in ``text``. ``char_ends[i]`` is where token i ends in ``text`` (the length of the decoded first
    i + 1 tokens). No answer, or an answer not found in the text → no answer tokens."""
    needle = (answer or "").strip()
    start = text.rfind(needle) if needle else -1
    if start < 0:
        return [False] * len(char_ends)
    stop, out, begin = start + len(needle), [], 0
    for end in char_ends:
        out.append(begin < stop and end > start)
        begin = end
    return out


def answer_positions(tokenizer: Any, rollout: Rollout, answers: list[str | None], width: int) -> torch.Tensor:
    """[N, width] mask of the answer tokens of each sample, aligned with ``Rollout.to_batch``'s rows."""
    mask = torch.zeros((len(rollout), width), dtype=torch.float32)
    for i, (prompt, ids) in enumerate(zip(rollout.prompt_ids, rollout.completion_ids, strict=True)):
        ends = [len(tokenizer.decode(ids[: j + 1], skip_special_tokens=True)) for j in range(len(ids))]
        flags = answer_token_mask(ends, rollout.completion_text[i], answers[i])
        for j, flag in enumerate(flags):
            if flag:
                mask[i, len(prompt) + j] = 1.0
    return mask


def validation_results(
    tokenizer: Any,
    examples: list[Example],
    tokens: TokenBatch,
    entropy: torch.Tensor,
    scores: RolloutScores,
    rollout: Rollout,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The batch's ``val/`` means (``validation_metrics``, plus the entropy on the answer tokens and on the rest)
    and one JSON-able record per prompt: its id, samples ``n``, correct ``c``, the answers and correctness per
    sample, and token-entropy sums (all tokens / answer tokens)."""
    metrics = validation_metrics(
        tokens, entropy, scores, rollout, len(rollout) // max(1, len(set(rollout.group_index)))
    )
    mask = tokens.loss_mask
    answer_mask = answer_positions(tokenizer, rollout, scores.answers, mask.shape[1]).to(mask.device) * mask
    rest = mask - answer_mask
    if answer_mask.sum() > 0:
        metrics["entropy_answer"] = float(masked_mean(entropy, answer_mask))
    if rest.sum() > 0:
        metrics["entropy_rest"] = float(masked_mean(entropy, rest))
    h = (entropy.float() * mask).sum(dim=1).tolist()
    h_answer = (entropy.float() * answer_mask).sum(dim=1).tolist()
    n_tokens, n_answer = mask.sum(dim=1).tolist(), answer_mask.sum(dim=1).tolist()
    records: list[dict[str, Any]] = []
    by_group = group_by(list(range(len(rollout))), rollout.group_index)
    for idx in by_group:
        example = examples[rollout.group_index[idx[0]]]
        records.append({
            "id": example.id,
            "n": len(idx),
            "c": int(sum(bool(scores.correct[i]) for i in idx)),
            "answers": [scores.answers[i] for i in idx],
            "correct": [bool(scores.correct[i]) for i in idx],
            "entropy_sum": sum(h[i] for i in idx),
            "tokens": int(sum(n_tokens[i] for i in idx)),
            "answer_entropy_sum": sum(h_answer[i] for i in idx),
            "answer_tokens": int(sum(n_answer[i] for i in idx)),
        })  # fmt: skip
    return metrics, records


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
