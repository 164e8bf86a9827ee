"""SGLang as a colocated, in-process rollout engine (one ``sglang.Engine`` per trainer rank).

Token-in/token-out (``skip_tokenizer_init=True``), explicit sampling parameters, sampler log-probs returned
with every token. Weights move from the trainer with ``update_weights_from_tensor`` in byte-bounded
buckets inside a ``begin_weight_update``/``end_weight_update`` transaction (sglang ≥ 0.5.21; older versions
have neither method and need none). Memory follows the colocated order (verl):
``resume(["weights"])`` → push pending weights → ``flush_cache()`` → ``resume(["kv_cache"])`` → generate →
``release(["kv_cache", "weights"])``.

Side effects of ``sglang.Engine`` on the calling process: multiprocessing start method ``spawn``, NCCL env
defaults, and a SIGQUIT handler that kills the whole process tree when a child dies.

The shared helpers here (sampling parameters, output → ``Rollout``) are also used by the HTTP engine.
"""

from __future__ import annotations

import importlib
import os
import random
from collections.abc import Callable
from typing import Any

import torch

from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams, stop_ids
from epr_lightning.rollout.stops import cut_at_stop, single_token_stops
from epr_lightning.rollout.weights import iter_buckets, iter_hf_weights

INSTALL_HINT = "pip install 'epr-lightning[sglang]'"


def import_sglang() -> Any:
    """Import ``sglang`` lazily, with an actionable error when the optional extra is missing."""
    try:
        return importlib.import_module("sglang")
    except ImportError as err:
        raise ImportError(
            f"the SGLang rollout engine needs the optional `sglang` extra (CUDA only): {INSTALL_HINT} "
            f"({type(err).__name__}: {err})"
        ) from err


def sample_seeds(seed: int, rank: int, call_index: int, n: int) -> list[int]:
    """Distinct, reproducible per-sample sampling seeds for one generate call on one rank."""
    rng = random.Random(f"{seed}/{rank}/{call_index}")
    return [rng.randrange(1, 2**31 - 1) for _ in range(n)]


