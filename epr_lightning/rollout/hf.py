"""The in-process HF engine: transformers ``generate`` on the trainer's own policy (CPU or GPU).

It samples from the very module being trained, so ``push_weights`` has nothing to copy. Sampler log-probs
are ``log_softmax(logits / T)`` over the full vocabulary (before top-p truncation), the same semantics as
SGLang, computed in fp32 from the raw logits of each step — one step at a time, during ``generate``
(``SampledTokenLogProbs``), rather than keeping every step's logits.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams, stop_ids


class SampledTokenLogProbs(LogitsProcessor):
    """Records ``log_softmax(logits / T)`` of each sampled token while ``generate`` runs.

    It runs first, on the raw logits (temperature and top-p follow it as processors of their own). The token
    sampled at step k is the last input id at step k + 1, so its log-prob is read from step k's distribution
    then; ``finish`` reads the last one. Only one step's distribution is held: keeping every step's logits
    (``output_logits``) costs batch × steps × vocabulary fp32, 0.3 GB for 32 × 48 tokens of SmolLM2's 49k
    vocabulary, and turning them into log-probs at the end took three more copies of that size.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.last: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._read(input_ids[:, -1:])
        self.last = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _read(self, tokens: torch.Tensor) -> None:
        if self.last is not None:
            self.steps.append(self.last.gather(-1, tokens.to(self.last.device)).squeeze(-1).cpu())
            self.last = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[batch, steps] log-probs of the sampled tokens (``sequences`` = what ``generate`` returned)."""
        self._read(sequences[:, -1:])
        if not self.steps:
            return torch.zeros(len(sequences), 0)
        return torch.stack(self.steps, dim=1)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``prompts`` padded on the left to the longest (what ``generate`` wants)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention[i, width - len(p) :] = 1
    return input_ids, attention


class HFEngine(RolloutEngine):
    """Sampling with ``model.generate``.

    Args:
        generation_batch_size: prompts × samples per ``generate`` call (None = all at once).
    """

    def __init__(self, generation_batch_size: int | None = None) -> None:
        if generation_batch_size is not None and generation_batch_size <= 0:
            raise ValueError(f"engine.generation_batch_size must be > 0, got {generation_batch_size}")
        self.generation_batch_size = generation_batch_size
        self.weight_version = 0
        self.generate_calls = 0
        self.rank = 0
        self.world_size = 1

    def setup(self, model: torch.nn.Module, tokenizer: Any, *, rank: int = 0, world_size: int = 1) -> None:
        self.tokenizer = tokenizer
        self.rank, self.world_size = rank, world_size

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        num_samples: int,
        *,
        model: torch.nn.Module | None = None,
    ) -> Rollout:
        if model is None:
            raise ValueError("HFEngine.generate needs the policy module (model=...)")
        flat_prompts = [p for p in prompt_ids for _ in range(num_samples)]  # prompt-major
        groups = [g for g in range(len(prompt_ids)) for _ in range(num_samples)]
        stops = stop_ids(params, self.tokenizer)
        # Reseed per call, outside the global RNG stream, so a resumed run samples the same tokens.
        seed = params.seed + 100_003 * self.generate_calls + 7919 * self.rank
        self.generate_calls += 1
        device = next(model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            step = self.generation_batch_size or len(flat_prompts)
            for start in range(0, len(flat_prompts), step):
                c, lp = self._generate_chunk(model, flat_prompts[start : start + step], params, stops, device)
                completions += c
                logprobs += lp
        finish = ["stop" if c and c[-1] in stops else "length" for c in completions]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        prompt_text = self.tokenizer.batch_decode(flat_prompts, skip_special_tokens=False)
        return Rollout(
            prompt_ids=flat_prompts,
            completion_ids=completions,
            sampler_logprobs=logprobs,
            group_index=groups,
            finish_reason=finish,
            completion_text=texts,
            prompt_text=prompt_text,
            weight_version=self.weight_version,
        )

    def _generate_chunk(
        self,
        model: Any,
        prompts: list[list[int]],
        params: SamplingParams,
        stop_ids: list[int],
        device: torch.device,
    ) -> tuple[list[list[int]], list[list[float]]]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        input_ids, attention = left_pad(prompts, pad)
        width = input_ids.shape[1]
        was_training = model.training
        model.eval()
        try:
            # A fresh config: the checkpoint's own generation defaults (top-k, penalties) never leak in.
            # Temperature and top-p are our own processors, after the one that records the sampled log-probs.
            config = GenerationConfig(
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=stop_ids,
                pad_token_id=pad,
            )
            recorder = SampledTokenLogProbs(params.temperature)
            processors = LogitsProcessorList([recorder])
            if params.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
            sequences = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
                logits_processor=processors,
                synced_gpus=self.world_size > 1,
            )
        finally:
            model.train(was_training)
        new_tokens = sequences[:, width:].cpu()
        # [B, steps] fp32 log-probs of the sampled tokens under the temperature-scaled distribution
        token_logp = recorder.finish(sequences)
        stop = torch.tensor(stop_ids)
        completions, logprobs = [], []
        for row, lp in zip(new_tokens, token_logp, strict=True):
            hits = torch.isin(row, stop).nonzero()
            n = int(hits[0]) + 1 if len(hits) else len(row)
            completions.append(row[:n].tolist())
            logprobs.append(lp[:n].tolist())
        return completions, logprobs
