"""The in-process HF engine: transformers ``generate`` on the trainer's own policy (CPU or GPU).

It samples from the very module being trained, so ``push_weights`` has nothing to copy. Sampler log-probs
are ``log_softmax(logits / T)`` over the full vocabulary (before top-p truncation), the same semantics as
SGLang, computed in fp32 from the raw logits of each step — one step at a time, during ``generate``
(``SampledTokenLogProbs``), rather than keeping every step's logits.

A group's samples share their prompt: with ``share_prompt_prefill`` (the default) each distinct prompt of a
``generate`` call is run through the model once and its key/value cache is copied to the group's rows, instead
of G identical prefills (SGLang's prefix cache does the same on GPU); what it saves is measured in
docs/results.md ("The regime, and why").
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from epr_lightning.logprobs import head_weight, split_causal_lm
from epr_lightning.lora import lora_layers, sampling_on_merged_weights
from epr_lightning.models import base_model
from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams, stop_ids
from epr_lightning.rollout.stops import cut_at_stop


class SampledTokenLogProbs(LogitsProcessor):
    """Records ``log_softmax(logits / T)`` of each sampled token while ``generate`` runs.

    It runs first, on the raw logits (temperature and top-p follow it as processors of their own). The token
    sampled at step k is the last input id at step k + 1, so its log-prob is read from step k's distribution
    then; ``finish`` reads the last one. Only one step's distribution is held: keeping every step's logits
    (``output_logits``) costs batch × steps × vocabulary fp32, and turning them into log-probs at the end takes
    three more copies of that size.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.last: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []
        self.entropy_steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._read(input_ids[:, -1:])
        logits = scores.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        # the temperature-scaled distribution the tokens are drawn from: its log-probs and its entropy, as the
        # trainer's log-prob pass (logprobs.score_tokens at the sampling temperature) computes them
        logz = torch.logsumexp(logits, dim=-1)
        self.entropy_steps.append((logz - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)).cpu())
        self.last = logits - logz[:, None]
        return scores

    def entropies(self) -> torch.Tensor:
        """[batch, steps] entropy of the sampling distribution (logits / T) at each step, aligned with ``finish``'s
        log-probs."""
        if not self.entropy_steps:
            return torch.zeros(0, 0)
        return torch.stack(self.entropy_steps, dim=1)

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


class StopOnStrings(StoppingCriteria):
    """Ends a row once the decoded text of its last few new tokens contains a stop string (``SamplingParams.stop``).

    ``ended[row]`` = the number of new tokens when that happened: the row's completion ends there (``generate``
    pads it afterwards), or earlier if ``stops.stop_string_length`` of the whole completion says so.
    """

    def __init__(self, stop: list[str], tokenizer: Any, prompt_width: int) -> None:
        self.stop, self.tokenizer, self.start = list(stop), tokenizer, prompt_width
        self.window = max(len(s) for s in self.stop) + 2  # tokens: each token of the string adds >= 1 char
        self.ended: dict[int, int] = {}

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        new = input_ids[:, self.start :]
        texts = self.tokenizer.batch_decode(new[:, -self.window :].tolist(), skip_special_tokens=False)
        done = [any(s in t for s in self.stop) for t in texts]
        for row in (i for i, d in enumerate(done) if d and i not in self.ended):
            self.ended[row] = new.shape[1]
        return cast(torch.BoolTensor, torch.tensor(done, dtype=torch.bool, device=input_ids.device))


def fp32_logits(model: torch.nn.Module) -> bool:
    """Whether the model's LM head computes its logits in fp32 (then the sampler's entropies are exact)."""
    head = base_model(model).get_output_embeddings()
    return head is not None and head.weight.dtype == torch.float32


