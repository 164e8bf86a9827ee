"""The chunked fp32 log-prob/entropy pass against full logits, and its gradients."""

from __future__ import annotations

import torch

from epr_lightning.logprobs import (
    chunked_logprobs_entropy,
    naive_logprobs_entropy,
    score_tokens,
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


def test_collision_term_equals_the_full_softmax_value(tiny_model, tiny_tokenizer):
    # S_t = Σ_a π(a|s_t)²·(log π(a|s_t) + H(s_t)) at the sampling temperature, from the chunked pass
    from epr_lightning.objectives.theory import exact_collision

    ids, attn, score = _batch(len(tiny_tokenizer))
    with torch.no_grad():
        out = score_tokens(tiny_model, ids, attn, score, temperature=0.7, chunk_size=5)
        logits = tiny_model(input_ids=ids, attention_mask=attn).logits.double()[:, :-1] / 0.7
    m = score[:, 1:].bool()
    ref = exact_collision(logits)[m].float()
    assert torch.allclose(out.collision[:, 1:][m], ref, atol=1e-6)
    assert out.collision[:, 1:][~m].abs().max() == 0 and out.logp_fp32 is None
    assert ref.abs().max() > 1e-4  # not trivially zero on this random model


def test_bf16_logprob_switch_rounds_the_log_probs_and_keeps_fp32_alongside(tiny_model, tiny_tokenizer):
    ids, attn, score = _batch(len(tiny_tokenizer))
    with torch.no_grad():
        fp32 = score_tokens(tiny_model, ids, attn, score, temperature=0.7)
        low = score_tokens(tiny_model, ids, attn, score, temperature=0.7, logprob_dtype="bfloat16")
    m = score.bool()
    assert torch.equal(low.logp_fp32, fp32.logp)  # the fp32 log-probs of the same tokens ride along
    assert torch.equal(low.logp[m], low.logp[m].bfloat16().float())  # bf16 values
    err = (low.logp[m] - fp32.logp[m]).abs()
    assert err.max() > 0 and err.max() < 0.1  # rounded, not garbage: bf16 spacing at |log π| ≈ 4-5 is 1/32
    assert torch.allclose(low.entropy[m], fp32.entropy[m], atol=0.1)
    lp, _ = token_logprobs_and_entropy(tiny_model, ids, attn, score, temperature=0.7)
    assert torch.equal(lp, fp32.logp)  # the two-value helper is the same pass


def test_head_weight_reuses_a_frozen_weights_copy_until_it_changes_and_casts_trainable_ones_each_time():
    from epr_lightning.logprobs import _HEAD_COPIES, head_weight

    frozen = torch.nn.Parameter(torch.randn(7, 3).bfloat16(), requires_grad=False)
    first = head_weight(frozen, torch.float32)
    assert first.dtype == torch.float32 and torch.equal(first, frozen.float())
    assert head_weight(frozen, torch.float32) is first  # the same copy: no second cast
    with torch.no_grad():
        frozen.mul_(2)  # an in-place change (a resume's load_state_dict): a new copy
    again = head_weight(frozen, torch.float32)
    assert again is not first and torch.equal(again, frozen.float())
    assert head_weight(frozen.detach(), torch.float32) is not again  # another tensor object: its own copy

    trainable = torch.nn.Parameter(torch.randn(7, 3).bfloat16())
    cast = head_weight(trainable, torch.float32)
    cast.sum().backward()  # the cast is in the graph: the gradient reaches the weight
    assert trainable.grad is not None and id(trainable) not in _HEAD_COPIES
    assert head_weight(frozen, torch.bfloat16) is frozen  # its own dtype: no copy

    key = id(frozen)
    del frozen, first, again
    import gc

    gc.collect()
    assert key not in _HEAD_COPIES  # a freed weight's copy goes with it
