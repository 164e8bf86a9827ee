"""One fp32 pass → sampled-token log-probs and exact full-vocab entropies, chunked over tokens.

The decoder runs once; the LM head, ``log_softmax`` and the entropy are evaluated in chunks of
``chunk_size`` scored positions, each chunk under activation checkpointing when gradients are needed. Peak
memory therefore scales with ``chunk_size × vocab`` instead of ``batch × length × vocab`` — and only the
positions that are scored (completion tokens) ever reach the LM head.

Everything from the logits on is fp32 whatever the model's dtype (``fp32_lm_head=True`` also runs the LM-head
matmul itself in fp32, so bf16 weights do not round the logits).

Families that rescale the logits after the LM head (Gemma soft-capping, Granite, Cohere) get that rescaling
applied inside the chunked head instead, before the temperature; see ``logit_scaling``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from epr_lightning.logit_scaling import (
    LogitTransform,
    check_head_output_untouched,
    post_head_scaling_disabled,
    post_head_transform,
)
from epr_lightning.models import base_model


def split_causal_lm(model: torch.nn.Module) -> tuple[torch.nn.Module, Any]:
    """(decoder returning hidden states, LM head) of an HF causal LM, a PEFT wrapper of one included."""
    inner = base_model(model)
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise TypeError(
            f"{type(inner).__name__} is not an HF causal LM with a decoder and an output embedding"
        )
    return decoder, head


LogProbDType = Literal["float32", "bfloat16"]


def check_logprob_dtype(logprob_dtype: str) -> None:
    """``model.logprob_dtype`` is one of ``LogProbDType``'s values."""
    if logprob_dtype not in get_args(LogProbDType):
        raise ValueError(
            f"model.logprob_dtype must be one of {get_args(LogProbDType)}, got {logprob_dtype!r}"
        )


@dataclass
class PolicyPass:
    """What one pass of the policy over a token batch gives, [N, T] each (0 off the score mask).

    Attributes:
        logp: log π of each sampled token (fp32 values; with ``logprob_dtype="bfloat16"`` they are bf16-rounded).
        entropy: exact full-vocabulary entropy H(π(·|s_t)) at each position.
        collision: S_t = Σ_a π_a²·(log π_a + H), detached. A policy-gradient step on one sampled token b with
            advantage A changes the entropy by −η·A·(π_b·L_b − S) (L = log π + H); S is what makes the sampled
            estimate of Theorem 1 correct for advantages that are not centred per state.
        logp_fp32: the fp32 log-probs of the same tokens when ``logp`` is bf16 (for the precision audit), else None.
    """

    logp: Tensor
    entropy: Tensor
    collision: Tensor | None = None
    logp_fp32: Tensor | None = None

    def _map(self, f: Callable[[Tensor], Tensor]) -> PolicyPass:
        def optional(t: Tensor | None) -> Tensor | None:
            return None if t is None else f(t)

        return PolicyPass(f(self.logp), f(self.entropy), optional(self.collision), optional(self.logp_fp32))

    def detached(self) -> PolicyPass:
        return self._map(Tensor.detach)

    def rows(self, rows: Tensor, width: int) -> PolicyPass:
        """The given rows, trimmed to ``width`` positions (a minibatch's view of a whole-rollout pass)."""
        return self._map(lambda t: t[rows, :width])

    @staticmethod
    def assemble(shape: torch.Size, parts: list[tuple[Tensor, PolicyPass]]) -> PolicyPass:
        """A whole-rollout pass of ``shape`` [N, T] from passes over disjoint row sets (each trimmed to its own
        width; positions past it are 0, off every mask). Detached."""

        def gather(field: str) -> Tensor | None:
            values = [(rows, getattr(part, field)) for rows, part in parts]
            if any(v is None for _, v in values):
                return None
            full = torch.zeros(shape, device=values[0][1].device)
            for rows, v in values:
                scatter_rows(full, rows, v)
            return full

        logp, entropy = gather("logp"), gather("entropy")
        assert logp is not None and entropy is not None
        return PolicyPass(logp, entropy, gather("collision"), gather("logp_fp32"))


