"""Weight iteration for inference engines: HF names, tied heads, LoRA merge, dtype casts, buckets, packing."""

from __future__ import annotations

import copy
import socket

import pytest
import torch

from epr_lightning.hf_weights import hf_name
from epr_lightning.rollout.weights import (
    FlatBucket,
    flatten_bucket,
    iter_buckets,
    iter_hf_weights,
    save_hf_folder,
    tensor_bytes,
    unflatten_bucket,
)
from epr_lightning.tiny import char_tokenizer, tiny_causal_lm


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_causal_lm(len(char_tokenizer()), hidden_size=32, intermediate_size=64, num_layers=1)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("_orig_mod.model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
        (
            "model._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ),
        ("module.lm_head.weight", "lm_head.weight"),
        ("model.embed_tokens.weight", "model.embed_tokens.weight"),
    ],
)
def test_hf_name_strips_wrappers(key: str, expected: str) -> None:
    assert hf_name(key) == expected


def test_compiled_model_yields_plain_hf_names_cast_to_bf16(model: torch.nn.Module) -> None:
    compiled = torch.compile(model)  # lazy: state_dict keys gain "_orig_mod." without compiling anything
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    named = dict(iter_hf_weights(compiled, dtype=torch.bfloat16))
    assert set(named) == set(model.state_dict())
    assert all(t.dtype == torch.bfloat16 for t in named.values())
    ref = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(named["model.layers.0.mlp.up_proj.weight"], ref.to(torch.bfloat16))
    kept = dict(iter_hf_weights(model, dtype=None))
    assert all(t.dtype == torch.float32 for t in kept.values())


def test_tied_lm_head_is_skipped() -> None:
    tied = tiny_causal_lm(
        len(char_tokenizer()), hidden_size=32, intermediate_size=64, num_layers=1, tie_word_embeddings=True
    )
    names = [n for n, _ in iter_hf_weights(tied)]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_lora_is_merged_under_base_names_and_unmerged_after(model: torch.nn.Module) -> None:
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # B = 0 at init would make the merge a no-op
    x = torch.tensor([[5, 6, 7, 8]])
    before = lora(input_ids=x).logits
    named = dict(iter_hf_weights(lora, dtype=None))
    merged = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert set(named) == set(merged)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(named[q], model.state_dict()[q])  # the adapter changed it
    torch.testing.assert_close(named[q], merged[q])
    torch.testing.assert_close(lora(input_ids=x).logits, before)  # unmerged again
    with pytest.raises(ValueError, match="lora"):
        list(iter_hf_weights(lora, merge_lora=False))


def test_dtensor_is_gathered_with_full_tensor() -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        full = torch.arange(12.0).reshape(4, 3)
        sharded = distribute_tensor(full, init_device_mesh("cpu", (1,)), [Shard(0)])

        class Holder(torch.nn.Module):
            def state_dict(self, *a, **k):
                return {"_orig_mod.w": sharded}

        ((name, tensor),) = list(iter_hf_weights(Holder(), dtype=torch.float64))
        assert name == "w" and type(tensor) is torch.Tensor and tensor.dtype == torch.float64
        assert torch.equal(tensor, full.double())
    finally:
        dist.destroy_process_group()


def test_buckets_hand_computed() -> None:
    # sizes 4,4,4,10,2 bytes with an 8-byte limit: [a,b]=8 fits; c would make 12 → new; d (10) alone is
    # over the limit → own bucket; e would make 12 → new.  Expected [[a,b],[c],[d],[e]].
    named = [(k, torch.zeros(n, dtype=torch.uint8)) for k, n in zip("abcde", (4, 4, 4, 10, 2), strict=True)]
    assert [[n for n, _ in b] for b in iter_buckets(named, 8)] == [["a", "b"], ["c"], ["d"], ["e"]]
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets(named, 0))


def test_buckets_respect_limit_on_a_model(model: torch.nn.Module) -> None:
    named = list(iter_hf_weights(model))
    limit = 3 * max(tensor_bytes(t) for _, t in named) // 4  # some tensors exceed it
    buckets = list(iter_buckets(named, limit))
    for b in buckets:
        assert len(b) == 1 or sum(tensor_bytes(t) for _, t in b) <= limit
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]
    assert 1 < len(buckets) < len(named)


def test_flattened_bucket_round_trip_mixed_dtypes() -> None:
    named = [
        ("a", torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)),  # 3 × 2 bytes → [0, 6)
        ("b", torch.arange(4.0).reshape(2, 2)),  # 4 × 4 bytes → [6, 22), misaligned for fp32
        ("c", torch.tensor([[7], [-9]], dtype=torch.int64)),  # 2 × 8 bytes → [22, 38)
    ]
    flat = flatten_bucket(named)
    assert flat.buffer.dtype == torch.uint8 and flat.buffer.numel() == 38
    assert [(m["start"], m["end"], m["numel"], m["dtype"]) for m in flat.metadata] == [
        (0, 6, 3, "bfloat16"),
        (6, 22, 4, "float32"),
        (22, 38, 2, "int64"),
    ]
    out = unflatten_bucket(flat)
    for (n0, t0), (n1, t1) in zip(named, out, strict=True):
        assert n0 == n1 and t0.dtype == t1.dtype and torch.equal(t0, t1)
    bad = FlatBucket(flat.buffer, [dict(flat.metadata[1], numel=5)])
    with pytest.raises(ValueError, match="'b'"):
        unflatten_bucket(bad)


def test_save_hf_folder_loads_with_transformers(tmp_path, model: torch.nn.Module) -> None:
    from transformers import AutoModelForCausalLM

    files = save_hf_folder(model, tmp_path, dtype=None, shard_bytes=20_000)
    assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
