"""bf16 compute with fp32 master weights (``model.compute_dtype: bfloat16``; docs/methods.md §9).

The policy's parameters are cast to the compute dtype once, so rollouts (HF ``generate`` on the policy itself)
and the update's forward/backward run on bf16 weights, with no per-matmul casts as under autocast. Every
trainable parameter that is not fp32 keeps an fp32 **master** copy, which the optimizer holds instead of it:

    backward (bf16 grads) → ``take_grads``: fp32 grads on the masters → grad norm and clipping (fp32)
    → optimizer step on the masters → ``refresh``: working weights = masters rounded to bf16

The masters travel in the optimizer's ``state_dict`` (key ``master_weights``), so a resume restores them
exactly instead of re-deriving them from the bf16 weights. With LoRA the frozen base and the adapters are cast,
and the adapters (the only trainable weights) get the masters: fp32 adapters next to a bf16 base would make peft
cast every adapted layer's input to fp32 and its output back, which costs more than the bf16 matmuls save.
Log-probs, entropies and ratios stay fp32 (``logprobs.py``);
``fp32_weights`` runs a pass on fp32 weights (the masters) for the precision audit's clip-decision check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from epr_lightning.logprobs import PolicyPass, check_logprob_dtype

ComputeDType = Literal["float32", "bfloat16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STATE_KEY = "master_weights"


def check_settings(compute_dtype: str, logprob_dtype: str) -> None:
    """``model.compute_dtype`` and ``model.logprob_dtype`` are valid, and not both bf16."""
    check_logprob_dtype(logprob_dtype)
    if compute_dtype not in get_args(ComputeDType):
        raise ValueError(
            f"model.compute_dtype must be one of {get_args(ComputeDType)}, got {compute_dtype!r}"
        )
    if compute_dtype != "float32" and logprob_dtype != "float32":
        raise ValueError(
            "model.compute_dtype: bfloat16 needs model.logprob_dtype: float32 (both would fill the fp32 "
            "log-probs that policy/clip_decision_diff compares against)"
        )


def check_precision(compute_dtype: str, precision: Any) -> None:
    """bf16 compute is asked for by ``model.compute_dtype`` alone: ``trainer.precision: bf16-true`` (bf16 optimizer
    state; bf16 default dtype inside the step) is refused, and with it any Trainer precision but ``32-true``."""
    precision = str(precision)
    if precision in ("bf16-true", "16-true") or (
        compute_dtype != "float32" and precision not in ("32-true", "32")
    ):
        raise ValueError(
            f"trainer.precision {precision!r} with model.compute_dtype {compute_dtype!r}: for bf16 compute with fp32 "
            "master weights set model.compute_dtype: bfloat16 and keep trainer.precision: 32-true"
        )


class MasterWeights:
    """fp32 masters of the non-fp32 trainable parameters of a policy whose weights compute in bf16.

    Built by ``for_policy`` (in ``RLModule.configure_model``); ``optimizer_params`` gives the tensors the
    optimizer is built on and ``attach`` hooks the optimizer's step and (load_)state_dict.
    """

    def __init__(self, policy: torch.nn.Module, masters: dict[int, Tensor]) -> None:
        self.policy = policy
        self.working = [p for p in _unique_params(policy) if id(p) in masters]
        self.masters = [masters[id(p)] for p in self.working]
        # what the optimizer steps: the masters, and trainable fp32 parameters (LoRA adapters) as they are
        self.optimized: list[Tensor] = []
        self.fp32_reference = False  # set by PrecisionAudit on the iterations whose clip decisions it checks

    check_settings = staticmethod(check_settings)
    check_precision = staticmethod(check_precision)

    @classmethod
    def for_policy(
        cls, policy: torch.nn.Module, compute_dtype: str, mesh: Any = None
    ) -> MasterWeights | None:
        """Cast ``policy``'s floating parameters to ``compute_dtype`` (LoRA adapters included), keeping fp32 masters
        of the trainable ones — copied *before* the cast, so an fp32 checkpoint's values are kept exactly. A
        trainable parameter already loaded in a low dtype (``policy.dtype: bfloat16``) gets a master copied from it.
        None when every parameter is fp32 (nothing to do) or under FSDP2 (a device ``mesh``), which keeps fp32
        masters itself."""
        dtype = _DTYPES[compute_dtype]
        params = _unique_params(policy)
        low = [p for p in params if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32]
        if mesh is not None:  # FSDP2 keeps fp32 sharded masters itself and computes in model.fsdp.param_dtype
            if dtype != torch.float32 or low:
                raise ValueError(
                    "under FSDP2 load the policy in float32 and set model.fsdp.param_dtype: bfloat16 (not "
                    "model.compute_dtype, nor trainable bf16 weights)"
                )
            return None
        masters: dict[int, Tensor] = {}
        for p in params if dtype != torch.float32 else []:  # float32: nothing is cast
            if not p.is_floating_point() or p.dtype == dtype:
                continue
            if p.requires_grad:
                masters[id(p)] = p.detach().to(torch.float32, copy=True)
            p.data = p.data.to(dtype)
        for p in low:
            masters.setdefault(id(p), p.detach().to(torch.float32, copy=True))
        if all(p.dtype == torch.float32 for p in params if p.is_floating_point()):
            return None
        return cls(policy, masters)

    def optimizer_params(self, trainable: Sequence[Tensor]) -> list[Tensor]:
        """``trainable`` with each working parameter replaced by its master (moved to its device first: the
        Trainer moves the policy after ``configure_model``)."""
        self.masters = [m.to(p.device) for p, m in zip(self.working, self.masters, strict=True)]
        by_id = {id(p): m for p, m in zip(self.working, self.masters, strict=True)}
        self.optimized = [by_id.get(id(p), p) for p in trainable]
        return self.optimized

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Refresh the working weights after every step; save/restore the masters with the optimizer state."""
        optimizer.register_step_post_hook(lambda *_: self.refresh())
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._load)

    def take_grads(self) -> None:
        """Move each working parameter's gradient to its master as fp32 (the working ``.grad`` is freed)."""
        for p, m in zip(self.working, self.masters, strict=True):
            m.grad = None if p.grad is None else p.grad.to(torch.float32)
            p.grad = None

    @torch.no_grad()
    def refresh(self) -> None:
        """Working weights = masters rounded to the compute dtype (round to nearest even)."""
        for p, m in zip(self.working, self.masters, strict=True):
            p.copy_(m)

    def _save(self, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
        state[STATE_KEY] = [m.detach() for m in self.masters]
        return state

    @torch.no_grad()
    def _load(self, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        saved = state.pop(STATE_KEY, None)
        if saved is None:  # a checkpoint of an fp32 run: its weights were just loaded into the working copy
            saved = [p.detach() for p in self.working]
        if len(saved) != len(self.masters):
            raise ValueError(f"checkpoint has {len(saved)} master weights, this policy {len(self.masters)}")
        for m, s in zip(self.masters, saved, strict=True):
            m.copy_(s)
        self.refresh()
        return state

    @contextmanager
    def fp32_weights(self) -> Iterator[None]:
        """Within: every floating parameter of the policy holds fp32 values (its master, or itself upcast; no
        grad). For a no-grad reference pass only; the working weights are put back on exit."""
        by_id = {id(p): m for p, m in zip(self.working, self.masters, strict=True)}
        saved = []
        try:
            for p in _unique_params(self.policy):
                if p.is_floating_point() and p.dtype != torch.float32:
                    saved.append((p, p.data))
                    p.data = by_id[id(p)] if id(p) in by_id else p.data.float()
            yield
        finally:
            for p, data in saved:
                p.data = data


def build_optimizer(
    policy: torch.nn.Module, factory: Callable[[Any], Any], master: MasterWeights | None
) -> Any:
    """The optimizer from ``factory`` on the policy's trainable parameters, or on their fp32 masters."""
    params = [p for p in policy.parameters() if p.requires_grad]
    if master is None:
        return factory(params)
    optimizer = factory(master.optimizer_params(params))
    master.attach(optimizer)
    return optimizer


def scored(score: Callable[[], PolicyPass], *, grad: bool, master: MasterWeights | None) -> PolicyPass:
    """``score()`` (a policy pass) with grad mode ``grad``. When ``master.fp32_reference`` is set (the precision
    audit's iterations), ``logp_fp32`` holds the same tokens' log-probs from a no-grad pass on fp32 weights, which
    ``policy/clip_decision_diff`` compares the ratio's clip decisions against."""
    fp32 = None
    if master is not None and master.fp32_reference:
        with torch.no_grad(), master.fp32_weights():
            fp32 = score().logp.detach()
    with torch.set_grad_enabled(grad):
        out = score()
    if fp32 is not None:
        out.logp_fp32 = fp32
    return out


def _unique_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(module.parameters())  # tied weights (embeddings = LM head) come once
