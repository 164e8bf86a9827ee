"""LoRA adapters (peft) for the policy, and their merge into plain HF weights for engines and export.

Merging never touches the trained model: each merged weight is computed as ``W + scaling · B @ A`` in fp32
from (full) copies and only then cast. peft's ``merge_adapter()``/``unmerge_adapter()`` round trip adds and
subtracts the delta in the base weight's own dtype, which in bf16 drifts the frozen base a little on every
weight push (trl#6688); :func:`iter_merged_weights` is the drop-in replacement for
``rollout.weights.iter_hf_weights`` on peft models.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from epr_lightning.hf_weights import iter_named_full, to_full


@dataclass
class LoRAConfig:
    """LoRA as in the paper: rank 16 on attention and MLP projections; trainable params kept in fp32.

    Args:
        r: adapter rank (> 0).
        alpha: scaling numerator; the update is ``(alpha / r) · B @ A``.
        dropout: dropout on the adapter input (0 keeps the update deterministic).
        target_modules: names of the linear layers that get adapters.
        seed: seed of the adapters' random init (``lora_A``). Every rank must start from the same adapters:
            FSDP2, unlike DDP, does not broadcast rank 0's parameters, so the init never uses the global RNG.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"model.lora.r must be > 0, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("model.lora.target_modules must name at least one module")


def apply_lora(model: torch.nn.Module, config: LoRAConfig) -> torch.nn.Module:
    """Wrap ``model`` in a peft ``PeftModel`` with LoRA adapters; only the adapters are trainable (fp32).

    The base weights keep their dtype (bf16 bases stay bf16 and frozen); the adapter weights are fp32 so
    the optimizer state and updates are full precision. Raises a clear error when a target module is missing.
    """
    try:
        import peft
    except ImportError as err:  # pragma: no cover - peft is a declared extra
        raise ModuleNotFoundError("LoRA needs peft: pip install 'epr-lightning[lora]'") from err
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in config.target_modules if t not in present]
    if missing:
        raise ValueError(f"model.lora.target_modules {missing} are not modules of {type(model).__name__}")
    peft_config = peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # Lightning may build the model under a CUDA device context: fork that generator as well
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        wrapped = peft.get_peft_model(model, peft_config)
    for _, param in wrapped.named_parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if getattr(model, "is_gradient_checkpointing", False):
        # reentrant checkpointing needs an input that requires grad, and the frozen embeddings give none
        wrapped.enable_input_require_grads()
    return wrapped


def lora_layers(model: torch.nn.Module) -> dict[str, Any]:
    """Module name → peft LoRA layer, for every adapted layer of ``model`` (empty for plain models)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _full_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return to_full(tensor.detach()).float()


def merged_weight(layer: Any, prefix: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """``W + Σ_active scaling · B @ A`` in fp32 for the LoRA layer named ``prefix`` (tensors from ``state``).

    Under FSDP2 the state-dict entries are DTensors; ``.full_tensor()`` gathers them (a collective: every rank
    must call this in the same order).
    """
    weight = _full_fp32(state[f"{prefix}.base_layer.weight"])
    if getattr(layer, "merged", False):  # adapters already folded in by someone else
        return weight
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if layer.use_dora.get(adapter, False) or getattr(layer, "lora_bias", {}).get(adapter, False):
            raise NotImplementedError(f"{prefix}: DoRA / LoRA bias adapters cannot be merged here")
        a = _full_fp32(state[f"{prefix}.lora_A.{adapter}.weight"])
        b = _full_fp32(state[f"{prefix}.lora_B.{adapter}.weight"])
        delta = (b @ a) * layer.scaling[adapter]
        weight = weight + (delta.T if getattr(layer, "fan_in_fan_out", False) else delta)
    return weight


def iter_merged_weights(
    model: torch.nn.Module, *, dtype: torch.dtype | None = torch.bfloat16
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full_tensor)`` like ``rollout.weights.iter_hf_weights(model, dtype=...)``, with LoRA
    adapters merged out of place (fp32 arithmetic, then cast to ``dtype``; None keeps fp32 for merged weights
    and the stored dtype otherwise). ``model`` is never modified. Works on plain models too (nothing to merge).

    Every rank must iterate to the end under FSDP2 (gathers are collectives).
    """
    layers = lora_layers(model)

    def merged(key: str, state: dict[str, torch.Tensor]) -> torch.Tensor | None:
        prefix = key[: -len(".base_layer.weight")] if key.endswith(".base_layer.weight") else None
        return (
            merged_weight(layers[prefix], prefix, state) if prefix is not None and prefix in layers else None
        )

    yield from iter_named_full(model, dtype=dtype, lora_params="skip", replace=merged)


def merged_state_dict(model: torch.nn.Module, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The merged HF-named state dict of ``model`` (see :func:`iter_merged_weights`), all at once."""
    return dict(iter_merged_weights(model, dtype=dtype))


@contextmanager
def sampling_on_merged_weights(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s LoRA layers compute with ``W + scaling · B @ A`` folded into their base weight
    (fp32 arithmetic, then cast to the weight's dtype) and their adapters switched off, so a decode step runs one
    matmul per projection instead of three; afterwards every base weight is restored bit-exactly from a copy
    (peft's subtracting unmerge would drift a bf16 base) and the adapters compute again (a plain model is left as
    it is). Costs a copy of the adapted base weights while the block runs. For inference only:
    gradients through the block would reach neither the adapters nor the right weights.
    """
    layers = {  # a layer whose adapters are off (``disable_adapter()``) or already merged has nothing to fold
        name: layer
        for name, layer in lora_layers(model).items()
        if not getattr(layer, "merged", False) and not layer.disable_adapters
    }
    saved: list[tuple[Any, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, layer in layers.items():
                base = layer.base_layer.weight
                state = {f"{name}.base_layer.weight": base}
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        state[f"{name}.lora_A.{adapter}.weight"] = layer.lora_A[adapter].weight
                        state[f"{name}.lora_B.{adapter}.weight"] = layer.lora_B[adapter].weight
                merged = merged_weight(layer, name, state).to(base.dtype)
                saved.append((layer, base.detach().clone()))
                base.copy_(merged)
                layer._disable_adapters = True  # forward = base_layer(x), without touching requires_grad
        yield
    finally:
        with torch.no_grad():
            for layer, original in saved:  # every layer merged had its adapters on (see the filter above)
                layer.base_layer.weight.copy_(original)
                layer._disable_adapters = False
