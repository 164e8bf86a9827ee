"""Which prompts of a batch go to the rollout: too-long prompts are skipped (and counted) or rejected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from epr_lightning.tasks.base import Example


@dataclass
class AdmittedPrompts:
    """The prompts of a batch that fit the context, with their token ids (chat template applied)."""

    examples: list[Example]
    ids: list[list[int]]


def check_prompt_settings(max_prompt_tokens: int | None, long_prompts: str) -> None:
    """``model.max_prompt_tokens`` (>= 1 or None) and ``model.long_prompts`` ("skip" or "error")."""
    if long_prompts not in ("skip", "error"):
        raise ValueError(f"model.long_prompts must be 'skip' or 'error', got {long_prompts!r}")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ValueError(f"model.max_prompt_tokens must be >= 1 or null, got {max_prompt_tokens}")


def admit(
    examples: list[Example], ids: list[list[int]], limit: int | None, where: str, long_prompts: str
) -> tuple[AdmittedPrompts, int]:
    """The examples whose encoded prompt has at most ``limit`` tokens, and how many were skipped.

    An empty prompt, a long prompt under ``long_prompts="error"``, or a batch with nothing left raises a
    ``ValueError`` that names the example and the limit (``where`` says where the limit comes from).
    """
    kept, skipped = AdmittedPrompts([], []), 0
    for ex, p in zip(examples, ids, strict=True):
        if not ex.prompt.strip():
            raise ValueError(f"example {ex.id!r} has an empty prompt")
        if limit is not None and len(p) > limit:
            if long_prompts == "error":
                raise ValueError(f"example {ex.id!r}: prompt has {len(p)} tokens > {where}")
            skipped += 1
            continue
        kept.examples.append(ex)
        kept.ids.append(p)
    if not kept.examples:
        raise ValueError(f"every prompt of this batch was longer than {where}")
    return kept, skipped


def prompt_token_limit(
    max_prompt_tokens: int | None, context: Any, max_new_tokens: int
) -> tuple[int | None, str]:
    """``max_prompt_tokens``, else the model's ``context`` minus ``max_new_tokens``; and where it comes from."""
    if max_prompt_tokens is not None:
        return max_prompt_tokens, f"model.max_prompt_tokens={max_prompt_tokens}"
    if not isinstance(context, int):
        return None, "the model context"
    limit = context - max_new_tokens
    return limit, (
        f"the model context {context} - sampling.max_new_tokens={max_new_tokens} = {limit} "
        "(set model.max_prompt_tokens / model.long_prompts)"
    )
