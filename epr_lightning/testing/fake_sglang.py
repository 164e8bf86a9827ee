"""A fake SGLang, for tests without a GPU: the same JSON over HTTP (``FakeSGLangServer``) and the same
Python calls in-process (``fake_sglang_module``), both backed by a real tiny HF model.

What is faithful (sglang 0.5.x, see the SGLang notes): token-in/token-out ``/generate`` with batched
``input_ids`` and per-sample ``sampling_params``; ``output_ids`` include the stop token; logprobs are
``log_softmax(logits / T)`` of the full vocab (unscaled when greedy) as ``(logprob, token_id, None)`` triples;
``finish_reason`` dicts; ``weight_version``; tensor/distributed updates refused outside
``begin_weight_update``/``end_weight_update`` (0.5.21+); ``/flush_cache`` answers 400 while busy.
What is not: no KV cache, no batching across requests, no NCCL (``/update_weights_from_distributed``
takes its tensors from :meth:`FakeSGLangServer.broadcast_sink` instead of a process group).

This file holds the HTTP server; the model behind both fakes is ``fake_sglang_backend.py`` (``TinyBackend``)
and the in-process module ``fake_sglang_module.py``.
"""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from epr_lightning.rollout.weights import dtype_from_name
from epr_lightning.testing.fake_sglang_backend import backend_from


class FakeSGLangServer:
    """An SGLang-compatible HTTP server on 127.0.0.1 backed by a tiny HF model.

    Args:
        model_dir: HF folder to load (e.g. written by ``epr_lightning.tiny.save_tiny``); or pass ``model``
            and ``tokenizer`` (the model is used as is, so tests can compare against it).
        host: bind address; loopback only.
        port: 0 picks a free port (see ``.url``).
        transactional: emulate sglang ≥ 0.5.21 (begin/end weight update exist and are mandatory for
            distributed updates); False answers 404 on them, like ≤ 0.5.20.
        admin_api_key: when set, weight/memory endpoints need ``Authorization: Bearer <key>``.

    ``requests`` records ``(method, path, body)`` of every request in arrival order. ``fail_next(n, status,
    path)`` answers the next n (matching) requests with ``status``; ``down = True`` answers 503 to all.
    """

    ADMIN_PATHS = (
        "/update_",
        "/init_weights",
        "/destroy_weights",
        "/begin_weight",
        "/end_weight",
        "/release_memory",
        "/resume_memory",
        "/pause_generation",
        "/continue_generation",
    )

    def __init__(
        self,
        model_dir: str | Path | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        transactional: bool = True,
        admin_api_key: str | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"FakeSGLangServer binds loopback only, got host={host!r}")
        self.backend = backend_from(model_dir, model, tokenizer)
        self.transactional = transactional
        self.admin_api_key = admin_api_key
        self.requests: list[tuple[str, str, Any]] = []
        self.down = False
        self.paused = False
        self.in_transaction = False
        self._faults: list[tuple[int, str | None]] = []
        self._aborts = 0
        self._broadcasts: queue.Queue[torch.Tensor] = queue.Queue()
        self._rec_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeSGLangServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeSGLangServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -------------------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 503, path: str | None = None) -> None:
        with self._rec_lock:
            self._faults.extend([(status, path)] * n)

    def abort_next(self, n: int = 1) -> None:
        """Report the next n generated samples as aborted (``finish_reason.type == "abort"``)."""
        with self._rec_lock:
            self._aborts += n

    def broadcast_sink(self, tensor: torch.Tensor) -> None:
        """Where a test's stand-in for the NCCL broadcast delivers each tensor for this server."""
        self._broadcasts.put(tensor.detach().clone())

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]

    # -- request handling ----------------------------------------------------------------------------
    def _fault_for(self, path: str) -> int | None:
        with self._rec_lock:
            if self.down:
                return 503
            for i, (status, only) in enumerate(self._faults):
                if only is None or only == path:
                    del self._faults[i]
                    return status
        return None

    def _route(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        b = self.backend
        if path == "/generate":
            if body.get("stream"):
                return 400, {"error": "the fake server does not stream"}
            if "input_ids" not in body:
                return 400, {"error": "skip_tokenizer_init: input_ids is required"}
            out = b.generate(body["input_ids"], body.get("sampling_params"), bool(body.get("return_logprob")))
            with self._rec_lock:
                for o in out if isinstance(out, list) else [out]:
                    if self._aborts > 0:
                        self._aborts -= 1
                        o["meta_info"]["finish_reason"] = {"type": "abort", "message": "injected abort"}
            return 200, out
        if path in ("/health", "/health_generate"):
            return 200, {}
        if path == "/flush_cache":
            return 200, "Cache flushed."
        if path in ("/pause_generation", "/continue_generation"):
            self.paused = path == "/pause_generation"
            return 200, {}
        if path in ("/begin_weight_update", "/end_weight_update"):
            if not self.transactional:
                return 404, {"detail": "Not Found"}
            begin = path == "/begin_weight_update"
            if begin == self.in_transaction:
                return 400, {
                    "success": False,
                    "message": f"{path}: transaction state is {self.in_transaction}",
                }
            self.in_transaction = begin
            return 200, {"success": True, "message": ""}
        if path == "/update_weights_from_disk":
            try:
                b.load_dir(body["model_path"])
            except Exception as err:
                return 400, {
                    "success": False,
                    "message": f"{type(err).__name__}: {err}",
                    "num_paused_requests": 0,
                }
            b.weight_version = str(body.get("weight_version") or b.weight_version)
            return 200, {
                "success": True,
                "message": "Succeeded to update model weights.",
                "num_paused_requests": 0,
            }
        if path == "/update_weights_from_distributed":
            if self.transactional and not self.in_transaction:
                return 400, {
                    "success": False,
                    "message": "update outside begin_weight_update/end_weight_update",
                }
            named = []
            for name, dt, shape in zip(body["names"], body["dtypes"], body["shapes"], strict=True):
                t = self._broadcasts.get(timeout=10)
                if t.dtype != dtype_from_name(dt) or list(t.shape) != list(shape):
                    return 400, {
                        "success": False,
                        "message": f"{name}: broadcast {t.dtype}{list(t.shape)} != {dt}{shape}",
                    }
                named.append((name, t))
            b.load_named_tensors(named)
            b.weight_version = str(body.get("weight_version") or b.weight_version)
            return 200, {"success": True, "message": "Succeeded to update parameter online."}
        if path in ("/init_weights_update_group", "/destroy_weights_update_group"):
            return 200, {"success": True, "message": ""}
        if path in ("/release_memory_occupation", "/resume_memory_occupation"):
            return 200, {}
        if path == "/get_weights_by_name":
            return 200, b.get_weights_by_name(body["name"], int(body.get("truncate_size", 100)))
        if path == "/get_model_info":
            return 200, {"model_path": "fake", "weight_version": b.weight_version, "is_generation": True}
        return 404, {"detail": "Not Found"}

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = None
        with self._rec_lock:
            self.requests.append((method, path, body))
        status = self._fault_for(path)
        if status is not None:
            payload: Any = {"error": f"injected fault {status}"}
        elif body is None:
            status, payload = 400, {"error": "body is not JSON"}
        elif (
            self.admin_api_key
            and path.startswith(self.ADMIN_PATHS)
            and (handler.headers.get("Authorization") != f"Bearer {self.admin_api_key}")
        ):
            status, payload = 401, {"error": "admin API key required"}
        else:
            try:
                status, payload = self._route(path, body)
            except Exception as err:
                status, payload = 500, {"error": f"{type(err).__name__}: {err}"}
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        return Handler
