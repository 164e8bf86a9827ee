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

from collections.abc import Callable

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


def split_causal_lm(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder returning hidden states, LM head) of an HF causal LM, a PEFT wrapper of one included."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise TypeError(
            f"{type(inner).__name__} is not an HF causal LM with a decoder and an output embedding"
        )
    return decoder, head


def _head_chunk(
    hidden: Tensor,
    targets: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    temperature: float,
    fp32_head: bool,
    transform: LogitTransform | None,
) -> tuple[Tensor, Tensor]:
    if fp32_head:  # autocast (Trainer "bf16-mixed") would otherwise run this matmul in bf16
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    else:
        logits = F.linear(hidden, weight, bias).float()
    if transform is not None:  # the model's own post-head step (soft-cap, scale) comes before T
        logits = transform(logits)
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
    logit_transform: LogitTransform | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets`` and entropy for each row of ``hidden`` ([M, H] → two [M] fp32 tensors).

    ``logit_transform`` maps the fp32 logits before the temperature (a model's post-head rescaling).
    """
    use_ckpt = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    fn: Callable[..., tuple[Tensor, Tensor]] = _head_chunk
    logps, ents = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if use_ckpt:
            lp, ent = checkpoint(
                fn, h, t, weight, bias, temperature, fp32_head, logit_transform, use_reentrant=False
            )
        else:
            lp, ent = fn(h, t, weight, bias, temperature, fp32_head, logit_transform)
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
    transform = post_head_transform(model)  # read before the forward switches the model's own one off
    # logits at position t-1 predict token t
    pos = score_mask[:, 1:].bool()
    rows, cols = pos.nonzero(as_tuple=True)
    targets = input_ids[:, 1:][rows, cols]

    returned: list[Tensor] = []

    def scoring_head(hidden: Tensor) -> Tensor:  # [N, T, H] → [2, M] (log-probs; entropies)
        h = hidden[:, :-1][rows, cols]
        lp, ent = chunked_logprobs_entropy(
            h,
            targets,
            head.weight,
            getattr(head, "bias", None),
            temperature=temperature,
            chunk_size=chunk_size,
            fp32_head=fp32_head,
            logit_transform=transform,
        )
        stack = torch.stack([lp, ent])
        returned.append(stack.detach().clone())
        return stack

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
    lp, ent = out.logits[0], out.logits[1]
    logp = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    entropy = torch.zeros_like(logp)
    logp = logp.index_put((rows, cols + 1), lp)
    entropy = entropy.index_put((rows, cols + 1), ent)
    return logp, entropy


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
