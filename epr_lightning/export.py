"""Lightning checkpoint → plain Hugging Face folder (merged LoRA, tokenizer, config).

Both checkpoint layouts are read: a single ``.ckpt`` file (DDP / one device) and the DCP directory that
``ModelParallelStrategy`` writes (converted with ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``;
Lightning's own ``consolidate_checkpoint`` fails on those directories, lightning.md pitfall 15). The policy is
rebuilt from the run's config (the ``model:`` section of its ``config.yaml``), the checkpoint's ``policy.*``
weights are loaded into it, and LoRA adapters are merged out of place in fp32 (``lora.iter_merged_weights``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from epr_lightning.lora import iter_merged_weights
from epr_lightning.models import base_model
from epr_lightning.rollout.weights import iter_buckets, tensor_bytes

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_module(config_files: list[str | Path]) -> Any:
    """Instantiate only the ``RLModule`` described by the ``model:`` sections of the given YAML files (later
    files override earlier ones), then build its policy (no Trainer, no devices, nothing sharded)."""
    from jsonargparse import ArgumentParser

    from epr_lightning.module import RLModule

    if not config_files:
        raise ValueError("export needs the run's config (--config config.yaml) to rebuild the policy")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(RLModule, "model", required=True)
    cfg = None
    for path in config_files:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if "model" not in data:
            continue
        try:
            cfg = parser.parse_object({"model": data["model"]}, namespace=cfg)
        except Exception as err:  # jsonargparse's ArgumentError: say which file
            raise ValueError(f"{path}: invalid 'model:' section: {err}") from err
    if cfg is None:
        raise ValueError(f"none of {[str(p) for p in config_files]} has a 'model:' section")
    module = parser.instantiate_classes(cfg).model
    module.configure_model()
    return module


def read_checkpoint_state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint: a ``.ckpt`` file or a DCP directory."""
    ckpt = Path(ckpt)
    if ckpt.is_dir():
        if not (ckpt / ".metadata").is_file():
            raise FileNotFoundError(
                f"{str(ckpt)!r} is a directory but not a distributed checkpoint (no .metadata)"
            )
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(ckpt, Path(tmp) / "consolidated.pt")
            full = torch.load(Path(tmp) / "consolidated.pt", map_location="cpu", weights_only=False)
    elif ckpt.is_file():
        full = torch.load(ckpt, map_location="cpu", weights_only=False)
    else:
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist")
    if "state_dict" not in full:
        raise ValueError(
            f"{str(ckpt)!r} is not a Lightning checkpoint (no 'state_dict'; keys {list(full)[:5]})"
        )
    return full["state_dict"]


def load_policy_weights(module: Any, state: dict[str, torch.Tensor]) -> None:
    """Load the checkpoint's ``policy.*`` tensors into ``module.policy`` (strict: names and shapes must match)."""
    policy_state = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
    if not policy_state:
        raise ValueError("the checkpoint has no 'policy.*' weights")
    result = module.policy.load_state_dict(policy_state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            "checkpoint does not match the configured policy (LoRA settings or model shape differ?): "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def save_pretrained_merged(
    policy: torch.nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    shard_bytes: int = 4 << 30,
) -> Path:
    """Write ``policy`` (LoRA merged out of place) as an HF folder: config, safetensors shards + index,
    generation config and tokenizer. Loadable with ``AutoModelForCausalLM.from_pretrained(out_dir)``."""
    from safetensors.torch import save_file

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inner = base_model(policy)
    config = inner.config
    config.dtype = _DTYPES[dtype]
    config.save_pretrained(out)
    if getattr(inner, "generation_config", None) is not None:
        inner.generation_config.save_pretrained(out)
    weight_map: dict[str, str] = {}
    total = 0
    buckets = list(iter_buckets(iter_merged_weights(policy, dtype=_DTYPES[dtype]), shard_bytes))
    for i, bucket in enumerate(buckets):
        fname = f"model-{i + 1:05d}-of-{len(buckets):05d}.safetensors"
        save_file({n: t.contiguous().cpu() for n, t in bucket}, str(out / fname), metadata={"format": "pt"})
        for name, tensor in bucket:
            weight_map[name] = fname
            total += tensor_bytes(tensor)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def export_checkpoint(
    ckpt: str | Path, out_dir: str | Path, config_files: list[str | Path], *, dtype: str = "float32"
) -> Path:
    """Checkpoint (file or DCP directory) + run config → HF folder. Returns ``out_dir``."""
    module = build_module(config_files)
    load_policy_weights(module, read_checkpoint_state(ckpt))
    return save_pretrained_merged(module.policy, module.tokenizer, out_dir, dtype=dtype)