@contextmanager
def fp32_head_logits(model: torch.nn.Module) -> Iterator[bool]:
    """Within the block the model's LM head computes fp32 logits: its matmul runs on the hidden states and weights
    upcast to fp32 (as the trainer's ``logprobs.score_tokens`` does with ``fp32_head``), so a bf16 policy samples
    from, and records the log-probs and entropies of, the same fp32 logits its update computes. Yields whether
    the logits are fp32: the head already is, or was switched (sharded DTensor weights and a head with LoRA
    adapters are left as they are).
    Uses the fp32 copy of a frozen head that the log-prob pass keeps (``logprobs.head_weight``)."""
    head = base_model(model).get_output_embeddings()
    exact = fp32_logits(model)
    if exact or head is None or hasattr(head.weight, "full_tensor") or hasattr(head, "base_layer"):
        yield exact  # already fp32; or sharded, or a LoRA-adapted head (its forward is not one matmul)
        return
    weight = head_weight(head.weight, torch.float32)
    bias = None if getattr(head, "bias", None) is None else head.bias.detach().float()
    head.forward = lambda hidden: F.linear(hidden.float(), weight, bias)
    try:
        yield True
    finally:
        del head.forward  # back to the class's forward


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``prompts`` padded on the left to the longest (what ``generate`` wants)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention[i, width - len(p) :] = 1
    return input_ids, attention


def shared_prefill(model: Any, input_ids: torch.Tensor, attention: torch.Tensor) -> dict[str, DynamicCache]:
    """The key/value cache of every row's prompt but its last token, computed once per distinct row, as the
    keyword argument that hands it to ``generate`` (``cache``; ``past_key_values`` in older transformers).

    ``input_ids``/``attention`` are left-padded rows in which prompts repeat (a group's samples). The distinct
    rows run through the model once (positions from the attention mask, as ``generate`` numbers them) and the
    cache is then gathered to all rows; ``generate`` given this cache feeds only each row's last prompt token
    before sampling. Empty when no row repeats or the prompts are one token wide (nothing to share).
    """
    if input_ids.shape[1] < 2:
        return {}
    seen: dict[tuple[int, ...], int] = {}
    index = [seen.setdefault(tuple(row), len(seen)) for row in input_ids.tolist()]
    if len(seen) == len(index):
        return {}
    first = [index.index(u) for u in range(len(seen))]  # one row of each distinct prompt
    ids, mask = input_ids[first, :-1], attention[first, :-1]
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache(config=model.config)
    accepts = inspect.signature(base_model(model).forward).parameters
    name = "cache" if "cache" in accepts else "past_key_values"
    kwargs: dict[str, Any] = {
        name: cache,
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
    }
    if any(hasattr(p, "full_tensor") for p in model.parameters()):
        # FSDP2 gathers the root's own weights (the embeddings) only in the root's forward: run the whole model
        keep = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}  # its logits are not used
        model(use_cache=True, **keep, **kwargs)
    else:
        # The decoder alone: the prefill's logits are not used, and the LM head on the last position's slice of
        # a bf16 batch took 250 ms on CPU (a non-contiguous 3-D bf16 input falls off the fast matmul path).
        split_causal_lm(model)[0](use_cache=True, **kwargs)
    cache.reorder_cache(cast(torch.LongTensor, torch.tensor(index, device=input_ids.device)))
    return {name: cache}


