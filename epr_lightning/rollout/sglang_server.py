"""SGLang servers (``sglang serve`` / ``python -m sglang.launch_server``) as a disaggregated rollout engine,
spoken to over HTTP with the standard library only.

Generation: batched token-in/token-out ``POST /generate`` (``input_ids`` list-of-lists, one
``sampling_params`` dict per sample, ``return_logprob``), spread over the servers (or sent to a router).
Weight sync (trainer rank 0 talks to the servers; every rank gathers, since DTensor gathers are collectives):

* ``"disk"``: write an HF safetensors folder into ``sync_dir`` (shared filesystem), then
  ``pause_generation`` → ``flush_cache`` → ``update_weights_from_disk`` → ``continue_generation``.
* ``"distributed"``: once, ``init_weights_update_group`` on the servers while the trainer joins as rank 0;
  then ``pause_generation`` → ``flush_cache`` → ``begin_weight_update`` → per bucket
  (``update_weights_from_distributed`` fired asynchronously, then a broadcast of each tensor, then await)
  → ``end_weight_update`` → ``continue_generation``. Begin/end are skipped when the server answers 404
  (sglang ≤ 0.5.20); any other rejection of begin fails closed (nothing is pushed).

The retrying JSON client is ``sglang_http.py`` (``SGLangHTTPError``), the trainer side of the weight-update
group ``sglang_sync.py`` (``TorchBroadcaster``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams
from epr_lightning.rollout.sglang import build_rollout, generate_with_resubmit, next_requests
from epr_lightning.rollout.sglang_http import SGLangHTTPError, request_json
from epr_lightning.rollout.sglang_sync import TorchBroadcaster
from epr_lightning.rollout.weights import dtype_name, iter_buckets, iter_hf_weights, save_hf_folder


class SGLangServerEngine(RolloutEngine):
    """Rollouts from running SGLang servers over HTTP.

    Args:
        urls: base URLs of the SGLang servers (workers); weight updates go to each of them.
        router_url: optional sglang-router URL; when set, ``/generate`` goes there instead of to ``urls``.
        timeout_s: per-request timeout in seconds.
        max_retries: retries after a connection error, timeout or 5xx answer (so ``1 + max_retries`` tries).
        backoff_s: first retry delay; doubles on each retry.
        weight_sync: ``"disk"`` (HF folder on a shared filesystem) or ``"distributed"`` (NCCL broadcast).
        sync_dir: where ``"disk"`` sync writes ``weights_v<N>``; None uses a temporary folder (same host only).
        nccl_master_addr: address of the trainer (rank 0) for the ``"distributed"`` weight-update group.
        nccl_master_port: port of that group's rendezvous.
        server_tp_size: tensor-parallel size of each server (its ranks join the weight-update group).
        weight_bucket_mb: byte limit of one ``update_weights_from_distributed`` bucket.
        dtype: dtype the weights are sent in (the servers' dtype).
        admin_api_key: sent as ``Authorization: Bearer`` (servers started with ``--admin-api-key``).
        health_check: ``GET /health_generate`` on every server at setup.
        send_sampling_seed: send per-sample ``sampling_seed`` (honoured by the pytorch sampling backend).
        send_stop_strings: send ``SamplingParams.stop`` strings as ``stop`` (the server stops there); False for
            servers started with ``--skip-tokenizer-init``, which refuse them (completions are then cut at the
            strings after generation, to the same tokens). Strings that are one token go as stop token ids.
    """

    def __init__(
        self,
        urls: list[str] | None = None,
        router_url: str | None = None,
        timeout_s: float = 600.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        weight_sync: str = "disk",
        sync_dir: str | None = None,
        nccl_master_addr: str = "127.0.0.1",
        nccl_master_port: int = 29600,
        server_tp_size: int = 1,
        weight_bucket_mb: float = 512,
        dtype: str = "bfloat16",
        admin_api_key: str | None = None,
        health_check: bool = True,
        send_sampling_seed: bool = True,
        send_stop_strings: bool = True,
    ) -> None:
        self.urls = [u.rstrip("/") for u in (urls if urls is not None else ["http://127.0.0.1:30000"])]
        if not self.urls:
            raise ValueError("SGLangServerEngine.urls must name at least one server")
        if weight_sync not in ("disk", "distributed"):
            raise ValueError(
                f"SGLangServerEngine.weight_sync must be 'disk' or 'distributed', got {weight_sync!r}"
            )
        if max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("SGLangServerEngine: max_retries and backoff_s must be >= 0, timeout_s > 0")
        self.router_url = router_url.rstrip("/") if router_url else None
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.weight_sync = weight_sync
        self.sync_dir = sync_dir
        self.nccl_master_addr = nccl_master_addr
        self.nccl_master_port = nccl_master_port
        self.server_tp_size = server_tp_size
        self.weight_bucket_bytes = int(weight_bucket_mb * 2**20)
        self.dtype = dtype
        self.admin_api_key = admin_api_key
        self.health_check = health_check
        self.send_sampling_seed = send_sampling_seed
        self.send_stop_strings = send_stop_strings
        self.broadcaster: Any = TorchBroadcaster()  # replaceable: .join(...) and .broadcast(tensor)
        self.group_name = "epr_weight_sync"
        self.weight_version = 0
        self.rank = 0
        self.generate_calls = 0
        self._group_ready = False
        self._tmp_dir: str | None = None
        self._sleep = time.sleep

    # -- HTTP ----------------------------------------------------------------------------------------
    def request(
        self, url: str, path: str, body: dict[str, Any] | None = None, *, method: str = "POST"
    ) -> Any:
        """One JSON request with bounded retries (connection errors, timeouts, 5xx) and exponential backoff."""
        return request_json(
            url,
            path,
            body,
            method=method,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            api_key=self.admin_api_key,
            sleep=self._sleep,
        )

    def _all(self, path: str, body: dict[str, Any] | None = None) -> list[Any]:
        """The same request to every server, concurrently; results in ``urls`` order."""
        with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
            futures = [pool.submit(self.request, u, path, body) for u in self.urls]
            return [f.result() for f in futures]

    @staticmethod
    def _check_success(result: Any, url: str, path: str) -> None:
        if isinstance(result, dict) and result.get("success") is False:
            raise RuntimeError(f"SGLang server {url}: {path} failed: {result.get('message')}")

    # -- lifecycle -----------------------------------------------------------------------------------
    def setup(self, model: torch.nn.Module, tokenizer: Any, *, rank: int = 0, world_size: int = 1) -> None:
        self.tokenizer = tokenizer
        self.rank = rank
        if self.health_check:
            for url in self.urls:
                self.request(url, "/health_generate", method="GET")

    def shutdown(self) -> None:
        if self._group_ready and self.rank == 0:
            for url in self.urls:
                try:
                    self.request(url, "/destroy_weights_update_group", {"group_name": self.group_name})
                except SGLangHTTPError:
                    pass  # the servers may already be gone
            self._group_ready = False
            close = getattr(self.broadcaster, "close", None)
            if callable(close):
                close()
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    # -- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        num_samples: int,
        *,
        model: torch.nn.Module | None = None,
    ) -> Rollout:
        inputs, sps = next_requests(self, prompt_ids, num_samples, params)
        targets = [self.router_url] if self.router_url else self.urls

        def post(url: str, idx: list[int]) -> list[dict[str, Any]]:
            body = {
                "input_ids": [inputs[i] for i in idx],
                "sampling_params": [sps[i] for i in idx],
                "return_logprob": True,
            }
            out = self.request(url, "/generate", body)
            if not isinstance(out, list) or len(out) != len(idx):
                raise RuntimeError(
                    f"SGLang server {url}: /generate returned {type(out).__name__} for {len(idx)} inputs"
                )
            return out

        def submit(idx: list[int]) -> list[dict[str, Any]]:
            k = min(len(targets), len(idx))
            bounds = [len(idx) * j // k for j in range(k + 1)]  # contiguous chunks keep groups together
            chunks = [idx[bounds[j] : bounds[j + 1]] for j in range(k)]
            with ThreadPoolExecutor(max_workers=k) as pool:
                futures = [pool.submit(post, targets[j], chunks[j]) for j in range(k)]
                return [o for f in futures for o in f.result()]

        outputs = generate_with_resubmit(submit, len(inputs), ", ".join(targets))
        return build_rollout(
            prompt_ids, num_samples, outputs, self.tokenizer, self.weight_version, params.stop
        )

    # -- weight sync ---------------------------------------------------------------------------------
    @contextmanager
    def _paused(self) -> Iterator[None]:
        """pause_generation(retract) → flush_cache → [body] → continue_generation (always attempted)."""
        try:  # a pause that reached only some servers must be undone too
            self._all("/pause_generation", {"mode": "retract"})
            for url in self.urls:
                self.flush_cache(url)
            yield
        except BaseException:
            try:  # do not leave servers paused; the original error is the one to report
                self._all("/continue_generation", {})
            except SGLangHTTPError:
                pass
            raise
        self._all("/continue_generation", {})

    def flush_cache(self, url: str, attempts: int = 60) -> None:
        """``/flush_cache`` answers 400 while requests run; retry up to ``attempts`` times (slime: 60 × 1 s)."""
        for i in range(attempts):
            try:
                self.request(url, "/flush_cache")
                return
            except SGLangHTTPError as err:
                if err.status != 400 or i == attempts - 1:
                    raise
                self._sleep(self.backoff_s)

    def push_weights(self, model: torch.nn.Module) -> None:
        version = self.weight_version + 1
        if self.weight_sync == "disk":
            self._sync_disk(model, version)
        else:
            self._sync_distributed(model, version)
        self.weight_version = version

    def _sync_root(self) -> Path:
        if self.sync_dir is not None:
            return Path(self.sync_dir)
        if self._tmp_dir is None:
            self._tmp_dir = tempfile.mkdtemp(prefix="epr_sglang_sync_")
        return Path(self._tmp_dir)

    def _sync_disk(self, model: torch.nn.Module, version: int) -> None:
        dtype = getattr(torch, self.dtype)
        if self.rank != 0:  # take part in the gathers, write nothing
            for _ in iter_hf_weights(model, dtype=dtype):
                pass
            return
        root = self._sync_root()
        target, tmp = root / f"weights_v{version}", root / f".weights_v{version}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        save_hf_folder(model, tmp, dtype=dtype)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # servers never see a half-written folder
        with self._paused():
            body = {"model_path": str(target), "weight_version": str(version)}
            for url, result in zip(self.urls, self._all("/update_weights_from_disk", body), strict=True):
                self._check_success(result, url, "/update_weights_from_disk")
        for old in root.glob("weights_v*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        world_size = 1 + len(self.urls) * self.server_tp_size
        with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:  # fire first, or both sides block
            futures = [
                pool.submit(
                    self.request,
                    url,
                    "/init_weights_update_group",
                    {
                        "master_address": self.nccl_master_addr,
                        "master_port": self.nccl_master_port,
                        "rank_offset": 1 + i * self.server_tp_size,
                        "world_size": world_size,
                        "group_name": self.group_name,
                        "backend": "nccl",
                    },
                )
                for i, url in enumerate(self.urls)
            ]
            self.broadcaster.join(
                self.nccl_master_addr, self.nccl_master_port, world_size, self.group_name, "nccl"
            )
            for url, f in zip(self.urls, futures, strict=True):
                self._check_success(f.result(), url, "/init_weights_update_group")
        self._group_ready = True

    def _begin_all(self) -> bool:
        """True when the servers run update transactions; a 404 means an sglang without them."""
        try:
            self._all("/begin_weight_update", {"selector": "all"})
            return True
        except SGLangHTTPError as err:
            if err.status == 404:
                return False
            raise RuntimeError(
                f"SGLang rejected begin_weight_update; weights were not pushed: {err}"
            ) from err

    def _sync_distributed(self, model: torch.nn.Module, version: int) -> None:
        dtype = getattr(torch, self.dtype)
        weights = iter_hf_weights(model, dtype=dtype)
        if self.rank != 0:
            for _ in weights:
                pass
            return
        self._ensure_group()
        with self._paused():
            transactional = self._begin_all()
            with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
                for bucket in iter_buckets(weights, self.weight_bucket_bytes):
                    body = {
                        "names": [n for n, _ in bucket],
                        "dtypes": [dtype_name(t.dtype) for _, t in bucket],
                        "shapes": [list(t.shape) for _, t in bucket],
                        "group_name": self.group_name,
                        "flush_cache": False,
                        "weight_version": str(version),
                    }
                    futures = [
                        pool.submit(self.request, url, "/update_weights_from_distributed", body)
                        for url in self.urls
                    ]
                    for _, tensor in bucket:
                        self.broadcaster.broadcast(tensor)
                    for url, f in zip(self.urls, futures, strict=True):
                        self._check_success(f.result(), url, "/update_weights_from_distributed")
            if transactional:
                self._all("/end_weight_update", {})
            for url in self.urls:  # buckets were sent with flush_cache=False
                self.flush_cache(url)
