"""A rollout engine with no randomness: each completion is a function of the prompt's token ids and the sample
index only. Multi-process tests use it so that N ranks and one process see exactly the same rollouts.
"""

from __future__ import annotations

from typing import Any

import torch

from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams


class FixedEngine(RolloutEngine):
    """Deterministic completions ``template.format(v)`` with ``v = low + (7·sum(prompt) + 3·j) mod (high-low+1)``
    for sample ``j``, followed by the EOS token.

    With ``low``/``high`` of equal digit count every completion has the same number of tokens, so each rank
    scores the same number of tokens (what makes DDP's per-rank gradient average equal a single process's
    token mean). Sampler log-probs are the policy's own fp32 log-probs when the module passes ``model`` (a
    collective under FSDP2: every rank calls ``generate``), else 0.

    Args:
        template: completion text with one ``{}`` for the value.
        low, high: range of the value (inclusive).
    """

    def __init__(self, template: str = "Answer: {}", low: int = 10, high: int = 30) -> None:
        if "{}" not in template:
            raise ValueError(f"engine.template must contain '{{}}', got {template!r}")
        if low > high:
            raise ValueError(f"engine.low ({low}) must be <= engine.high ({high})")
        self.template, self.low, self.high = template, low, high
        self.weight_version = 0

    def setup(self, model: torch.nn.Module, tokenizer: Any, *, rank: int = 0, world_size: int = 1) -> None:
        self.tokenizer = tokenizer

    def completion(self, prompt: list[int], j: int) -> list[int]:
        value = self.low + (7 * sum(prompt) + 3 * j) % (self.high - self.low + 1)
        ids = self.tokenizer(self.template.format(value), add_special_tokens=False)["input_ids"]
        return list(ids) + [self.tokenizer.eos_token_id]

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        num_samples: int,
        *,
        model: torch.nn.Module | None = None,
    ) -> Rollout:
        prompts = [p for p in prompt_ids for _ in range(num_samples)]
        completions = [self.completion(p, j) for p in prompt_ids for j in range(num_samples)]
        completions = [c[: params.max_new_tokens] for c in completions]
        logprobs = self._logprobs(model, prompts, completions, params.temperature)
        eos = self.tokenizer.eos_token_id
        return Rollout(
            prompt_ids=prompts,
            completion_ids=completions,
            sampler_logprobs=logprobs,
            group_index=[g for g in range(len(prompt_ids)) for _ in range(num_samples)],
            finish_reason=["stop" if c[-1] == eos else "length" for c in completions],
            completion_text=self.tokenizer.batch_decode(completions, skip_special_tokens=True),
            prompt_text=self.tokenizer.batch_decode(prompts, skip_special_tokens=False),
            weight_version=self.weight_version,
        )

    def _logprobs(
        self,
        model: torch.nn.Module | None,
        prompts: list[list[int]],
        completions: list[list[int]],
        temperature: float,
    ) -> list[list[float]]:
        if model is None:
            return [[0.0] * len(c) for c in completions]
        from epr_lightning.logprobs import token_logprobs_and_entropy

        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        batch = Rollout(
            prompts,
            completions,
            [[0.0] * len(c) for c in completions],
            [0] * len(prompts),
            ["stop"] * len(prompts),
            [""] * len(prompts),
            [""] * len(prompts),
        ).to_batch(pad)
        device = next(model.parameters()).device
        logp, _ = token_logprobs_and_entropy(
            model,
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            batch.loss_mask.to(device),
            temperature=temperature,
        )
        return [
            logp[i, len(p) : len(p) + len(c)].tolist()
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
