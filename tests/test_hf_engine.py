"""The in-process HF engine: grouping, stop handling, seeding, and sampler log-probs vs the trainer's."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_adapters

from epr_lightning.logprobs import token_logprobs_and_entropy
from epr_lightning.lora import lora_layers
from epr_lightning.models import encode_prompts
from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.hf import HFEngine


def _engine(tok, model):
    engine = HFEngine()
    engine.setup(model, tok)
    return engine


def assert_sampler_logprobs_are_the_trainers(rollout, model, tokenizer, temperature):
    batch = rollout.to_batch(tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs_and_entropy(
            model, batch.input_ids, batch.attention_mask, batch.loss_mask, temperature=temperature
        )
    m = batch.loss_mask.bool()
    assert torch.allclose(logp[m], batch.sampler_logprobs[m], atol=1e-5)


def test_groups_are_prompt_major_and_logprobs_match_trainer(tiny_model, tiny_tokenizer):
    prompts = encode_prompts(tiny_tokenizer, ["1+1?", "What is 12 - 3?"])
    params = SamplingParams(temperature=0.7, max_new_tokens=10, seed=3)
    rollout = _engine(tiny_tokenizer, tiny_model).generate(prompts, params, 3, model=tiny_model)
    assert rollout.group_index == [0, 0, 0, 1, 1, 1]
    assert rollout.prompt_ids[:3] == [prompts[0]] * 3 and rollout.prompt_ids[3:] == [prompts[1]] * 3
    for ids, lps, finish in zip(
        rollout.completion_ids, rollout.sampler_logprobs, rollout.finish_reason, strict=True
    ):
        assert len(ids) == len(lps) and 1 <= len(ids) <= 10
        assert finish == ("stop" if ids[-1] == tiny_tokenizer.eos_token_id else "length")
        assert tiny_tokenizer.eos_token_id not in ids[:-1]  # cut at the first stop token
    assert_sampler_logprobs_are_the_trainers(rollout, tiny_model, tiny_tokenizer, 0.7)


def test_seeded_per_call_and_global_rng_untouched(tiny_model, tiny_tokenizer):
    prompts = encode_prompts(tiny_tokenizer, ["2+2?"])
    params = SamplingParams(max_new_tokens=12, seed=11)
    a = _engine(tiny_tokenizer, tiny_model)
    b = _engine(tiny_tokenizer, tiny_model)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = a.generate(prompts, params, 4, model=tiny_model)
    assert torch.equal(torch.rand(1), before)  # generation does not consume the global RNG stream
    second = a.generate(prompts, params, 4, model=tiny_model)
    assert first.completion_ids == b.generate(prompts, params, 4, model=tiny_model).completion_ids
    assert first.completion_ids != second.completion_ids  # the call counter moves the seed on
    b.load_state_dict(a.state_dict())  # a resumed engine continues the same stream
    assert (
        a.generate(prompts, params, 4, model=tiny_model).completion_ids
        == b.generate(prompts, params, 4, model=tiny_model).completion_ids
    )


def test_max_new_tokens_and_stop_ids(tiny_model, tiny_tokenizer):
    prompts = encode_prompts(tiny_tokenizer, ["go"])
    stop = tiny_tokenizer.convert_tokens_to_ids(["a", "e", "i", "o", "u", " "])
    rollout = _engine(tiny_tokenizer, tiny_model).generate(
        prompts, SamplingParams(max_new_tokens=5, stop_token_ids=stop), 6, model=tiny_model
    )
    for ids, finish in zip(rollout.completion_ids, rollout.finish_reason, strict=True):
        assert len(ids) <= 5
        hits = [i for i, t in enumerate(ids) if t in stop + [tiny_tokenizer.eos_token_id]]
        assert hits == ([len(ids) - 1] if finish == "stop" else [])


def test_to_batch_layout(tiny_tokenizer):
    from epr_lightning.rollout.base import Rollout

    r = Rollout(
        prompt_ids=[[5, 6], [7]],
        completion_ids=[[8], [9, 10, 2]],
        sampler_logprobs=[[-0.5], [-1.0, -2.0, -3.0]],
        group_index=[0, 0],
        finish_reason=["length", "stop"],
        completion_text=["x", "yz"],
        prompt_text=["", ""],
    )
    b = r.to_batch(pad_token_id=0)
    assert b.input_ids.tolist() == [[5, 6, 8, 0], [7, 9, 10, 2]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert b.loss_mask.tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]
    assert b.sampler_logprobs.tolist() == [[0, 0, -0.5, 0], [0, -1.0, -2.0, -3.0]]
    sub = b.select(torch.tensor([0]))
    assert sub.input_ids.tolist() == [[5, 6, 8]]  # trimmed to its own longest row


def test_top_p_truncates_sampling_but_logprobs_stay_full_vocabulary_and_no_logits_are_kept(
    tiny_model, tiny_tokenizer
):
    """Under top-p the tokens come from the nucleus of softmax(logits / T), the recorded log-probs are of the
    full temperature-scaled distribution (the trainer's), and generate is never asked to keep every step's
    logits (batch × steps × vocabulary fp32: the 0.3 GB the step benchmark found on SmolLM2)."""
    prompts = encode_prompts(tiny_tokenizer, ["1+1?", "What is 12 - 3?"])
    params = SamplingParams(temperature=0.8, top_p=0.5, max_new_tokens=8, seed=5)
    calls = []
    generate = tiny_model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return generate(*args, **kwargs)

    tiny_model.generate = spy
    try:
        rollout = _engine(tiny_tokenizer, tiny_model).generate(prompts, params, 4, model=tiny_model)
    finally:
        del tiny_model.generate
    config = calls[0]["generation_config"]
    assert not config.output_logits and not config.output_scores and not config.return_dict_in_generate
    batch = rollout.to_batch(tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1] / 0.8, dim=-1)  # position t predicts token t + 1
    m = batch.loss_mask[:, 1:].bool()
    targets = batch.input_ids[:, 1:]
    full = logp.gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(full[m], batch.sampler_logprobs[:, 1:][m], atol=1e-5)
    # every sampled token is inside the top-p nucleus: the mass of strictly more likely tokens is < p
    probs = logp.exp()
    above = (probs * (probs > full.exp()[..., None])).sum(-1)
    assert bool((above[m] < 0.5 + 1e-6).all())
    assert m.sum() >= 20


def _shared_and_separate(model, tokenizer, prompts, params, num_samples, generation_batch_size=None):
    """The same call with and without shared prompt prefill: (shared, separate) rollouts and the rows each
    prefill ran on (one entry per ``generate`` batch)."""
    rows: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[0]) if args[0].shape[1] > 1 else None
    )
    head_calls: list[int] = []
    head_hook = model.get_output_embeddings().register_forward_hook(lambda *args: head_calls.append(1))
    out, heads = [], []
    try:
        for share in (True, False):
            engine = HFEngine(generation_batch_size=generation_batch_size, share_prompt_prefill=share)
            engine.setup(model, tokenizer)
            out.append((engine.generate(prompts, params, num_samples, model=model), list(rows)))
            heads.append(len(head_calls))
            rows.clear()
            head_calls.clear()
    finally:
        hook.remove()
        head_hook.remove()
    (shared, shared_rows), (separate, separate_rows) = out
    # the shared prefill runs the decoder only: the LM head runs once per sampled position, as without it
    assert heads[0] == heads[1] > 0
    assert shared.completion_ids == separate.completion_ids
    assert shared.group_index == separate.group_index and shared.prompt_ids == separate.prompt_ids
    for a, b in zip(shared.sampler_logprobs, separate.sampler_logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
    # and the tokens' log-probs are the trainer's (the cache was gathered to the right rows)
    assert_sampler_logprobs_are_the_trainers(shared, model, tokenizer, params.temperature)
    return shared, separate, shared_rows, separate_rows


def test_shared_prompt_prefill_runs_each_prompt_once_and_samples_the_same(tiny_model, tiny_tokenizer):
    # two prompts of different lengths (left padding) x 4 samples: the prefill runs on 2 rows, not 8
    prompts = encode_prompts(tiny_tokenizer, ["1+1?", "What is 12 - 3?"])
    params = SamplingParams(temperature=0.7, max_new_tokens=10, seed=5)
    _, _, shared_rows, separate_rows = _shared_and_separate(tiny_model, tiny_tokenizer, prompts, params, 4)
    assert separate_rows == [8]  # one prefill of every row
    assert shared_rows == [2]  # one prefill of each distinct prompt


def test_shared_prompt_prefill_with_a_group_split_across_generation_batches(tiny_model, tiny_tokenizer):
    # 2 prompts x 4 samples in batches of 3 rows: [p0 p0 p0] [p0 p1 p1] [p1 p1]; the middle batch mixes the end
    # of group 0 with the start of group 1 (two prompt lengths, so different left padding)
    prompts = encode_prompts(tiny_tokenizer, ["1+1?", "What is 12 - 3?"])
    params = SamplingParams(temperature=0.7, max_new_tokens=10, seed=6)
    shared, _, shared_rows, separate_rows = _shared_and_separate(
        tiny_model, tiny_tokenizer, prompts, params, 4, generation_batch_size=3
    )
    assert separate_rows == [3, 3, 2] and shared_rows == [1, 2, 1]
    assert shared.group_index == [0, 0, 0, 0, 1, 1, 1, 1]


def test_shared_prompt_prefill_with_the_same_prompt_in_two_groups(tiny_model, tiny_tokenizer):
    # groups 0 and 2 have the same prompt: one prefill row serves both, the groups stay apart
    prompts = encode_prompts(tiny_tokenizer, ["1+1?", "What is 12 - 3?", "1+1?"])
    params = SamplingParams(temperature=0.7, max_new_tokens=10, seed=7)
    shared, _, shared_rows, separate_rows = _shared_and_separate(
        tiny_model, tiny_tokenizer, prompts, params, 3
    )
    assert separate_rows == [9] and shared_rows == [2]
    assert shared.group_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert shared.prompt_ids[:3] == shared.prompt_ids[6:] == [prompts[0]] * 3
    assert shared.completion_ids[:3] != shared.completion_ids[6:]  # the same prompt, sampled afresh


def test_shared_prompt_prefill_with_lora(tiny_model, tiny_tokenizer):
    pytest.importorskip("peft")
    from epr_lightning.lora import LoRAConfig, apply_lora

    model = apply_lora(tiny_model, LoRAConfig(r=4, alpha=8))
    randomize_adapters(model, seed=3)  # non-zero adapters: the prefill must run through them
    prompts = encode_prompts(tiny_tokenizer, ["1+1?", "What is 12 - 3?"])
    params = SamplingParams(temperature=0.7, max_new_tokens=10, seed=5)
    shared, _, shared_rows, _ = _shared_and_separate(model, tiny_tokenizer, prompts, params, 4)
    assert shared_rows == [2]
    with model.disable_adapter():  # the adapters change what is sampled: the comparison above saw them
        base = HFEngine(share_prompt_prefill=False)
        base.setup(model, tiny_tokenizer)
        assert base.generate(prompts, params, 4, model=model).completion_ids != shared.completion_ids


def _lora_calls(model) -> tuple[list[int], list]:
    """A counter of ``lora_A`` forward calls and the hooks that feed it."""
    calls = [0]
    hooks = [
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for n, m in model.named_modules()
        if n.endswith("lora_A.default")
    ]
    return calls, hooks


def test_sampling_on_merged_lora_samples_the_adapters_and_restores_the_base_exactly(
    tiny_model, tiny_tokenizer
):
    pytest.importorskip("peft")
    from epr_lightning.lora import LoRAConfig, apply_lora

    model = apply_lora(tiny_model, LoRAConfig(r=4, alpha=8))
    randomize_adapters(model, seed=3)  # non-zero adapters: merged or not, they must shape what is sampled
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    prompts = encode_prompts(tiny_tokenizer, ["1+1?", "What is 12 - 3?"])
    params = SamplingParams(temperature=0.7, max_new_tokens=10, seed=5)
    out = {}
    for merge in (True, False):
        engine = HFEngine(merge_lora=merge)
        engine.setup(model, tiny_tokenizer)
        calls, hooks = _lora_calls(model)
        out[merge] = engine.generate(prompts, params, 4, model=model)
        for h in hooks:
            h.remove()
        # merged: one matmul per projection, the adapter branches never run; unmerged: they run every step
        assert (calls[0] == 0) if merge else (calls[0] > 0)
        for n, p in model.named_parameters():  # the base weights restored bit-exactly, nothing else touched
            assert torch.equal(p, before[n][0]) and p.requires_grad == before[n][1], n
    # in fp32 the merged weights sample the same tokens with the same log-probs up to rounding
    assert out[True].completion_ids == out[False].completion_ids
    for a, b in zip(out[True].sampler_logprobs, out[False].sampler_logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
    assert_sampler_logprobs_are_the_trainers(out[True], model, tiny_tokenizer, 0.7)
    # the adapters compute again after the block: the trainer's pass runs through them
    calls, hooks = _lora_calls(model)
    model(input_ids=torch.tensor([prompts[0]]))
    assert calls[0] > 0
    for h in hooks:
        h.remove()


def test_merged_lora_sampling_by_default_only_on_low_precision_weights_and_restored_on_errors(
    tiny_model, tiny_tokenizer, monkeypatch
):
    pytest.importorskip("peft")
    from epr_lightning.lora import LoRAConfig, apply_lora

    model = apply_lora(tiny_model, LoRAConfig(r=4, alpha=8))
    randomize_adapters(model, seed=4)
    prompts = encode_prompts(tiny_tokenizer, ["1+1?"])
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=1)
    engine = HFEngine()  # merge_lora=None: merge when the adapted weights are not fp32

    def adapter_calls() -> int:
        calls, hooks = _lora_calls(model)
        engine.generate(prompts, params, 2, model=model)
        for h in hooks:
            h.remove()
        return calls[0]

    engine.setup(model, tiny_tokenizer)
    assert adapter_calls() > 0  # fp32: no copy of the weights, sampled through the adapters
    with model.disable_adapter():
        assert adapter_calls() == 0  # adapters off: nothing to fold in, and they stay off
    assert all(not layer.disable_adapters for layer in lora_layers(model).values())
    model.to(torch.bfloat16)  # bf16 compute: merged
    assert adapter_calls() == 0
    auto, unmerged, merged = HFEngine(), HFEngine(merge_lora=False), HFEngine()  # fresh: the same call seeds
    for e in (auto, unmerged, merged):
        e.setup(model, tiny_tokenizer)
    with model.disable_adapter():  # bf16 with the adapters off samples the base, not the adapters folded in
        off = auto.generate(prompts, params, 2, model=model)
        assert off.sampler_logprobs == unmerged.generate(prompts, params, 2, model=model).sampler_logprobs
    assert off.sampler_logprobs != merged.generate(prompts, params, 2, model=model).sampler_logprobs
    # an error while sampling still restores the base weights and switches the adapters back on
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def boom(*args, **kwargs):
        raise RuntimeError("sampling failed")

    monkeypatch.setattr(engine, "_generate_chunk", boom)
    with pytest.raises(RuntimeError, match="sampling failed"):
        engine.generate(prompts, params, 2, model=model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(not layer.disable_adapters for layer in lora_layers(model).values())
