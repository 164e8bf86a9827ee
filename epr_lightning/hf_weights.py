"""A policy's state dict as HF-named full tensors: the names an HF checkpoint (and so an inference engine)
uses, gathered from DTensor shards, whatever wraps the model (DDP, FSDP, torch.compile, activation
checkpointing, peft).

Every rank must iterate :func:`iter_named_full` to the end in the same order: under FSDP2, ``.full_tensor()``
on a DTensor is a collective (all-gather). ``lora.py`` (adapters merged) and ``rollout/weights.py`` (what the
engines load) build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch

#: wrapper prefixes inserted by torch.compile, FSDP1 and activation checkpointing (anywhere in a name).
WRAPPER_PREFIXES = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
#: prefix a peft ``PeftModel`` puts in front of the wrapped HF model's names.
PEFT_PREFIX = "base_model.model."

NamedTensor = tuple[str, torch.Tensor]


def hf_name(name: str) -> str:
    """The HF checkpoint name of a state-dict key: wrapper prefixes, a leading DDP ``module.``, peft's
    ``base_model.model.`` prefix and LoRA's ``.base_layer`` are removed.

    ``"_orig_mod.model._fsdp_wrapped_module.layers.0.mlp.up_proj.weight"`` → ``"model.layers.0.mlp.up_proj.weight"``
    """
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    if name.startswith("module."):
        name = name[len("module.") :]
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX) :]
    return name.replace(".base_layer.", ".")


def is_lora_param(name: str) -> bool:
    """True for peft adapter tensors (``lora_A``/``lora_B``/``lora_embedding_*``/``lora_magnitude_vector``)."""
    return any(
        f".{key}" in name for key in ("lora_A.", "lora_B.", "lora_embedding_", "lora_magnitude_vector")
    )


def to_full(tensor: torch.Tensor) -> torch.Tensor:
    """The full (unsharded) tensor: ``.full_tensor()`` for DTensors (a collective), the tensor otherwise."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


def iter_named_full(
    model: torch.nn.Module,
    *,
    dtype: torch.dtype | None,
    lora_params: Literal["skip", "error"],
    replace: Callable[[str, dict[str, torch.Tensor]], torch.Tensor | None] | None = None,
) -> Iterator[NamedTensor]:
    """Yield ``(hf_name, full_tensor)`` for every state-dict entry of ``model`` an HF checkpoint holds.

    A tied ``lm_head.weight`` is skipped (HF's ``save_pretrained`` omits it, engines tie it themselves).
    Floating-point tensors are cast to ``dtype`` (None keeps them). LoRA adapter tensors are skipped or an
    error (``lora_params``). ``replace(key, state)`` may return the tensor to yield for ``key`` instead of the
    stored one (a merged LoRA weight); None keeps the stored one.
    """
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            if is_lora_param(key):
                if lora_params == "error":
                    raise ValueError(f"state_dict key {key!r} is a LoRA adapter tensor; use merge_lora=True")
                continue
            name = hf_name(key)
            if tied and name == "lm_head.weight":
                continue
            full = replace(key, state) if replace is not None else None
            if full is None:
                full = to_full(tensor.detach())
            if dtype is not None and full.is_floating_point() and full.dtype != dtype:
                full = full.to(dtype)
            yield name, full
