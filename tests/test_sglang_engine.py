"""SGLangEngine (in-process) with a fake ``sglang`` module injected into ``sys.modules``."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.sglang import SGLangEngine
from epr_lightning.testing.fake_sglang_module import fake_sglang_module
from epr_lightning.tiny import char_tokenizer, tiny_causal_lm


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture
def policy(tok) -> torch.nn.Module:
    model = tiny_causal_lm(
        len(tok), hidden_size=32, intermediate_size=64, num_layers=2, eos_token_id=tok.eos_token_id
    )
    model.name_or_path = "/models/tiny"
    return model


def install(monkeypatch, policy, tok, **kw):
    """A fake sglang whose engine samples from its own copy of the policy."""
    mod = fake_sglang_module(copy.deepcopy(policy), tok, **kw)
    monkeypatch.setitem(sys.modules, "sglang", mod)
    return mod


def names(mod) -> list[str]:
    return [c[0] for c in mod.calls]


def perturb(model: torch.nn.Module) -> None:
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(2)
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))


def test_missing_sglang_names_the_extra(monkeypatch, policy, tok) -> None:
    monkeypatch.setitem(sys.modules, "sglang", None)  # makes `import sglang` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'epr-lightning\[sglang\]'"):
        SGLangEngine().setup(policy, tok)


def test_engine_kwargs(monkeypatch, policy, tok) -> None:
    mod = install(monkeypatch, policy, tok)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    SGLangEngine(
        seed=7, mem_fraction_static=0.3, extra_engine_args={"cuda_graph_backend_prefill": "disabled"}
    ).setup(policy, tok, rank=2, world_size=4)
    kw = mod.engines[0].kwargs
    assert kw["model_path"] == "/models/tiny" and kw["skip_tokenizer_init"] is True
    assert kw["random_seed"] == 9 and kw["base_gpu_id"] == 2 and kw["port"] == 30002
    assert kw["mem_fraction_static"] == 0.3 and kw["enable_memory_saver"] is True and kw["tp_size"] == 1
    assert kw["cuda_graph_backend_prefill"] == "disabled"
    policy.name_or_path = ""
    with pytest.raises(ValueError, match="model_path"):
        SGLangEngine().setup(policy, tok)


def test_colocated_lifecycle_call_order(monkeypatch, policy, tok) -> None:
    mod = install(monkeypatch, policy, tok)
    engine = SGLangEngine(weight_bucket_mb=0.01)  # ~10 kB buckets → several chunks
    engine.setup(policy, tok)
    engine.sleep()  # after a rollout; the trainer updates now
    perturb(policy)
    engine.push_weights(policy)  # asleep: deferred until the weights are resident again
    assert "update_weights_from_tensor" not in names(mod)
    engine.wake_up()
    engine.generate([tok.encode("hi")], SamplingParams(max_new_tokens=3), num_samples=2)
    engine.sleep()
    seq = names(mod)[names(mod).index("release_memory_occupation") + 1 :]
    k = seq.count("update_weights_from_tensor")
    assert k > 1
    assert seq == (
        ["resume_memory_occupation", "begin_weight_update"]
        + ["update_weights_from_tensor"] * k
        + [
            "end_weight_update",
            "flush_cache",
            "resume_memory_occupation",
            "generate",
            "release_memory_occupation",
        ]
    )
    tags = [c[2]["tags"] for c in mod.calls if c[0].endswith("_memory_occupation")]
    assert tags == [["kv_cache", "weights"], ["weights"], ["kv_cache"], ["kv_cache", "weights"]]
    updates = [c for c in mod.calls if c[0] == "update_weights_from_tensor"]
    assert all(c[2]["flush_cache"] is False for c in updates)
    pushed = [(n, t) for c in updates for n, t in c[1][0]]
    assert [n for n, _ in pushed] == list(policy.state_dict())  # HF names, in order, once each
    assert all(t.dtype == torch.bfloat16 for _, t in pushed)
    for c in updates:
        b = c[1][0]
        assert len(b) == 1 or sum(t.numel() * t.element_size() for _, t in b) <= 0.01 * 2**20
    assert engine.weight_version == 1


def test_push_changes_generations_and_logprobs_match(monkeypatch, policy, tok) -> None:
    install(monkeypatch, policy, tok)
    engine = SGLangEngine(dtype="float32")
    engine.setup(policy, tok)
    params = SamplingParams(temperature=0.9, max_new_tokens=5, seed=1)
    prompts = [tok.encode("abc"), tok.encode("Q:")]
    before = engine.generate(prompts, params, num_samples=2)
    perturb(policy)
    engine.push_weights(policy)
    after = engine.generate(prompts, params, num_samples=2)
    assert (after.weight_version, before.weight_version) == (1, 0)
    assert after.sampler_logprobs != before.sampler_logprobs
    assert after.group_index == [0, 0, 1, 1] and after.prompt_ids == [prompts[0]] * 2 + [prompts[1]] * 2
    for p, c, lp in zip(after.prompt_ids, after.completion_ids, after.sampler_logprobs, strict=True):
        with torch.no_grad():
            logits = policy(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float()
        ref = torch.log_softmax(logits / 0.9, -1).gather(1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lp), ref, atol=1e-5, rtol=0)


def test_generate_sends_explicit_params_and_refuses_when_asleep(monkeypatch, policy, tok) -> None:
    mod = install(monkeypatch, policy, tok)
    engine = SGLangEngine()
    engine.setup(policy, tok)
    engine.generate([[5, 6], [7]], SamplingParams(temperature=0.5, max_new_tokens=4, stop_token_ids=[9]), 3)
    (kw,) = [c[2] for c in mod.calls if c[0] == "generate"]
    assert kw["input_ids"] == [[5, 6]] * 3 + [[7]] * 3 and kw["return_logprob"] is True
    assert all(
        sp["stop_token_ids"] == [9, tok.eos_token_id]
        and sp["top_k"] == -1
        and sp["top_p"] == 1.0
        and sp["temperature"] == 0.5
        and sp["max_new_tokens"] == 4
        for sp in kw["sampling_params"]
    )
    assert len({sp["sampling_seed"] for sp in kw["sampling_params"]}) == 6
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate([[5]], SamplingParams(), 1)


def test_rejected_begin_fails_closed(monkeypatch, policy, tok) -> None:
    def reject(name: str, args: tuple, kwargs: dict) -> None:
        if name == "begin_weight_update":
            raise RuntimeError("another update is in progress")

    mod = install(monkeypatch, policy, tok, on_call=reject)
    engine = SGLangEngine()
    engine.setup(policy, tok)
    with pytest.raises(RuntimeError, match="rejected begin_weight_update.*in progress"):
        engine.push_weights(policy)
    assert "update_weights_from_tensor" not in names(mod) and "flush_cache" not in names(mod)
    assert engine.weight_version == 0


def test_failed_update_raises(monkeypatch, policy, tok) -> None:
    install(monkeypatch, policy, tok)
    engine = SGLangEngine()
    engine.setup(policy, tok)
    engine.engine.in_transaction = False
    engine.engine.begin_weight_update = lambda: None  # begin "succeeds" but opens no transaction
    with pytest.raises(RuntimeError, match="update_weights_from_tensor failed: .*outside"):
        engine.push_weights(policy)


def test_old_sglang_without_transactions(monkeypatch, policy, tok) -> None:
    mod = install(monkeypatch, policy, tok, transactional=False)
    engine = SGLangEngine()
    engine.setup(policy, tok)
    engine.push_weights(policy)
    assert "begin_weight_update" not in names(mod) and names(mod)[-1] == "flush_cache"
    assert engine.weight_version == 1


def test_dummy_load_pushes_at_setup_and_memory_saver_off(monkeypatch, policy, tok) -> None:
    mod = install(monkeypatch, policy, tok)
    engine = SGLangEngine(load_format="dummy", enable_memory_saver=False)
    engine.setup(policy, tok)
    assert "update_weights_from_tensor" in names(mod) and engine.weight_version == 1
    engine.sleep()
    engine.push_weights(policy)  # not asleep: pushed at once
    engine.wake_up()
    assert not any(n.endswith("_memory_occupation") for n in names(mod)) and engine.weight_version == 2
    engine.shutdown()
    assert names(mod)[-1] == "shutdown"
    with pytest.raises(RuntimeError, match="before setup"):
        engine.generate([[5]], SamplingParams(), 1)


def test_abort_resubmitted_once(monkeypatch, policy, tok) -> None:
    install(monkeypatch, policy, tok)
    engine = SGLangEngine()
    engine.setup(policy, tok)
    real, sizes = engine.engine.generate, []

    def flaky(**kw):
        out = real(**kw)
        sizes.append(len(out))
        if len(sizes) == 1:
            out[1]["meta_info"]["finish_reason"] = {"type": "abort", "message": "retracted"}
        return out

    engine.engine.generate = flaky
    ro = engine.generate([[5, 6]], SamplingParams(max_new_tokens=2), 3)
    assert sizes == [3, 1] and "abort" not in ro.finish_reason and len(ro) == 3


@pytest.mark.parametrize("name", ["sglang", "sglang_server"])
def test_engine_configs_instantiate_without_sglang(name, monkeypatch) -> None:
    from pathlib import Path

    import yaml
    from jsonargparse import ArgumentParser

    from epr_lightning.rollout.base import RolloutEngine

    monkeypatch.setitem(sys.modules, "sglang", None)  # constructing an engine must not import sglang
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "engine" / f"{name}.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--engine", type=RolloutEngine)
    engine = parser.instantiate(parser.parse_object({"engine": cfg["model"]["init_args"]["engine"]})).engine
    assert type(engine).__name__ == {"sglang": "SGLangEngine", "sglang_server": "SGLangServerEngine"}[name]
    assert engine.weight_bucket_bytes == 512 * 2**20


def test_state_dict_round_trip(monkeypatch, policy, tok) -> None:
    install(monkeypatch, policy, tok)
    a = SGLangEngine()
    a.setup(policy, tok)
    a.push_weights(policy)
    a.generate([[5]], SamplingParams(), 1)
    b = SGLangEngine()
    b.load_state_dict(a.state_dict())
    assert (b.weight_version, b.state_dict()) == (1, a.state_dict())
    assert a.state_dict() == {"weight_version": 1, "generate_calls": 1}
