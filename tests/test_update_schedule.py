"""The update schedule (epochs × minibatches per rollout) and deterministic log-prob passes (no dropout)."""

from __future__ import annotations

import pytest
import torch

from epr_lightning.lora import LoRAConfig
from epr_lightning.models import PolicySource, disable_dropout
from epr_lightning.module import RLModule
from epr_lightning.objectives import Objective, REINFORCELoss
from epr_lightning.rollout.base import TokenBatch
from epr_lightning.tiny import char_tokenizer
from epr_lightning.update import minibatch_rows


def test_minibatch_rows():
    assert minibatch_rows(32, 2, None) == 16  # a count of minibatches does not depend on the batch size
    assert minibatch_rows(10, 3, None) == 4  # ⌈10 / 3⌉: minibatches of 4, 4, 2
    assert minibatch_rows(32, None, 8) == 8
    assert minibatch_rows(6, None, 8) == 6 and minibatch_rows(6, None, None) == 6


def test_schedule_arguments_are_validated():
    with pytest.raises(ValueError, match="set only one of model.num_minibatches"):
        RLModule(num_minibatches=2, minibatch_size=8)
    with pytest.raises(ValueError, match="num_minibatches must be >= 1"):
        RLModule(num_minibatches=0)
    with pytest.raises(ValueError, match="strictly on-policy"):
        RLModule(objective=Objective(loss=REINFORCELoss()), num_minibatches=2)
    RLModule(objective=Objective(loss=REINFORCELoss()), num_minibatches=1)  # one update per rollout is fine


class DropoutTiny(PolicySource):
    """The tiny Llama with attention dropout 0.5 (as some checkpoints ship)."""

    def build(self):
        from transformers import AutoModelForCausalLM, LlamaConfig

        tok = char_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        )  # fmt: skip
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).train(), tok


def _tokens(vocab: int) -> TokenBatch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 10), generator=g)
    mask = torch.zeros(3, 10)
    mask[:, 4:] = 1.0
    return TokenBatch(
        ids, torch.ones(3, 10, dtype=torch.long), mask, torch.zeros(3, 10), torch.tensor([0, 0, 0])
    )


@pytest.mark.parametrize(
    "lora", [None, LoRAConfig(r=4, alpha=8, dropout=0.3, target_modules=["q_proj", "v_proj"])]
)
def test_log_prob_passes_are_deterministic_with_dropout_models(lora):
    module = RLModule(policy=DropoutTiny(), lora=lora)
    module.configure_model()
    assert module.policy.training  # the passes run in train mode (gradient checkpointing needs it) ...
    tokens = _tokens(len(module.tokenizer))
    first = module.policy_pass(tokens, grad=True)
    second = module.policy_pass(tokens, grad=False)
    # ... yet two passes over the same tokens agree exactly: the on-policy ratio is 1, entropies are not noisy
    assert torch.equal(first.logp.detach(), second.logp) and torch.equal(
        first.entropy.detach(), second.entropy
    )
    assert module.policy.config.attention_dropout == 0.0


def test_disable_dropout_reports_what_it_changed():
    model, _ = DropoutTiny().build()
    assert disable_dropout(model) > 0
    assert disable_dropout(model) == 0  # idempotent


@pytest.mark.parametrize("logprob_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "num_minibatches, ppo_epochs, passes",
    [
        (1, 1, [(6, True)]),  # on-policy: the gradient pass is π_old, no other pass
        (2, 1, [(3, False), (3, True), (3, True)]),  # π_old without grad only for the second minibatch's rows
        (3, 2, [(4, False)] + [(2, True)] * 6),
    ],
)
def test_pi_old_comes_from_the_first_minibatch_pass_and_one_no_grad_pass_over_the_rest(
    num_minibatches, ppo_epochs, passes, logprob_dtype
):
    from epr_lightning.models import TinyModel
    from epr_lightning.rollout.base import Rollout
    from epr_lightning.update import Optimization, PolicyUpdate, UpdateSettings

    module = RLModule(policy=TinyModel(), logprob_dtype=logprob_dtype)
    module.configure_model()
    g = torch.Generator().manual_seed(2)
    vocab = len(module.tokenizer)
    # rows of different lengths (one of 10 tokens, the others 5 to 7): every minibatch without row 0 is trimmed
    # narrower than the rollout, so π_old is assembled from passes of different widths
    completion_lengths = [6, 1, 2, 1, 3, 2]
    rollout = Rollout(
        prompt_ids=[torch.randint(5, vocab, (4,), generator=g).tolist() for _ in completion_lengths],
        completion_ids=[torch.randint(5, vocab, (k,), generator=g).tolist() for k in completion_lengths],
        sampler_logprobs=[[-1.0] * k for k in completion_lengths],
        group_index=list(range(6)),
        finish_reason=["stop"] * 6,
        completion_text=[""] * 6,
        prompt_text=[""] * 6,
    )
    tokens = rollout.to_batch(module.tokenizer.pad_token_id)
    assert tokens.input_ids.shape == (6, 10)
    before = module.policy_pass(tokens, grad=False)  # π_old of every row, in one pass, before any step
    calls: list[tuple[int, bool]] = []
    widths: list[int] = []

    def recorded(batch, *, grad, model=None):
        calls.append((len(batch), grad))
        widths.append(batch.input_ids.shape[1])
        return module.policy_pass(batch, grad=grad, model=model)

    settings = UpdateSettings(ppo_epochs=ppo_epochs, num_minibatches=num_minibatches)
    update = PolicyUpdate(settings, Objective(), recorded)
    opt = torch.optim.SGD(module.policy.parameters(), lr=0.5)
    optim = Optimization(opt, None, lambda loss: loss.backward(), lambda: module.policy.parameters())
    stats = update(tokens, torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0]), iteration=0, optim=optim)
    assert calls == passes
    if num_minibatches > 1:
        assert min(widths) < 10  # some pass was trimmed
    # the assembled π_old is the whole-rollout pass before any step, field by field, 0 off the mask
    assert stats.old.logp.shape == stats.old.collision.shape == (6, 10)
    tight = dict(rtol=0.0, atol=1e-5)
    rounded = dict(rtol=2**-7, atol=1e-5) if logprob_dtype == "bfloat16" else tight  # bf16: one rounding step
    torch.testing.assert_close(stats.old.logp, before.logp, **rounded)
    torch.testing.assert_close(stats.old.entropy, before.entropy, **tight)
    torch.testing.assert_close(stats.old.collision, before.collision, **tight)
    if logprob_dtype == "bfloat16":
        torch.testing.assert_close(stats.old.logp_fp32, before.logp_fp32, **tight)
    else:
        assert stats.old.logp_fp32 is None and before.logp_fp32 is None
    off = tokens.loss_mask == 0
    assert not stats.old.logp[off].any() and not stats.old.collision[off].any()
    m = tokens.loss_mask.bool()
    assert before.collision[m].abs().sum() > 0 and before.entropy[m].min() > 0  # not trivially zero
    after = module.policy_pass(tokens, grad=False)
    assert not torch.allclose(after.logp[m], before.logp[m], atol=1e-3)  # the steps did move the policy
