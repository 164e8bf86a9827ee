"""LoRA: what trains, what the optimizer sees, and merged weights (out of place, fp32 arithmetic)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from conftest import randomize_adapters

from epr_lightning.lora import LoRAConfig, apply_lora, iter_merged_weights, merged_state_dict
from epr_lightning.models import TinyModel
from epr_lightning.module import RLModule

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_only_lora_params_train_in_fp32_on_a_bf16_base(tiny_model: torch.nn.Module) -> None:
    model = apply_lora(tiny_model.to(torch.bfloat16), LoRAConfig(r=4, alpha=8))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    # r·(in + out) per adapted linear: 2 layers × (q,k,v,o: 64→64, 64→32, 64→32, 64→64; gate/up 64→128; down 128→64)
    per_layer = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    assert sum(p.numel() for p in trainable.values()) == 2 * per_layer
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == set(TARGETS)


def test_optimizer_sees_only_the_adapters_and_gradients_reach_them() -> None:
    module = RLModule(policy=TinyModel(), lora=LoRAConfig(r=4), gradient_checkpointing=True)
    module.configure_model()
    opt = module.configure_optimizers()
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    lora = {id(p) for n, p in module.policy.named_parameters() if "lora_" in n}
    assert in_opt == lora
    randomize_adapters(module.policy)
    ids = torch.randint(4, 90, (2, 8))
    from epr_lightning.logprobs import token_logprobs_and_entropy

    lp, _ = token_logprobs_and_entropy(module.policy, ids, torch.ones_like(ids), torch.ones(2, 8))
    lp.sum().backward()  # through gradient checkpointing with frozen embeddings
    grads = [p.grad for n, p in module.policy.named_parameters() if "lora_" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in module.policy.named_parameters() if "lora_" not in n)


def test_merged_weights_equal_w_plus_scaled_ba_and_leave_the_model_untouched(
    tiny_model: torch.nn.Module,
) -> None:
    plain_keys = set(tiny_model.state_dict())
    model = apply_lora(
        copy.deepcopy(tiny_model), LoRAConfig(r=4, alpha=12, target_modules=["q_proj", "down_proj"])
    )
    randomize_adapters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_state_dict(model)
    assert set(merged) == plain_keys  # HF names, no adapter tensors
    layer = model.base_model.model.model.layers[1].self_attn.q_proj
    manual = (
        layer.base_layer.weight + (12 / 4) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    torch.testing.assert_close(merged["model.layers.1.self_attn.q_proj.weight"], manual, rtol=0, atol=1e-6)
    assert not torch.equal(manual, layer.base_layer.weight)  # the adapter changed something
    torch.testing.assert_close(
        merged["model.layers.0.self_attn.k_proj.weight"],
        tiny_model.model.layers[0].self_attn.k_proj.weight,
        rtol=0,
        atol=0,
    )
    for k, v in model.state_dict().items():  # nothing was merged in place
        assert torch.equal(v, before[k]), k
    # the merged weights reproduce the adapted model's outputs in a plain model
    plain = copy.deepcopy(tiny_model)
    plain.load_state_dict(merged)
    ids = torch.randint(4, 90, (2, 7))
    torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_bf16_base_merges_in_fp32_without_drift(tiny_model: torch.nn.Module) -> None:
    model = apply_lora(
        copy.deepcopy(tiny_model).to(torch.bfloat16), LoRAConfig(r=4, target_modules=["v_proj"])
    )
    randomize_adapters(model, seed=1)
    layer = model.base_model.model.model.layers[0].self_attn.v_proj
    base = layer.base_layer.weight.detach().clone()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = (base.float() + (32 / 4) * b.float() @ a.float()).to(torch.bfloat16)
    for _ in range(3):  # repeated pushes
        got = dict(iter_merged_weights(model, dtype=torch.bfloat16))["model.layers.0.self_attn.v_proj.weight"]
        assert torch.equal(got, expected)
    assert torch.equal(layer.base_layer.weight, base)  # the frozen bf16 base never moved


def test_lora_config_rejects_bad_values(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="lora.r"):
        LoRAConfig(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ValueError, match="not modules"):
        apply_lora(tiny_model, LoRAConfig(target_modules=["c_attn"]))


def test_tiny_lora_run_through_the_cli(tmp_path: Path) -> None:
    from epr_lightning.cli import build_cli

    # random tiny policies earn no reward (zero advantages): an entropy bonus guarantees a gradient
    extra = tmp_path / "bonus.yaml"
    extra.write_text(
        "model:\n  init_args:\n    objective:\n      terms:\n"
        "        - class_path: epr_lightning.objectives.entropy_terms.EntropyBonus\n"
        "          init_args: {coef: 0.1}\n"
    )
    args = [
        "fit",
        "--config", str(REPO / "configs/tiny_cpu.yaml"),
        "--config", str(extra),
        "--model.init_args.lora.r=4",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.init_args.batches_per_epoch=2",
        "--model.init_args.optimizer.init_args.lr=0.05",
    ]  # fmt: skip
    cli = build_cli(args)
    policy = cli.model.policy
    assert type(policy).__name__ == "PeftModelForCausalLM"
    assert cli.trainer.global_step == 2
    b = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in b)  # B started at 0 and was trained
    fresh = TinyModel(hidden_size=64, num_layers=2).build()[0]
    merged = merged_state_dict(policy)
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, merged[k])]
    assert changed and all(any(t in k for t in TARGETS) for k in changed)  # only adapted weights moved


def test_adapter_init_is_seeded_not_taken_from_the_global_rng(tiny_model: torch.nn.Module) -> None:
    """FSDP2 shards each rank's own copy without a broadcast: every rank must build identical adapters."""
    torch.manual_seed(1)
    a = apply_lora(copy.deepcopy(tiny_model), LoRAConfig(r=2, seed=5)).state_dict()
    torch.manual_seed(2)
    b = apply_lora(copy.deepcopy(tiny_model), LoRAConfig(r=2, seed=5)).state_dict()
    c = apply_lora(copy.deepcopy(tiny_model), LoRAConfig(r=2, seed=6)).state_dict()
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    apply_lora(copy.deepcopy(tiny_model), LoRAConfig(r=2))
    assert torch.equal(torch.rand(3), expected)  # the global stream is left where it was
