"""The HF engine records the policy's entropy while it samples, so validation needs no second pass over every
sample: those entropies are the trainer's (the same fp32 numbers as ``token_logprobs_and_entropy``), and
validation logs the same ``val/entropy`` with them as with a policy pass."""

from __future__ import annotations

import pytest
import torch

from epr_lightning.logprobs import token_logprobs_and_entropy
from epr_lightning.models import encode_prompts
from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.hf import HFEngine
from epr_lightning.validation import validation_entropy


def _rollout(model, tokenizer, temperature, **engine_args):
    engine = HFEngine(**engine_args)
    engine.setup(model, tokenizer)
    prompts = encode_prompts(tokenizer, ["1+1?", "What is 12 - 3?", "7*6"])
    return engine.generate(
        prompts, SamplingParams(temperature=temperature, max_new_tokens=9, seed=5), 4, model=model
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_entropy_is_the_trainers_entropy(tiny_model, tiny_tokenizer, temperature):
    rollout = _rollout(tiny_model, tiny_tokenizer, temperature)
    assert rollout.sampler_entropy is not None
    assert [len(h) for h in rollout.sampler_entropy] == [len(c) for c in rollout.completion_ids]
    batch = rollout.to_batch(tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        _, entropy = token_logprobs_and_entropy(
            tiny_model, batch.input_ids, batch.attention_mask, batch.loss_mask, temperature=temperature
        )  # the sampling distribution's entropy: what the trainer's pass (and its fallback here) computes
    recorded = validation_entropy(rollout, batch, lambda: pytest.fail("no policy pass expected"))
    m = batch.loss_mask.bool()
    assert recorded.dtype == torch.float32 and torch.equal(recorded[~m], torch.zeros_like(recorded[~m]))
    assert torch.allclose(recorded[m], entropy[m], atol=1e-4)
    assert entropy[m].std() > 0  # a real comparison: the entropies vary from token to token


def test_a_bf16_policy_samples_from_fp32_logits_and_records_the_trainers_entropy(tiny_model, tiny_tokenizer):
    model = tiny_model.to(torch.bfloat16)
    rollout = _rollout(model, tiny_tokenizer, 1.0)
    assert rollout.sampler_entropy is not None  # the head ran in fp32 while sampling (fp32_head_logits)
    assert "forward" not in vars(model.lm_head)  # and is its own class's again
    batch = rollout.to_batch(tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logp, entropy = token_logprobs_and_entropy(
            model, batch.input_ids, batch.attention_mask, batch.loss_mask, fp32_head=True
        )
    recorded = validation_entropy(rollout, batch, lambda: pytest.fail("no policy pass expected"))
    m = batch.loss_mask.bool()
    sampled = torch.tensor([x for row in rollout.sampler_logprobs for x in row])
    # the same fp32 head over the same bf16 body; what differs is the decode's cached attention in bf16
    assert (recorded[m] - entropy[m]).abs().max() < 1e-3
    assert (sampled - logp[m]).abs().max() < 2e-3
    assert entropy[m].std() > 0


def test_no_sampler_entropy_without_fp32_logits_falls_back_to_the_policy_pass(tiny_model, tiny_tokenizer):
    model = tiny_model.to(torch.bfloat16)
    rollout = _rollout(model, tiny_tokenizer, 1.0, fp32_head=False)
    assert rollout.sampler_entropy is None  # bf16 logits: not the fp32 numbers the project promises
    batch = rollout.to_batch(tiny_tokenizer.pad_token_id)
    sentinel = torch.full(batch.loss_mask.shape, 3.0)
    calls = []

    class Pass:
        entropy = sentinel

    def policy_pass():
        calls.append(1)
        return Pass()

    assert validation_entropy(rollout, batch, policy_pass) is sentinel and calls == [1]
