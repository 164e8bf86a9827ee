"""Models that rescale logits after the LM head (Gemma soft-cap, Granite, Cohere) score like their own logits.

The chunked pass runs as the LM head; the model's forward must not rescale the returned [log-prob; entropy]
stack, and the chunked head must apply the family's rescaling itself, before the temperature.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Cohere2Config,
    CohereConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GraniteConfig,
    GraniteMoeConfig,
    LlamaForCausalLM,
)

from epr_lightning.logit_scaling import post_head_scaling_disabled, post_head_transform
from epr_lightning.logprobs import chunked_logprobs_entropy, split_causal_lm, token_logprobs_and_entropy
from epr_lightning.models import encode_prompts
from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.hf import HFEngine

# family → (config class, its post-head parameter, a value that moves the numbers a lot)
FAMILIES = {
    "gemma2": (Gemma2Config, "final_logit_softcapping", 2.0),
    "gemma3": (Gemma3TextConfig, "final_logit_softcapping", 2.0),
    "granite": (GraniteConfig, "logits_scaling", 4.0),
    "granitemoe": (GraniteMoeConfig, "logits_scaling", 4.0),
    "cohere": (CohereConfig, "logit_scale", 0.3),
    "cohere2": (Cohere2Config, "logit_scale", 0.3),
}


def _model(family: str, tok, *, rescale: bool = True) -> torch.nn.Module:
    """A tiny random model of ``family``; ``rescale=False`` gives the same weights with the rescaling off."""
    cls, attr, value = FAMILIES[family]
    if not rescale:
        value = None if attr == "final_logit_softcapping" else 1.0
    kwargs = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,  # logits of order 1-5, where the soft-cap and the scales change them
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        attn_implementation="eager",
        **{attr: value},
    )
    if family == "granitemoe":
        kwargs.update(num_local_experts=2, num_experts_per_tok=1)
    else:
        kwargs["head_dim"] = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(cls(**kwargs), dtype=torch.float32)


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, vocab, (3, 11), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 8:] = 0  # a right-padded row
    score = torch.zeros(3, 11)
    score[:, 3:] = 1.0
    score[1, 8:] = 0.0
    return ids, attn, score


def _reference(model, ids, attn, temperature: float):
    """log_softmax of the model's own logits (rescaling included) divided by T, and the entropy."""
    logits = model(input_ids=ids, attention_mask=attn).logits.float()[:, :-1] / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    pad = torch.zeros_like(logp[:, :1])
    return torch.cat([pad, logp], 1), torch.cat([pad, entropy], 1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_pass_equals_model_logits(family, temperature, tiny_tokenizer):
    model = _model(family, tiny_tokenizer)
    ids, attn, score = _batch(len(tiny_tokenizer))
    m = score.bool()
    with torch.no_grad():
        lp, ent = token_logprobs_and_entropy(model, ids, attn, score, temperature=temperature, chunk_size=5)
        ref_lp, ref_ent = _reference(model, ids, attn, temperature)
        # the same weights without the rescaling: numbers the test must tell apart from the right ones
        plain_lp, _ = _reference(_model(family, tiny_tokenizer, rescale=False), ids, attn, temperature)
    assert (plain_lp[m] - ref_lp[m]).abs().max() > 0.1
    assert torch.allclose(lp[m], ref_lp[m], atol=1e-5, rtol=0)
    assert torch.allclose(ent[m], ref_ent[m], atol=1e-5, rtol=0)
    assert lp[~m].abs().max() == 0 and ent[~m].abs().max() == 0


@pytest.mark.parametrize("family", ["gemma2", "granite", "cohere"])
def test_gradients_equal_model_logits(family, tiny_tokenizer):
    model = _model(family, tiny_tokenizer)
    ids, attn, score = _batch(len(tiny_tokenizer))
    lp, ent = token_logprobs_and_entropy(model, ids, attn, score, temperature=0.7, chunk_size=4)
    (lp.sum() + 0.3 * ent.sum()).backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref_lp, ref_ent = _reference(model, ids, attn, 0.7)
    ((ref_lp * score).sum() + 0.3 * (ref_ent * score).sum()).backward()
    assert chunked.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(chunked[name], p.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_attributes_restored_after_pass_and_on_error(family, tiny_tokenizer):
    model = _model(family, tiny_tokenizer)
    _, attr, value = FAMILIES[family]
    owner = model if family.startswith("cohere") else model.config
    _, head = split_causal_lm(model)
    ids, attn, score = _batch(len(tiny_tokenizer))
    with torch.no_grad():
        token_logprobs_and_entropy(model, ids, attn, score)
    assert getattr(owner, attr) == value and "forward" not in vars(head)
    with pytest.raises(RuntimeError, match="boom"), post_head_scaling_disabled(model):
        assert getattr(owner, attr) in (None, 1.0)  # switched off inside
        raise RuntimeError("boom")
    assert getattr(owner, attr) == value
    bad = ids.clone()
    bad[0, 0] = len(tiny_tokenizer) + 50  # out of the embedding's range: the forward raises mid-pass
    with pytest.raises(IndexError):
        token_logprobs_and_entropy(model, bad, attn, score)
    assert getattr(owner, attr) == value and "forward" not in vars(head)
    assert post_head_transform(model) is not None


def test_plain_llama_unchanged(tiny_model, tiny_tokenizer):
    """No transform for Llama, and the pass equals the chunked head on the decoder's hidden states bit for bit."""
    assert post_head_transform(tiny_model) is None
    ids, attn, score = _batch(len(tiny_tokenizer))
    with torch.no_grad():
        lp, ent = token_logprobs_and_entropy(tiny_model, ids, attn, score, temperature=0.7, chunk_size=5)
        decoder, head = split_causal_lm(tiny_model)
        hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state
        rows, cols = score[:, 1:].bool().nonzero(as_tuple=True)
        old_lp, old_ent = chunked_logprobs_entropy(
            hidden[:, :-1][rows, cols], ids[:, 1:][rows, cols], head.weight, temperature=0.7, chunk_size=5
        )
        ref_lp, ref_ent = _reference(tiny_model, ids, attn, 0.7)
    assert torch.equal(lp[rows, cols + 1], old_lp) and torch.equal(ent[rows, cols + 1], old_ent)
    m = score.bool()
    assert torch.allclose(lp[m], ref_lp[m], atol=1e-5, rtol=0)
    assert torch.allclose(ent[m], ref_ent[m], atol=1e-5, rtol=0)


class _DoublingLlama(LlamaForCausalLM):
    """A model of no known family that rescales its logits after the head."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out


def test_unknown_post_head_rescaling_is_refused(tiny_model, tiny_tokenizer):
    model = _DoublingLlama(tiny_model.config)
    ids, attn, score = _batch(len(tiny_tokenizer))
    with pytest.raises(NotImplementedError, match="_DoublingLlama changes its LM head's output"):
        token_logprobs_and_entropy(model, ids, attn, score)


def test_sampler_logprobs_match_trainer_for_softcapped_model(tiny_tokenizer):
    """HF ``generate`` soft-caps inside the model and applies T afterwards; the trainer's pass must agree."""
    model = _model("gemma2", tiny_tokenizer)
    engine = HFEngine()
    engine.setup(model, tiny_tokenizer)
    prompts = encode_prompts(tiny_tokenizer, ["1+1?", "7*3?"])
    rollout = engine.generate(
        prompts, SamplingParams(temperature=0.7, max_new_tokens=8, seed=5), 2, model=model
    )
    batch = rollout.to_batch(tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs_and_entropy(
            model, batch.input_ids, batch.attention_mask, batch.loss_mask, temperature=0.7
        )
    m = batch.loss_mask.bool()
    assert m.sum() >= 8
    assert torch.allclose(logp[m], batch.sampler_logprobs[m], atol=1e-5, rtol=0)
