"""One fp32 pass → sampled-token log-probs and exact full-vocab entropies, chunked over tokens.

The decoder runs once; the LM head, ``log_softmax`` and the entropy are evaluated in chunks of
``chunk_size`` scored positions, each chunk under activation checkpointing when gradients are needed. Peak
memory therefore scales with ``chunk_size × vocab`` instead of ``batch × length × vocab`` — and only the
positions that are scored (completion tokens) ever reach the LM head.

Everything from the logits on is fp32 whatever the model's dtype (``fp32_lm_head=True`` also runs the LM-head
matmul itself in fp32, so bf16 weights do not round the logits; paper.md §7).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def split_causal_lm(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder returning hidden states, LM head) of an HF causal LM, a PEFT wrapper of one included."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise TypeError(f"{type(inner).__name__} is not an HF causal LM with a decoder and an output embedding")
    return decoder, head


def _head_chunk(
    hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, temperature: float, fp32_head: bool
) -> tuple[Tensor, Tensor]:
    if fp32_head:  # autocast (Trainer "bf16-mixed") would otherwise run this matmul in bf16
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    else:
        logits = F.linear(hidden, weight, bias).float()
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
    probs = torch.softmax(logits, dim=-1)
    entropy = logz - (probs * logits).sum(dim=-1)
    return logp, entropy


def chunked_logprobs_entropy(
    hidden: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    fp32_head: bool = True,
) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets`` and entropy for each row of ``hidden`` ([M, H] → two [M] fp32 tensors)."""
    use_ckpt = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    fn: Callable[..., tuple[Tensor, Tensor]] = _head_chunk
    logps, ents = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if use_ckpt:
            lp, ent = checkpoint(fn, h, t, weight, bias, temperature, fp32_head, use_reentrant=False)
        else:
            lp, ent = fn(h, t, weight, bias, temperature, fp32_head)
        logps.append(lp)
        ents.append(ent)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


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
    """Per-token log π(x_t | x_<t) and exact entropy H(π(· | x_<t)) at the positions where ``score_mask`` is 1.

    Returns two fp32 [N, T] tensors aligned with ``input_ids`` (0 where ``score_mask`` is 0; position 0 is
    never scored). Gradients flow when grad mode is on.
    """
    _, head = split_causal_lm(model)
    # logits at position t-1 predict token t
    pos = score_mask[:, 1:].bool()
    rows, cols = pos.nonzero(as_tuple=True)
    targets = input_ids[:, 1:][rows, cols]

    def scoring_head(hidden: Tensor) -> Tensor:  # [N, T, H] → [2, M] (log-probs; entropies)
        h = hidden[:, :-1][rows, cols]
        lp, ent = chunked_logprobs_entropy(
            h, targets, head.weight, getattr(head, "bias", None),
            temperature=temperature, chunk_size=chunk_size, fp32_head=fp32_head,
        )
        return torch.stack([lp, ent])

    # The chunked pass runs *as* the LM head, inside the root module's forward: FSDP2 gathers the root's own
    # parameters (embeddings, final norm, LM head) only there, so calling the decoder and reading
    # ``head.weight`` outside it would see sharded DTensors. Unsharded models compute exactly the same thing.
    head.forward = scoring_head
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=0)
    finally:
        del head.forward  # back to the class's forward
    lp, ent = out.logits[0], out.logits[1]
    logp = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    entropy = torch.zeros_like(logp)
    logp = logp.index_put((rows, cols + 1), lp)
    entropy = entropy.index_put((rows, cols + 1), ent)
    return logp, entropy


def naive_logprobs_entropy(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Reference implementation: full fp32 logits for every position (what the chunked pass avoids)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()[:, :-1]
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1) - logz
    entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    pad = torch.zeros_like(logp[:, :1])
    return torch.cat([pad, logp], dim=1), torch.cat([pad, entropy], dim=1)
