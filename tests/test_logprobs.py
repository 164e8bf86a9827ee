"""The chunked fp32 log-prob/entropy pass against full logits, and its gradients."""

from __future__ import annotations

import torch

from epr_lightning.logprobs import (
    chunked_logprobs_entropy,
    naive_logprobs_entropy,
    token_logprobs_and_entropy,
)


def _batch(vocab: int, n: int = 3, t: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, t), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 7:] = 0  # a right-padded row
    score = torch.zeros(n, t)
    score[:, 4:] = 1.0
    score[1, 7:] = 0.0
    return ids, attn, score


def test_chunked_pass_equals_full_logits(tiny_model, tiny_tokenizer):
    ids, attn, score = _batch(len(tiny_tokenizer))
    with torch.no_grad():
        lp, ent = token_logprobs_and_entropy(tiny_model, ids, attn, score, chunk_size=5)
        ref_lp, ref_ent = naive_logprobs_entropy(tiny_model, ids, attn)
    m = score.bool()
    assert torch.allclose(lp[m], ref_lp[m], atol=1e-5)
    assert torch.allclose(ent[m], ref_ent[m], atol=1e-5)
    # unscored positions are exactly zero, scored entropies are within [0, log V]
    assert lp[~m].abs().max() == 0 and ent[~m].abs().max() == 0
    assert (ent[m] > 0).all() and (ent[m] <= torch.log(torch.tensor(float(len(tiny_tokenizer))))).all()


def test_temperature_scales_distribution(tiny_model, tiny_tokenizer):
    ids, attn, score = _batch(len(tiny_tokenizer))
    with torch.no_grad():
        lp_t, _ = token_logprobs_and_entropy(tiny_model, ids, attn, score, temperature=0.5)
        logits = tiny_model(input_ids=ids, attention_mask=attn).logits.float()[:, :-1] / 0.5
        ref = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = score[:, 1:].bool()
    assert torch.allclose(lp_t[:, 1:][m], ref[m], atol=1e-5)


def test_gradients_match_full_logits(tiny_model, tiny_tokenizer):
    ids, attn, score = _batch(len(tiny_tokenizer))
    lp, ent = token_logprobs_and_entropy(tiny_model, ids, attn, score, chunk_size=4)
    (lp.sum() + 0.3 * ent.sum()).backward()
    chunked = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    ref_lp, ref_ent = naive_logprobs_entropy(tiny_model, ids, attn)
    ((ref_lp * score).sum() + 0.3 * (ref_ent * score).sum()).backward()
    for name, p in tiny_model.named_parameters():
        assert torch.allclose(chunked[name], p.grad, atol=1e-5), name


def test_bf16_weights_give_fp32_outputs():
    # Hand example: one hidden row h = [1, 0], head W = [[2, 0], [0, 0], [-2, 0]] → logits [2, 0, -2].
    h = torch.tensor([[1.0, 0.0]], dtype=torch.bfloat16)
    w = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-2.0, 0.0]], dtype=torch.bfloat16)
    lp, ent = chunked_logprobs_entropy(h, torch.tensor([0]), w)
    logits = torch.tensor([2.0, 0.0, -2.0])
    p = torch.softmax(logits, 0)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    assert torch.allclose(lp, torch.log(p[:1]), atol=1e-6)
    assert torch.allclose(ent, -(p * p.log()).sum()[None], atol=1e-6)