def build_requests(
    prompt_ids: list[list[int]],
    num_samples: int,
    params: SamplingParams,
    tokenizer: Any,
    rank: int,
    call_index: int,
    send_seed: bool,
    send_stop_strings: bool = True,
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Prompt-major ``input_ids`` (each prompt ``num_samples`` times) and one sampling-params dict per sample.

    Stop strings that are one vocabulary token go as stop token ids; the others as ``stop`` when
    ``send_stop_strings`` (SGLang refuses string stops under ``skip_tokenizer_init``; ``build_rollout`` cuts at
    them either way).
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    inputs = [list(p) for p in prompt_ids for _ in range(num_samples)]
    seeds = sample_seeds(params.seed, rank, call_index, len(inputs))
    one_token, strings = single_token_stops(params.stop, tokenizer)
    stops = list(dict.fromkeys(stop_ids(params, tokenizer) + one_token))
    sent = strings if send_stop_strings else []
    return inputs, [sglang_sampling_params(params, stops, s if send_seed else None, sent) for s in seeds]


def next_requests(
    engine: Any, prompt_ids: list[list[int]], num_samples: int, params: SamplingParams
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """:func:`build_requests` for an SGLang engine's next ``generate`` call (advances its ``generate_calls``)."""
    requests = build_requests(
        prompt_ids,
        num_samples,
        params,
        engine.tokenizer,
        engine.rank,
        engine.generate_calls,
        engine.send_sampling_seed,
        engine.send_stop_strings,
    )
    engine.generate_calls += 1
    return requests


def sglang_sampling_params(
    params: SamplingParams, stop_token_ids: list[int], seed: int | None, stop: list[str] | None = None
) -> dict[str, Any]:
    """SGLang ``sampling_params`` with every field that changes the distribution set explicitly (``stop``: the
    stop strings to send; ``no_stop_trim`` keeps a matched stop token or string in ``output_ids``)."""
    sp: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": -1,
        "min_p": 0.0,
        "stop_token_ids": stop_token_ids,
        "ignore_eos": False,
        "skip_special_tokens": False,
        "no_stop_trim": True,
    }
    if stop:
        sp["stop"] = list(stop)
    if seed is not None:
        sp["sampling_seed"] = seed
    return sp


def finish_type(output: dict[str, Any]) -> str:
    """SGLang's ``meta_info.finish_reason`` → ``"stop" | "length" | "abort"``."""
    reason = output.get("meta_info", {}).get("finish_reason")
    kind = reason.get("type") if isinstance(reason, dict) else reason
    if kind not in ("stop", "length", "abort"):
        raise RuntimeError(
            f"SGLang output has unexpected finish_reason {reason!r} (meta_info: {output.get('meta_info')})"
        )
    return kind


def completion_and_logprobs(output: dict[str, Any]) -> tuple[list[int], list[float]]:
    """``output_ids`` (stop token included) and their log-probs, checked to be aligned 1:1."""
    ids = [int(t) for t in output["output_ids"]]
    triples = output.get("meta_info", {}).get("output_token_logprobs")
    if triples is None:
        raise RuntimeError(
            "SGLang output has no meta_info.output_token_logprobs (was return_logprob=True sent?)"
        )
    lps = [float(tr[0]) for tr in triples]
    lp_ids = [int(tr[1]) for tr in triples]
    if lp_ids != ids:
        raise RuntimeError(f"SGLang logprob token ids {lp_ids[:8]}… do not match output_ids {ids[:8]}…")
    return ids, lps


def generate_with_resubmit(
    submit: Callable[[list[int]], list[dict[str, Any]]], n: int, where: str
) -> list[dict[str, Any]]:
    """Run ``submit(indices)`` for all n samples, resubmit aborted ones once, then fail clearly."""
    outputs = submit(list(range(n)))
    aborted = [i for i, o in enumerate(outputs) if finish_type(o) == "abort"]
    if aborted:
        for i, o in zip(aborted, submit(aborted), strict=True):
            if finish_type(o) == "abort":
                reason = o.get("meta_info", {}).get("finish_reason")
                raise RuntimeError(f"SGLang ({where}) aborted sample {i} twice: {reason}")
            outputs[i] = o
    return outputs


def build_rollout(
    prompt_ids: list[list[int]],
    num_samples: int,
    outputs: list[dict[str, Any]],
    tokenizer: Any,
    weight_version: int,
    stop: list[str] | None = None,
) -> Rollout:
    """Prompt-major ``Rollout`` from SGLang outputs (one per sample, in the order the prompts were repeated),
    each cut after its first stop string (``stops.cut_at_stop``: a no-op where SGLang stopped there itself)."""
    completions, logprobs, reasons, texts = [], [], [], []
    for out in outputs:
        ids, lps, by_string = cut_at_stop(*completion_and_logprobs(out), list(stop or []), tokenizer)
        completions.append(ids)
        logprobs.append(lps)
        reasons.append("stop" if by_string else finish_type(out))
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    prompts = [list(p) for p in prompt_ids for _ in range(num_samples)]
    prompt_texts = [tokenizer.decode(p, skip_special_tokens=False) for p in prompts]
    return Rollout(
        prompt_ids=prompts,
        completion_ids=completions,
        sampler_logprobs=logprobs,
        group_index=[g for g in range(len(prompt_ids)) for _ in range(num_samples)],
        finish_reason=reasons,
        completion_text=texts,
        prompt_text=prompt_texts,
        weight_version=weight_version,
    )


def _check_result(result: Any, what: str) -> None:
    """SGLang's engine methods return ``(success, message)``; a falsy success is an error."""
    if isinstance(result, tuple) and result and result[0] is False:
        raise RuntimeError(f"SGLang {what} failed: {result[1] if len(result) > 1 else result}")


def cuda_cleanup() -> None:
    """Producer hygiene after pushing buckets over CUDA IPC (slime/miles)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.ipc_collect()
        torch.cuda.empty_cache()


class SGLangEngine(RolloutEngine):
    """One in-process ``sglang.Engine`` per trainer rank (colocated, ``base_gpu_id`` = local rank).

    Args:
        model_path: HF folder or hub id SGLang loads at start; None uses the policy's ``name_or_path``.
        dtype: SGLang's weight/compute dtype; pushed weights are cast to it.
        mem_fraction_static: share of GPU memory for weights + KV cache, measured at engine start.
        tp_size: tensor-parallel size of each engine (1 for colocated per-rank engines).
        enable_memory_saver: allow ``sleep``/``wake_up`` to release and resume memory (torch_memory_saver).
        seed: base random seed; the engine gets ``seed + rank`` and each sample its own ``sampling_seed``.
        weight_bucket_mb: byte limit of one ``update_weights_from_tensor`` bucket.
        load_format: SGLang load format at start; ``"dummy"`` starts random and pushes the policy in setup.
        port: base port; rank r uses ``port + r``.
        send_sampling_seed: send per-sample ``sampling_seed`` (honoured by the pytorch sampling backend).
        extra_engine_args: more ``sglang.Engine`` keyword arguments (e.g. ``cuda_graph_backend_prefill``).

    Stop strings (``SamplingParams.stop``): the engine runs with ``skip_tokenizer_init``, under which SGLang
    refuses string stops, so it stops natively only on strings that are one token (sent as stop token ids);
    at other strings the completion is cut after generation, to the same tokens. ``extra_engine_args:
    {skip_tokenizer_init: false}`` sends them as ``stop`` instead.
    """

    def __init__(
        self,
        model_path: str | None = None,
        dtype: str = "bfloat16",
        mem_fraction_static: float = 0.5,
        tp_size: int = 1,
        enable_memory_saver: bool = True,
        seed: int = 0,
        weight_bucket_mb: float = 512,
        load_format: str = "auto",
        port: int = 30000,
        send_sampling_seed: bool = True,
        extra_engine_args: dict[str, Any] | None = None,
    ) -> None:
        if not 0 < mem_fraction_static < 1:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {mem_fraction_static}")
        if weight_bucket_mb <= 0:
            raise ValueError(f"weight_bucket_mb must be > 0, got {weight_bucket_mb}")
        self.model_path = model_path
        self.dtype = dtype
        self.mem_fraction_static = mem_fraction_static
        self.tp_size = tp_size
        self.enable_memory_saver = enable_memory_saver
        self.seed = seed
        self.weight_bucket_bytes = int(weight_bucket_mb * 2**20)
        self.load_format = load_format
        self.port = port
        self.send_sampling_seed = send_sampling_seed
        self.extra_engine_args = dict(extra_engine_args or {})
        self.engine: Any = None
        self.weight_version = 0
        self.rank = 0
        self.generate_calls = 0
        self._asleep = False
        self._pending: torch.nn.Module | None = None
        self.send_stop_strings = False

    def engine_kwargs(self, model: torch.nn.Module, rank: int) -> dict[str, Any]:
        path = (
            self.model_path
            or getattr(model, "name_or_path", None)
            or getattr(getattr(model, "config", None), "_name_or_path", None)
        )
        if not path:
            raise ValueError("SGLangEngine.model_path is not set and the policy has no name_or_path")
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        kwargs = dict(
            model_path=str(path),
            dtype=self.dtype,
            mem_fraction_static=self.mem_fraction_static,
            tp_size=self.tp_size,
            base_gpu_id=local_rank,
            random_seed=self.seed + rank,
            enable_memory_saver=self.enable_memory_saver,
            skip_tokenizer_init=True,
            load_format=self.load_format,
            host="127.0.0.1",  # loopback only; override through extra_engine_args
            port=self.port + rank,
        )
        kwargs.update(self.extra_engine_args)
        return kwargs

    def setup(self, model: torch.nn.Module, tokenizer: Any, *, rank: int = 0, world_size: int = 1) -> None:
        sglang = import_sglang()
        self.tokenizer = tokenizer
        self.rank = rank
        kwargs = self.engine_kwargs(model, rank)
        self.send_stop_strings = not kwargs["skip_tokenizer_init"]  # refused without a tokenizer
        self.engine = sglang.Engine(**kwargs)
        if self.load_format == "dummy":
            self._push_now(model)

    def _require_engine(self) -> Any:
        if self.engine is None:
            raise RuntimeError("SGLangEngine used before setup() (or after shutdown())")
        return self.engine

    # -- weights -------------------------------------------------------------------------------------
    def push_weights(self, model: torch.nn.Module) -> None:
        """Push now when awake; while asleep the push waits for ``wake_up`` (weights must be resumed first)."""
        if self._asleep:
            self._pending = model
        else:
            self._push_now(model)

    def _push_now(self, model: torch.nn.Module) -> None:
        engine = self._require_engine()
        dtype = getattr(torch, self.dtype)
        transactional = hasattr(engine, "begin_weight_update")
        if transactional:
            try:
                engine.begin_weight_update()
            except Exception as err:
                raise RuntimeError(
                    f"SGLang rejected begin_weight_update; weights were not pushed: {err}"
                ) from err
        for bucket in iter_buckets(iter_hf_weights(model, dtype=dtype), self.weight_bucket_bytes):
            _check_result(
                engine.update_weights_from_tensor(bucket, flush_cache=False), "update_weights_from_tensor"
            )
            del bucket
        if transactional:
            _check_result(engine.end_weight_update(), "end_weight_update")
        engine.flush_cache()
        cuda_cleanup()
        self._pending = None
        self.weight_version += 1

    # -- memory --------------------------------------------------------------------------------------
    def wake_up(self) -> None:
        engine = self._require_engine()
        if not (self.enable_memory_saver and self._asleep):
            if self._pending is not None:
                self._push_now(self._pending)
            return
        engine.resume_memory_occupation(tags=["weights"])
        if self._pending is not None:
            self._push_now(self._pending)  # ends with flush_cache()
        else:
            engine.flush_cache()
        cuda_cleanup()
        engine.resume_memory_occupation(tags=["kv_cache"])
        self._asleep = False

    def sleep(self) -> None:
        engine = self._require_engine()
        if self.enable_memory_saver and not self._asleep:
            engine.release_memory_occupation(tags=["kv_cache", "weights"])
            self._asleep = True

    # -- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        num_samples: int,
        *,
        model: torch.nn.Module | None = None,
    ) -> Rollout:
        engine = self._require_engine()
        if self._asleep:
            raise RuntimeError("SGLangEngine.generate called while asleep; call wake_up() first")
        inputs, sps = next_requests(self, prompt_ids, num_samples, params)

        def submit(idx: list[int]) -> list[dict[str, Any]]:
            out = engine.generate(
                input_ids=[inputs[i] for i in idx], sampling_params=[sps[i] for i in idx], return_logprob=True
            )
            if len(out) != len(idx):
                raise RuntimeError(f"SGLang returned {len(out)} outputs for {len(idx)} inputs")
            return out

        outputs = generate_with_resubmit(submit, len(inputs), "in-process engine")
        return build_rollout(
            prompt_ids, num_samples, outputs, self.tokenizer, self.weight_version, params.stop
        )

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
