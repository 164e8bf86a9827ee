"""In-process stand-in for the ``sglang`` Python module (``sglang.Engine`` in skip_tokenizer_init mode),
backed by :class:`~epr_lightning.testing.fake_sglang_backend.TinyBackend`. Inject it with
``monkeypatch.setitem(sys.modules, "sglang", fake_sglang_module(model, tokenizer))``.

Faithful to sglang 0.5.x as far as ``SGLangEngine`` uses it: batched token-in/token-out ``generate`` with
per-sample sampling params, tensor weight updates refused outside ``begin_weight_update``/
``end_weight_update`` (0.5.21+; absent with ``transactional=False``), and memory release/resume by tag.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

from epr_lightning.testing.fake_sglang_backend import TinyBackend


def fake_sglang_module(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    transactional: bool = True,
    on_call: Callable[[str, tuple, dict], Any] | None = None,
) -> types.ModuleType:
    """A module with an ``Engine`` class mimicking ``sglang.Engine`` (skip_tokenizer_init mode).

    Every call is appended to ``module.calls`` as ``(method, args, kwargs)``; ``module.engines`` holds the
    created engines. ``on_call(method, args, kwargs)`` runs first and may raise to simulate a rejection.
    ``transactional=False`` emulates ≤ 0.5.20 (no ``begin_weight_update`` attribute at all).
    """
    mod = types.ModuleType("sglang")
    mod.calls = []  # type: ignore[attr-defined]
    mod.engines = []  # type: ignore[attr-defined]
    backend = TinyBackend(model, getattr(tokenizer, "eos_token_id", None))

    class Engine:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            self.in_transaction = False
            self.released: set[str] = set()
            self._record("__init__", (), kwargs)
            mod.engines.append(self)

        def _record(self, name: str, args: tuple, kwargs: dict) -> None:
            mod.calls.append((name, args, kwargs))
            if on_call is not None:
                on_call(name, args, kwargs)

        def generate(self, input_ids=None, sampling_params=None, return_logprob=False, **kw):
            self._record(
                "generate",
                (),
                dict(
                    input_ids=input_ids, sampling_params=sampling_params, return_logprob=return_logprob, **kw
                ),
            )
            if self.released:
                raise RuntimeError(f"generate while memory released: {sorted(self.released)}")
            return backend.generate(input_ids, sampling_params, return_logprob)

        def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
            self._record(
                "update_weights_from_tensor",
                (named_tensors,),
                dict(load_format=load_format, flush_cache=flush_cache),
            )
            if transactional and not self.in_transaction:
                return False, "update_weights_from_tensor outside begin_weight_update/end_weight_update"
            if "weights" in self.released:
                return False, "weights are released"
            backend.load_named_tensors(list(named_tensors))
            return True, "Success"

        def flush_cache(self):
            self._record("flush_cache", (), {})

        def release_memory_occupation(self, tags=None):
            self._record("release_memory_occupation", (), dict(tags=tags))
            self.released |= set(tags or ["kv_cache", "weights", "cuda_graph"])

        def resume_memory_occupation(self, tags=None):
            self._record("resume_memory_occupation", (), dict(tags=tags))
            self.released -= set(tags or ["kv_cache", "weights", "cuda_graph"])

        def get_weights_by_name(self, name, truncate_size=100):
            self._record("get_weights_by_name", (name,), dict(truncate_size=truncate_size))
            return backend.get_weights_by_name(name, truncate_size)

        def shutdown(self):
            self._record("shutdown", (), {})

    if transactional:

        def begin_weight_update(self, **kw):
            self._record("begin_weight_update", (), kw)
            self.in_transaction = True

        def end_weight_update(self, **kw):
            self._record("end_weight_update", (), kw)
            self.in_transaction = False

        Engine.begin_weight_update = begin_weight_update  # type: ignore[attr-defined]
        Engine.end_weight_update = end_weight_update  # type: ignore[attr-defined]

    mod.Engine = Engine  # type: ignore[attr-defined]
    mod.backend = backend  # type: ignore[attr-defined]
    return mod
