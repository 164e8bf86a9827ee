"""Post-LM-head logit rescaling of some model families, moved into the chunked log-prob pass.

A few HF causal LMs change the logits in their ``forward`` *after* the LM head: Gemma 2/3 soft-cap them
(``cap · tanh(z / cap)``, ``config.final_logit_softcapping``), Granite divides them by
``config.logits_scaling`` and Cohere multiplies them by ``logit_scale`` (copied onto the model at init).
``logprobs.token_logprobs_and_entropy`` runs its chunked scoring head *as* the LM head and returns a
``[2, M]`` stack of log-probs and entropies in place of the logits, so the model would rescale that stack.
This module gives the pass the family's transform to apply to each chunk of fp32 logits itself (before the
temperature, as the model's ``generate`` and SGLang do), switches the model's own rescaling off for the
duration of the pass, and checks afterwards that nothing else touched the stack — a family not listed here
that alters the head's output is refused instead of silently scored wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from epr_lightning.models import base_model

LogitTransform = Callable[[Tensor], Tensor]


def _softcap(logits: Tensor, cap: float) -> Tensor:
    return torch.tanh(logits / cap) * cap


def _divide(logits: Tensor, scale: float) -> Tensor:
    return logits / scale


def _multiply(logits: Tensor, scale: float) -> Tensor:
    return logits * scale


@dataclass(frozen=True)
class _Rule:
    """Where a family keeps its post-head parameter, its no-op value, and the transform it stands for."""

    on_config: bool  # the forward reads ``self.config.<attr>`` (else ``self.<attr>``)
    attr: str
    neutral: float | None  # the value that makes the forward leave the logits as they are
    transform: Callable[..., Tensor]


_SOFTCAP = _Rule(on_config=True, attr="final_logit_softcapping", neutral=None, transform=_softcap)
_GRANITE = _Rule(on_config=True, attr="logits_scaling", neutral=1.0, transform=_divide)
_COHERE = _Rule(on_config=False, attr="logit_scale", neutral=1.0, transform=_multiply)

# Classes whose forward was read (transformers 5.x) and whose numbers tests/test_logit_scaling.py checks.
_RULES: dict[str, _Rule] = {
    "Gemma2ForCausalLM": _SOFTCAP,
    "Gemma3ForCausalLM": _SOFTCAP,
    "GraniteForCausalLM": _GRANITE,
    "GraniteMoeForCausalLM": _GRANITE,
    "CohereForCausalLM": _COHERE,
    "Cohere2ForCausalLM": _COHERE,
}


def _rule(inner: torch.nn.Module) -> _Rule | None:
    for cls in type(inner).__mro__:  # subclasses of a known family (and FSDP2's dynamic classes) match too
        if cls.__name__ in _RULES:
            return _RULES[cls.__name__]
    return None


def _owner(inner: torch.nn.Module, rule: _Rule) -> object:
    return inner.config if rule.on_config else inner


def post_head_transform(model: torch.nn.Module) -> LogitTransform | None:
    """The rescaling ``model``'s forward applies to fp32 logits after its LM head; None when it applies none.

    Read at call time (a config edited after loading is honoured); peft wrappers are looked through.
    """
    inner = base_model(model)
    rule = _rule(inner)
    if rule is None:
        return None
    value = getattr(_owner(inner, rule), rule.attr, rule.neutral)
    if value is None or value == rule.neutral:
        return None
    if rule.transform is _softcap:
        return partial(_softcap, cap=float(value))
    return partial(rule.transform, scale=float(value))


@contextmanager
def post_head_scaling_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s forward returns its LM head's output unscaled; restored on exit.

    The attribute the forward reads is set to its no-op value and put back afterwards, also when the block
    raises. Models without a known rescaling are left untouched.
    """
    inner = base_model(model)
    rule = _rule(inner)
    if rule is None:
        yield
        return
    owner = _owner(inner, rule)
    missing = object()
    old = getattr(owner, rule.attr, missing)
    setattr(owner, rule.attr, rule.neutral)
    try:
        yield
    finally:
        if old is missing:
            delattr(owner, rule.attr)
        else:
            setattr(owner, rule.attr, old)


def check_head_output_untouched(model: torch.nn.Module, returned: Tensor, expected: Tensor) -> None:
    """Raise when the model's forward changed what the scoring head returned (an unknown post-head step).

    ``expected`` is a detached copy of the head's output taken before the model saw it. Bit-equal values
    pass (``x / 1.0`` and ``x * 1.0`` are exact); anything else means the log-probs would be wrong.
    """
    same = returned.shape == expected.shape and returned.dtype == expected.dtype
    if same:
        same = bool(torch.isclose(returned.detach(), expected, rtol=0.0, atol=0.0, equal_nan=True).all())
    if not same:
        name = type(base_model(model)).__name__
        known = ", ".join(sorted(_RULES))
        raise NotImplementedError(
            f"{name} changes its LM head's output inside forward (a post-head logit rescaling epr-lightning "
            f"does not know), so its log-probs and entropies cannot be computed exactly; supported families "
            f"with such a step: {known}"
        )