class HFEngine(RolloutEngine):
    """Sampling with ``model.generate``.

    Args:
        generation_batch_size: prompts × samples per ``generate`` call (None = all at once).
        share_prompt_prefill: run each distinct prompt of a call through the model once and copy its key/value
            cache to the rows that repeat it (the samples of a group), instead of once per row. Same tokens and
            log-probs up to float rounding (the prefill's batch shape differs).
        merge_lora: sample a LoRA policy on its adapters folded into the base weights (``lora.
            sampling_on_merged_weights``: one matmul per projection instead of three; the base restored exactly
            afterwards; a copy of the adapted weights held while sampling). None (default) = when the adapted
            weights are not fp32 (``model.compute_dtype: bfloat16``), where it is cheaper and its rounding is
            within bf16's own; single process only. The sampler's log-probs then come from the merged weights:
            the precision audit measures the mismatch and TIS can correct it.
        fp32_head: compute the sampling logits in fp32 when the LM head's weights are not (``fp32_head_logits``),
            so that a bf16 policy's sampler log-probs and entropies are fp32 like the trainer's; validation then
            reads its entropy from the sampler instead of a second pass over every sample.
    """

    def __init__(
        self,
        generation_batch_size: int | None = None,
        share_prompt_prefill: bool = True,
        merge_lora: bool | None = None,
        fp32_head: bool = True,
    ) -> None:
        if generation_batch_size is not None and generation_batch_size <= 0:
            raise ValueError(f"engine.generation_batch_size must be > 0, got {generation_batch_size}")
        self.generation_batch_size = generation_batch_size
        self.share_prompt_prefill = share_prompt_prefill
        self.merge_lora = merge_lora
        self.fp32_head = fp32_head
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
        entropy: list[list[float]] = []
        finish: list[str] = []
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=devices))
            stack.enter_context(self._sampling_weights(model))
            exact_logits = (
                stack.enter_context(fp32_head_logits(model)) if self.fp32_head else fp32_logits(model)
            )
            torch.manual_seed(seed)
            step = self.generation_batch_size or len(flat_prompts)
            for start in range(0, len(flat_prompts), step):
                c, lp, f, h = self._generate_chunk(
                    model, flat_prompts[start : start + step], params, stops, device
                )
                completions += c
                logprobs += lp
                entropy += h
                finish += f
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
            sampler_entropy=entropy if exact_logits else None,
        )

    def _sampling_weights(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """The merged-LoRA context when ``merge_lora`` asks for it (see the class), else a no-op."""
        layers = lora_layers(model)
        weights = [layer.base_layer.weight for layer in layers.values()]
        if not layers or self.world_size > 1 or any(hasattr(w, "full_tensor") for w in weights):
            return nullcontext()  # sharded (DTensor) weights are not merged in place
        low_precision = any(w.dtype != torch.float32 for w in weights)
        merge = low_precision if self.merge_lora is None else self.merge_lora
        return sampling_on_merged_weights(model) if merge else nullcontext()

    def _generate_chunk(
        self,
        model: Any,
        prompts: list[list[int]],
        params: SamplingParams,
        stop_ids: list[int],
        device: torch.device,
    ) -> tuple[list[list[int]], list[list[float]], list[str], list[list[float]]]:
        """Completions (cut after the first stop token id or stop string), their log-probs, finish reasons and
        the entropy of the sampling distribution (logits / T) at each of their tokens."""
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
            input_ids, attention = input_ids.to(device), attention.to(device)
            # not with several ranks: generate(synced_gpus=True) keeps ranks in step, a prefill outside it would not
            share = self.share_prompt_prefill and self.world_size == 1
            cache = shared_prefill(model, input_ids, attention) if share else {}
            criteria = [StopOnStrings(params.stop, self.tokenizer, width)] if params.stop else []
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList(criteria),
                synced_gpus=self.world_size > 1,
                **cache,
            )
        finally:
            model.train(was_training)
        new_tokens = sequences[:, width:].cpu()
        # [B, steps] fp32 log-probs of the sampled tokens under the temperature-scaled distribution
        token_logp = recorder.finish(sequences)
        token_entropy = recorder.entropies()  # [B, steps], cut like the log-probs below
        stop = torch.tensor(stop_ids)
        completions, logprobs, finish, entropies = [], [], [], []
        for i, (row, lp, h) in enumerate(zip(new_tokens, token_logp, token_entropy, strict=True)):
            hits = torch.isin(row, stop).nonzero()
            n = int(hits[0]) + 1 if len(hits) else len(row)
            ended = criteria[0].ended.get(i, n) if criteria else n  # tokens after a string's end are padding
            n_kept = min(n, ended)
            ids, lps, by_string = cut_at_stop(
                row[:n_kept].tolist(), lp[:n_kept].tolist(), params.stop, self.tokenizer
            )
            completions.append(ids)
            logprobs.append(lps)
            entropies.append(h[: len(ids)].tolist())  # ids is a prefix of the row
            finish.append("stop" if by_string or ended < n or (ids and ids[-1] in stop_ids) else "length")
        return completions, logprobs, finish, entropies
