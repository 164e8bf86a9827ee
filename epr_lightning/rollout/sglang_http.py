"""JSON over HTTP to SGLang servers with the standard library only: bounded retries and exponential backoff.

Connection errors, timeouts and 5xx answers are retried (``1 + max_retries`` tries, sleeping
``backoff_s · 2^(k−1)`` before try k+1); a 4xx answer raises at once. Both failures raise ``SGLangHTTPError``
(``status`` = the HTTP code, or None when no server answered). Used by ``SGLangServerEngine.request``.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


class SGLangHTTPError(RuntimeError):
    """A server answered with an HTTP error status (``status``), or could not be reached (``status=None``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def request_json(
    url: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    method: str = "POST",
    timeout_s: float = 600.0,
    max_retries: int = 3,
    backoff_s: float = 1.0,
    api_key: str | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> Any:
    """One JSON request to ``url + path``; the decoded JSON answer (raw text when it is not JSON, None if empty).

    ``api_key`` is sent as ``Authorization: Bearer``; ``sleep`` waits between retries (tests count instead).
    """
    data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last: str = ""
    for attempt in range(max_retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        req = urllib.request.Request(url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            if err.code < 500:
                raise SGLangHTTPError(
                    f"SGLang server {url}: {method} {path} → HTTP {err.code}: {detail}", err.code
                ) from err
            last = f"HTTP {err.code}: {detail}"
            continue
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as err:
            last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            continue
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return raw
    raise SGLangHTTPError(
        f"SGLang server {url} unreachable: {method} {path} failed {max_retries + 1} times; last error: {last}"
    )
