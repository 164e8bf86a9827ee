"""Pure helpers that turn a trained policy into what an SGLang engine loads: HF-named full tensors, in
byte-bounded buckets, optionally flattened into one uint8 buffer per bucket.

Every rank must call :func:`iter_hf_weights` in the same order: under FSDP2, ``.full_tensor()`` on a
DTensor is a collective (all-gather), so all ranks gather even when only one of them pushes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from epr_lightning.hf_weights import NamedTensor, iter_named_full
from epr_lightning.lora import iter_merged_weights, lora_layers


def iter_hf_weights(
    model: torch.nn.Module,
    *,
    dtype: torch.dtype | None = torch.bfloat16,
    merge_lora: bool = True,
) -> Iterator[NamedTensor]:
    """Yield ``(hf_name, full_tensor)`` for every tensor an inference engine loads.

    Args:
        model: the policy (plain HF, FSDP2-sharded, torch.compile'd or a peft model).
        dtype: floating-point tensors are cast to this dtype (None keeps them); integer buffers are kept.
        merge_lora: merge peft adapters into the base weights while iterating (adapter tensors are skipped).
            With ``False`` a peft model's adapters are an error: SGLang's tensor path loads base weights only.

    A tied ``lm_head.weight`` is skipped (the engine ties it to ``embed_tokens`` itself, and HF's
    ``save_pretrained`` omits it too).
    """
    if merge_lora and lora_layers(model):
        # Out-of-place fp32 merge: the trained model is never modified (an in-place bf16 merge/unmerge
        # round trip drifts the base weights, trl#6688).
        yield from iter_merged_weights(model, dtype=dtype)
        return
    yield from iter_named_full(model, dtype=dtype, lora_params="error")


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def iter_buckets(named_tensors: Iterable[NamedTensor], bucket_bytes: int) -> Iterator[list[NamedTensor]]:
    """Group tensors, in order, into buckets of at most ``bucket_bytes`` bytes.

    A tensor larger than the limit travels alone in its own bucket (it cannot be split by name).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: list[NamedTensor] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor_bytes(tensor)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"`` (the spelling SGLang's HTTP payloads use)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype name {name!r}")
    return dtype


@dataclass
class FlatBucket:
    """Many tensors as one contiguous uint8 buffer plus per-tensor metadata (SGLang's
    ``load_format="flattened_bucket"`` layout: name, shape, dtype, start, end, numel; byte offsets)."""

    buffer: torch.Tensor
    metadata: list[dict[str, Any]]


def flatten_bucket(named_tensors: list[NamedTensor]) -> FlatBucket:
    """Pack tensors (any dtypes, one device) into a single uint8 buffer."""
    if not named_tensors:
        raise ValueError("flatten_bucket needs at least one tensor")
    parts, metadata, offset = [], [], 0
    for name, tensor in named_tensors:
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        metadata.append(
            {
                "name": name,
                "shape": list(tensor.shape),
                "dtype": dtype_name(tensor.dtype),
                "start": offset,
                "end": offset + raw.numel(),
                "numel": tensor.numel(),
            }
        )
        parts.append(raw)
        offset += raw.numel()
    return FlatBucket(buffer=torch.cat(parts), metadata=metadata)


def unflatten_bucket(bucket: FlatBucket) -> list[NamedTensor]:
    """Inverse of :func:`flatten_bucket` (views into the buffer where alignment allows, copies otherwise)."""
    out = []
    for meta in bucket.metadata:
        raw = bucket.buffer[meta["start"] : meta["end"]]
        dtype = dtype_from_name(meta["dtype"])
        try:
            flat = raw.view(dtype)
        except RuntimeError:  # storage offset not a multiple of the element size
            flat = raw.clone().view(dtype)
        if flat.numel() != meta["numel"]:
            raise ValueError(
                f"flattened bucket entry {meta['name']!r}: {flat.numel()} elements != numel {meta['numel']}"
            )
        out.append((meta["name"], flat.view(meta["shape"])))
    return out


def save_hf_folder(
    model: torch.nn.Module,
    path: str | Any,
    *,
    dtype: torch.dtype | None = torch.bfloat16,
    shard_bytes: int = 2 << 30,
    merge_lora: bool = True,
) -> list[str]:
    """Write ``model`` as a ``save_pretrained``-compatible HF folder: ``config.json`` (when the model has an
    HF config), safetensors shards named by HF names and ``model.safetensors.index.json``.

    Every rank must call this (DTensor gathers are collectives); pass a rank-local or throwaway ``path`` on
    ranks that should not write. Returns the shard file names.
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        if dtype is not None:
            config.dtype = dtype
        config.save_pretrained(path)
    weight_map: dict[str, str] = {}
    files: list[str] = []
    total = 0
    buckets = iter_buckets(iter_hf_weights(model, dtype=dtype, merge_lora=merge_lora), shard_bytes)
    for i, bucket in enumerate(buckets):
        fname = f"model-{i + 1:05d}.safetensors"
        save_file({n: t.contiguous().cpu() for n, t in bucket}, str(path / fname), metadata={"format": "pt"})
        files.append(fname)
        for name, tensor in bucket:
            weight_map[name] = fname
            total += tensor_bytes(tensor)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files
