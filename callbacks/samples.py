"""SampleLogger: a few prompts with all their completions, rewards and answers, as TensorBoard markdown text."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from epr_lightning.metrics import group_by
from epr_lightning.record import StepRecord

from ._logging import due_record, tensorboard_writer


def _fence(text: str) -> str:
    """Markdown code block that survives backticks inside the text."""
    fence = "````" if "```" in text else "```"
    return f"{fence}\n{text}\n{fence}"


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters with a note of how much was dropped."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}… [+{len(text) - max_chars} chars]"


def format_samples(record: StepRecord, num_prompts: int = 2, max_chars: int = 600) -> str:
    """Markdown for the first ``num_prompts`` prompt groups: the prompt, then each completion with reward,
    extracted answer and correctness."""
    rows = group_by(list(range(len(record.completions))), record.group_index)
    parts = [f"## Iteration {record.iteration}"]
    for g, idx in enumerate(rows[:num_prompts]):
        p = int(record.group_index[idx[0]])
        prompt = record.prompts[p] if 0 <= p < len(record.prompts) else "(prompt not recorded)"
        parts.append(f"### Prompt {g}\n\n{_fence(truncate(prompt, max_chars))}")
        for j, i in enumerate(idx):
            ok = "✅" if bool(record.correct[i]) else "❌"
            answer = record.answers[i] if i < len(record.answers) else None
            parts.append(
                f"**Sample {j}** — reward {float(record.rewards[i]):.3g} {ok} — answer: `{answer}`\n\n"
                f"{_fence(truncate(record.completions[i], max_chars))}"
            )
    return "\n\n".join(parts)


class SampleLogger(pl.Callback):
    """Write sampled completions to TensorBoard (tag ``samples``) every N iterations, rank 0 only.

    Args:
        every_n: log every N iterations (iteration 0 included).
        num_prompts: prompt groups shown per log.
        max_chars: characters kept per prompt/completion (longer texts are truncated with a note).
    """

    def __init__(self, every_n: int = 10, num_prompts: int = 2, max_chars: int = 600) -> None:
        if every_n < 1:
            raise ValueError(f"SampleLogger.every_n must be >= 1, got {every_n}")
        if num_prompts < 1:
            raise ValueError(f"SampleLogger.num_prompts must be >= 1, got {num_prompts}")
        if max_chars < 1:
            raise ValueError(f"SampleLogger.max_chars must be >= 1, got {max_chars}")
        self.every_n = every_n
        self.num_prompts = num_prompts
        self.max_chars = max_chars

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = due_record(outputs, self.every_n)
        if record is None:
            return
        writer = tensorboard_writer(trainer)
        if writer is not None:
            text = format_samples(record, self.num_prompts, self.max_chars)
            writer.add_text("samples", text, global_step=record.iteration)
