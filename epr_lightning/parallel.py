"""FSDP2 sharding of the policy under Lightning's ``ModelParallelStrategy`` (data parallel only).

``shard_policy`` applies ``fully_shard`` to every decoder block, then to the root: the HF causal LM (inside
the peft wrapper when LoRA is on). The root's own group holds the embeddings, the final norm and the LM head; FSDP2
gathers it only inside the root's ``forward``, which is why ``logprobs.token_logprobs_and_entropy`` runs its
chunked LM-head pass *as* the root's LM head (see there) instead of calling the decoder and head separately.

Precision (lightning.md §1): keep the Trainer at ``"32-true"`` (fp32 master weights and optimizer state) and
let FSDP2 cast the all-gathered parameters to ``param_dtype``; gradients are reduce-scattered in
``reduce_dtype``. Log-probs, entropies and ratios stay fp32 whatever ``param_dtype`` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from epr_lightning.models import base_model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FSDP2Config:
    """FSDP2 settings (used only under ``ModelParallelStrategy``).

    Args:
        param_dtype: dtype the gathered parameters are cast to for forward/backward ("float32" or
            "bfloat16"; the sharded fp32 master copy is what the optimizer updates).
        reduce_dtype: dtype of the gradient reduce-scatter ("float32" recommended).
        reshard_after_forward: free each block's gathered parameters after its forward. ``False`` (the default,
            as in torchtune) keeps them until backward: more memory, but HF ``generate`` does not re-gather
            every layer for every decoded token.
    """

    param_dtype: str = "float32"
    reduce_dtype: str = "float32"
    reshard_after_forward: bool = False

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value not in _DTYPES:
                raise ValueError(f"model.fsdp.{name} must be one of {sorted(_DTYPES)}, got {value!r}")
        if not isinstance(self.reshard_after_forward, bool):
            raise ValueError(
                f"model.fsdp.reshard_after_forward must be true or false, got {self.reshard_after_forward!r}"
            )

    def mp_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(
            param_dtype=_DTYPES[self.param_dtype], reduce_dtype=_DTYPES[self.reduce_dtype]
        )


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of an HF causal LM (peft wrapper included), in order.

    Uses the model's ``_no_split_modules`` (the block class names HF itself never splits across devices), and
    falls back to the decoder's ``layers`` list.
    """
    inner = base_model(model)
    names = set(getattr(inner, "_no_split_modules", None) or [])
    blocks = [m for m in inner.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers):
        return list(layers)
    raise TypeError(
        f"cannot find the decoder blocks of {type(inner).__name__} (no _no_split_modules and no .layers)"
    )


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_policy(model: torch.nn.Module, mesh: Any, config: FSDP2Config) -> torch.nn.Module:
    """``fully_shard`` each decoder block, then the HF model (the root), over the data-parallel mesh dimension.

    Args:
        model: the policy (HF causal LM or a peft model around one); sharded in place.
        mesh: the strategy's ``DeviceMesh``; its ``"data_parallel"`` dimension is used when it has named
            dimensions (``ModelParallelStrategy``), else the mesh itself.
        config: mixed precision and resharding settings.

    Idempotent: Lightning calls ``configure_model`` once per stage, and an already sharded model is returned
    unchanged. Tensor parallelism is not supported (``tensor_parallel_size`` must be 1).
    """
    from torch.distributed.fsdp import fully_shard

    # The FSDP2 root is the HF causal LM itself, also inside a peft wrapper: peft's ``generate`` calls the
    # inner model directly, so a root on the wrapper would never gather the embeddings during rollouts.
    root = base_model(model)
    if is_sharded(root):
        return model
    names = getattr(mesh, "mesh_dim_names", None) or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            "the policy is sharded with FSDP2 only: use ModelParallelStrategy(data_parallel_size=N, "
            f"tensor_parallel_size=1), got tensor_parallel_size={mesh['tensor_parallel'].size()}"
        )
    dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
    kwargs = dict(
        mesh=dp_mesh, mp_policy=config.mp_policy(), reshard_after_forward=config.reshard_after_forward
    )
    for block in decoder_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(root, **kwargs)
    return model
