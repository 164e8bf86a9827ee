"""The rollout contract: what every engine (HF, SGLang in-process, SGLang servers, fakes) takes and returns.

Token ids travel end to end: engines receive prompt token ids and return completion token ids plus the
sampler's log-probs of the temperature-scaled distribution. Text is decoded for rewards and logging only,
and is never re-tokenised for training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SamplingParams:
    """Sampling settings shared by all engines.

    Args:
        temperature: softmax temperature (> 0). Log-probs are of the temperature-scaled distribution.
        top_p: nucleus mass; keep 1.0 for unbiased importance ratios.
        max_new_tokens: completion budget per sample (> 0).
        stop_token_ids: extra token ids that end a completion (the tokenizer's EOS is always one).
        stop: strings that end a completion where its decoded text first contains one (the completion keeps
            it); every engine returns exactly the sampled tokens up to there (``rollout/stops.py``).
        seed: base seed; engines reseed per call as ``seed + call_index`` (plus rank).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"sampling.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"sampling.max_new_tokens must be > 0, got {self.max_new_tokens}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"sampling.stop must hold non-empty strings, got {self.stop!r}")


def stop_ids(params: SamplingParams, tokenizer: Any) -> list[int]:
    """``params.stop_token_ids`` plus the tokenizer's EOS, in order, without duplicates."""
    ids = list(params.stop_token_ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(int(eos))
    return list(dict.fromkeys(ids))


@dataclass
class Rollout:
    """A batch of sampled completions, one entry per sample (G samples per prompt, prompt-major).

    Attributes:
        prompt_ids: prompt token ids per sample (no padding).
        completion_ids: completion token ids per sample, including the stop/EOS token when one was produced.
        sampler_logprobs: the sampler's log-prob of each completion token (temperature-scaled distribution).
        group_index: which prompt each sample belongs to (0..num_prompts-1).
        finish_reason: "stop" or "length" per sample.
        completion_text: decoded completion (without the stop token) for rewards and logging only.
        prompt_text: the prompt as text (after the chat template), for logging.
        weight_version: the engine's weight version that produced the samples.
        sampler_entropy: the full-vocabulary entropy (fp32) of the distribution each completion token was drawn from
            (the policy's logits / T, before top-p: what the trainer's log-prob pass gives at that temperature), when
            the engine sampled from the trained module itself with fp32 logits (the HF engine); else None, and
            whoever needs entropies runs the policy over the tokens.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    sampler_logprobs: list[list[float]]
    group_index: list[int]
    finish_reason: list[str]
    completion_text: list[str]
    prompt_text: list[str]
    weight_version: int = 0
    sampler_entropy: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.completion_ids)

    def to_batch(self, pad_token_id: int, device: torch.device | str = "cpu") -> TokenBatch:
        """Right-padded [prompt | completion | pad] rows with masks aligned to ``input_ids``."""
        lengths = [len(p) + len(c) for p, c in zip(self.prompt_ids, self.completion_ids, strict=True)]
        n, width = len(self), max(lengths)
        input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        loss_mask = torch.zeros((n, width), dtype=torch.float32)
        sampler_lp = torch.zeros((n, width), dtype=torch.float32)
        for i, (p, c, lp) in enumerate(
            zip(self.prompt_ids, self.completion_ids, self.sampler_logprobs, strict=True)
        ):
            row = p + c
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
            loss_mask[i, len(p) : len(row)] = 1.0
            sampler_lp[i, len(p) : len(row)] = torch.tensor(lp, dtype=torch.float32)
        return TokenBatch(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            loss_mask=loss_mask.to(device),
            sampler_logprobs=sampler_lp.to(device),
            group_index=torch.tensor(self.group_index, dtype=torch.long, device=device),
        )


@dataclass
class TokenBatch:
    """Padded training tensors. Position t of every [N, T] tensor refers to token ``input_ids[:, t]``.

    ``loss_mask`` is 1 on completion tokens only (0 on prompt, padding and environment observations).
    ``sampler_logprobs`` holds the sampler's log-prob of token t where ``loss_mask`` is 1, else 0.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    sampler_logprobs: torch.Tensor
    group_index: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor | slice) -> TokenBatch:
        """A sub-batch (a minibatch) of rows, trimmed to its own longest row."""
        sub = {k: v[rows] for k, v in self.__dict__.items()}
        width = int(sub["attention_mask"].sum(dim=1).max().item()) if len(sub["input_ids"]) else 0
        for k in ("input_ids", "attention_mask", "loss_mask", "sampler_logprobs"):
            sub[k] = sub[k][:, :width]
        return TokenBatch(**sub)


class RolloutEngine(ABC):
    """Generates completions for token-id prompts and receives trained weights.

    Lifecycle per training iteration (colocated engines):
    ``wake_up()`` → ``generate(...)`` → ``sleep()`` → [trainer updates] → ``push_weights(model)``.
    Engines that share the trainer's module (the HF engine) implement the memory and push hooks as no-ops.
    """

    #: incremented by ``push_weights``; stored in each Rollout.
    weight_version: int = 0
    #: incremented by ``generate``; seeds each call's sampling.
    generate_calls: int = 0

    def setup(self, model: torch.nn.Module, tokenizer: Any, *, rank: int = 0, world_size: int = 1) -> None:
        """Called once in ``LightningModule.setup`` after the policy is built (before any generate)."""
        self.tokenizer = tokenizer

    @abstractmethod
    def generate(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        num_samples: int,
        *,
        model: torch.nn.Module | None = None,
    ) -> Rollout:
        """Sample ``num_samples`` completions per prompt; results are prompt-major (p0×G, p1×G, …)."""

    def push_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (no-op for in-process engines)."""
        self.weight_version += 1

    def wake_up(self) -> None:
        """Re-acquire generation memory (KV cache) before a rollout."""

    def sleep(self) -> None:
        """Release generation memory before the trainer's update."""

    def shutdown(self) -> None:
        """Free every resource (processes, servers, sockets); called from ``RLModule.teardown``."""

    def state_dict(self) -> dict[str, int]:
        """Saved in the trainer checkpoint so a resumed run continues weight versions and sampling seeds."""
        return {"weight_version": self.weight_version, "generate_calls": self.generate_calls}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.weight_version = int(state["weight_version"])
        self.generate_calls = int(state["generate_calls"])