def scatter_rows(full: Tensor, rows: Tensor, part: Tensor) -> None:
    """Write ``part`` (a minibatch's rows, trimmed to their own width) into ``rows`` of the whole-rollout ``full``."""
    full[rows, : part.shape[1]] = part.detach().to(full.dtype)


# id(weight) → (the weight's state when copied, its copy): see ``head_weight``
_HEAD_COPIES: dict[int, tuple[tuple[Any, ...], Tensor]] = {}


def head_weight(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight`` in ``dtype``. A frozen weight (no gradient; a LoRA policy's LM head) is copied once and the copy
    reused while the weight is unchanged (same storage, same version counter): a bf16 head's fp32 copy took
    25 ms of every log-prob pass and sampling call on SmolLM2. Trainable and sharded weights are cast each time
    (the cast must stay in the graph)."""
    if weight.dtype == dtype or weight.requires_grad or hasattr(weight, "full_tensor"):
        return weight.to(dtype)
    state = (weight.data_ptr(), weight._version, weight.shape, weight.device, dtype)
    hit = _HEAD_COPIES.get(id(weight))
    if hit is None or hit[0] != state:
        if hit is None:
            weakref.finalize(weight, _HEAD_COPIES.pop, id(weight), None)
        hit = (state, weight.detach().to(dtype))
        _HEAD_COPIES[id(weight)] = hit
    return hit[1]


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    # autocast (Trainer "bf16-mixed") would otherwise choose the matmul's precision itself
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return F.linear(
            hidden.to(dtype), head_weight(weight, dtype), None if bias is None else bias.to(dtype)
        )


def _stats(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log π of the targets, entropy, log Z) of [M, V] logits, in the logits' own dtype."""
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
    entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
    return logp, entropy, logz


def _head_chunk(
    hidden: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    temperature: float,
    fp32_head: bool,
    transform: LogitTransform | None,
    logprob_dtype: LogProbDType = "float32",
) -> Tensor:
    """[K, M]: log-probs, entropies and S of a chunk (K = 3), plus the fp32 log-probs in bf16 mode (K = 4)."""
    if fp32_head or logprob_dtype == "bfloat16":
        logits = _logits(hidden, weight, bias, torch.float32)
    else:
        logits = F.linear(hidden, weight, bias).float()
    if transform is not None:  # the model's own post-head step (soft-cap, scale) comes before T
        logits = transform(logits)
    if temperature != 1.0:
        logits = logits / temperature
    logp, entropy, logz = _stats(logits, targets)
    with torch.no_grad():  # S = Σ π²·(log π + H) = Σ π²·log π + H·Σ π², a detached statistic
        probs = torch.exp(logits - logz[:, None])
        sq = probs * probs
        collision = (sq * (logits - logz[:, None])).sum(dim=-1) + entropy * sq.sum(dim=-1)
    if logprob_dtype == "float32":
        return torch.stack([logp, entropy, collision])
    # Research switch: the whole log-prob path in bf16 (logits, log Z, log-probs, entropies), as a trainer
    # without an fp32 head computes it; the fp32 log-probs ride along so the clip decisions can be compared.
    low = _logits(hidden, weight, bias, torch.bfloat16)
    if transform is not None:
        low = transform(low)
    if temperature != 1.0:
        low = low / temperature
    logp_low, entropy_low, _ = _stats(low, targets)
    return torch.stack([logp_low.float(), entropy_low.float(), collision, logp.detach()])


def chunked_head_stats(
    hidden: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    fp32_head: bool = True,
    logit_transform: LogitTransform | None = None,
    logprob_dtype: LogProbDType = "float32",
) -> Tensor:
    """[K, M] per-row statistics of ``hidden`` [M, H] (see ``_head_chunk``), chunk by chunk.

    ``logit_transform`` maps the fp32 logits before the temperature (a model's post-head rescaling).
    """
    if logprob_dtype not in get_args(LogProbDType):
        raise ValueError(f"logprob_dtype must be one of {get_args(LogProbDType)}, got {logprob_dtype!r}")
    use_ckpt = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    fn: Callable[..., Tensor] = _head_chunk
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        args = (h, t, weight, bias, temperature, fp32_head, logit_transform, logprob_dtype)
        parts.append(checkpoint(fn, *args, use_reentrant=False) if use_ckpt else fn(*args))
    if not parts:
        return hidden.new_zeros(3 if logprob_dtype == "float32" else 4, 0, dtype=torch.float32)
    return torch.cat(parts, dim=1)


def chunked_logprobs_entropy(
    hidden: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    fp32_head: bool = True,
    logit_transform: LogitTransform | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets`` and entropy for each row of ``hidden`` ([M, H] → two [M] fp32 tensors)."""
    stats = chunked_head_stats(
        hidden, targets, weight, bias, temperature=temperature, chunk_size=chunk_size, fp32_head=fp32_head,
        logit_transform=logit_transform,
    )  # fmt: skip
    return stats[0], stats[1]


def score_tokens(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    score_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    fp32_head: bool = True,
    logprob_dtype: LogProbDType = "float32",
) -> PolicyPass:
    """Per-token log π(x_t | x_<t), exact entropy H(π(· | x_<t)) and S_t at the positions where ``score_mask``
    is 1, as a ``PolicyPass`` of [N, T] fp32 tensors aligned with ``input_ids`` (0 where ``score_mask`` is 0;
    position 0 is never scored). Gradients flow (into ``logp`` and ``entropy``) when grad mode is on.
    """
    _, head = split_causal_lm(model)
    transform = post_head_transform(model)  # read before the forward switches the model's own one off
    # logits at position t-1 predict token t
    pos = score_mask[:, 1:].bool()
    rows, cols = pos.nonzero(as_tuple=True)
    targets = input_ids[:, 1:][rows, cols]

    returned: list[Tensor] = []

    def scoring_head(hidden: Tensor) -> Tensor:  # [N, T, H] → [K, M] (log-probs; entropies; S; …)
        h = hidden[:, :-1][rows, cols]
        stats = chunked_head_stats(
            h,
            targets,
            head.weight,
            getattr(head, "bias", None),
            temperature=temperature,
            chunk_size=chunk_size,
            fp32_head=fp32_head,
            logit_transform=transform,
            logprob_dtype=logprob_dtype,
        )
        returned.append(stats.detach().clone())
        return stats

    # The chunked pass runs *as* the LM head, inside the root module's forward: FSDP2 gathers the root's own
    # parameters (embeddings, final norm, LM head) only there, so calling the decoder and reading
    # ``head.weight`` outside it would see sharded DTensors. Unsharded models compute exactly the same thing.
    # The model's own post-head rescaling is switched off (it would rescale the stack); ``transform`` does it.
    head.forward = scoring_head
    try:
        with post_head_scaling_disabled(model):
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=0)
    finally:
        del head.forward  # back to the class's forward
    if len(returned) != 1:  # a forward that bypasses or repeats the head would leave ``out.logits`` unscored
        raise NotImplementedError(
            f"{type(model).__name__}'s forward called its LM head module {len(returned)} times (expected once); "
            "the chunked pass cannot score it"
        )
    check_head_output_untouched(model, out.logits, returned[0])

    def place(row: Tensor) -> Tensor:
        full = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        return full.index_put((rows, cols + 1), row)

    stats = out.logits
    return PolicyPass(
        logp=place(stats[0]),
        entropy=place(stats[1]),
        collision=place(stats[2]).detach(),
        logp_fp32=place(stats[3]).detach() if stats.shape[0] > 3 else None,
    )


def token_logprobs_and_entropy(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    score_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    fp32_head: bool = True,
) -> tuple[Tensor, Tensor]:
    """(log-probs, entropies) of ``score_tokens`` (fp32 [N, T] each), for callers that need only those two."""
    p = score_tokens(
        model, input_ids, attention_mask, score_mask, temperature=temperature, chunk_size=chunk_size,
        fp32_head=fp32_head,
    )  # fmt: skip
    return p.logp, p.entropy


def naive_logprobs_entropy(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Reference implementation: full fp32 logits for every position (what the chunked pass avoids)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()[:, :-1]
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1) - logz
    entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    pad = torch.zeros_like(logp[:, :1])
    return torch.cat([pad, logp], dim=1), torch.cat([pad, entropy], dim=1)
