"""``MathAnswerReward``: equivalence of math answers (``1/2`` = ``0.5`` = ``\\frac{1}{2}``) with math-verify.

math-verify parses LaTeX and plain expressions into sympy and compares them. Its own timeout uses
``signal.alarm``, which works only in the main thread, and our rewards are scored from worker threads — and a
single sympy call can hold the GIL for minutes (``\\boxed{10^{10^{10}}}`` computes a 10-billion-digit integer),
so no thread-based timeout could interrupt it either. math-verify's timeouts are therefore off
(``parsing_timeout=None``, ``timeout_seconds=None``) and every check runs in a worker *process* (spawned
once, reused) that is killed and replaced when it overruns ``timeout_s``; the call then raises
``TimeoutError``, which the scorer counts (``rollout/reward_errors``) as a reward of 0.

Needs the ``[math]`` extra: ``pip install 'epr-lightning[math]'``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from epr_lightning.tasks.answers import extract_final_answer
from epr_lightning.tasks.base import Example, RewardFunction

#: seconds a worker process may take to start (import sympy and math-verify); not part of ``timeout_s``.
STARTUP_TIMEOUT_S = 120.0
#: checks a worker runs once at start-up: fractions, decimals, roots, tuples/intervals, sets, percentages, symbols.
WARM_UP = [
    ("\\frac{1}{2}", "\\boxed{0.5}"),
    ("2\\sqrt{2}", "$\\sqrt{8}$"),
    ("(1, 2)", "\\boxed{(2,1)}"),
    ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}"),
    ("10\\%", "Answer: 0.1"),
    ("x^2+1", "\\boxed{1 + x^2}"),
]


def _parse(text: str) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    return parse(text, extraction_config=config, parsing_timeout=None)


def check_answer(gold: str, completion: str) -> str:
    """``"correct"``, ``"wrong"`` or ``"none"`` (no answer found) — in this process, without any timeout."""
    from math_verify import verify

    wrapped = gold if ("$" in gold or "\\boxed" in gold) else f"\\boxed{{{gold}}}"
    target = _parse(wrapped) or _parse(gold)
    if not target:
        raise ValueError(f"math-verify cannot parse the reference answer {gold!r}")
    found = _parse(completion)
    if not found:
        return "none"
    return "correct" if verify(target, found, timeout_seconds=None) else "wrong"


def serve() -> None:
    """The worker process (``python -m epr_lightning.tasks.math_reward``): one JSON request per stdin line,
    ``[gold, completion]``, one JSON reply per stdout line, ``["ok", verdict]`` or ``["error", message]``."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns on every call that its timeout is off
    out = sys.stdout
    try:  # import and warm up everything a check may load lazily (outside any timeout)
        for gold, answer in WARM_UP:
            check_answer(gold, answer)
    except Exception as err:
        out.write(json.dumps(["error", f"{type(err).__name__}: {err}"]) + "\n")
        out.flush()
        return
    out.write(json.dumps(["ready", None]) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            gold, completion = json.loads(line)
            reply = ["ok", check_answer(gold, completion)]
        except Exception as err:
            reply = ["error", f"{type(err).__name__}: {err}"]
        out.write(json.dumps(reply) + "\n")
        out.flush()


class _Worker:
    """One verifier process (a plain subprocess, so nothing of the caller's ``__main__`` is re-imported);
    started on first use, killed after a timeout and started again."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""

    def start(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "epr_lightning.tasks.math_reward"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.buffer = b""
        status, detail = self._reply(STARTUP_TIMEOUT_S, starting=True)
        if status != "ready":
            self.stop()
            raise RuntimeError(f"the math-verify worker failed to start: {detail}")

    def _reply(self, timeout_s: float, starting: bool = False) -> list[Any]:
        """The next reply line, or ``TimeoutError`` after ``timeout_s`` (the worker is then killed)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.stop()  # the only way to stop a runaway sympy computation
                what = "start" if starting else "finish"
                raise (RuntimeError if starting else TimeoutError)(
                    f"math-verify did not {what} within {timeout_s} s"
                )
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the worker died
                self.stderr.seek(0)
                tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-1:] or [
                    "(no output)"
                ]
                self.stop()
                raise RuntimeError(f"the math-verify worker exited: {tail[0]}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def check(self, gold: str, completion: str, timeout_s: float) -> str:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps([gold, completion]) + "\n").encode())
        self.proc.stdin.flush()
        status, detail = self._reply(timeout_s)
        if status != "ok":
            raise ValueError(detail)
        return detail

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.stderr.close()
        self.proc = None


def _start_quietly(worker: _Worker) -> None:
    try:
        worker.start()
    except Exception:
        worker.stop()


def _restart(worker: _Worker, pool: queue.Queue[_Worker]) -> None:
    try:
        _start_quietly(worker)
    finally:
        pool.put(worker)


class MathAnswerReward(RewardFunction):
    """1.0 when the completion's final answer is mathematically equal to ``Example.answer``, else 0.0.

    The answer is found the way math-verify finds it: the last ``\\boxed{}`` first, then LaTeX (``$…$``) and
    plain expressions (``Answer: 1/2``, ``so x = 0.5``). The reference may be LaTeX or plain (``\\frac{1}{2}``,
    ``0.5``, ``(1, 2)``, ``\\sqrt{2}``). Intervals, sets, tuples, percentages and symbolic expressions compare
    as math-verify compares them.

    Args:
        timeout_s: per completion; a check that runs longer is killed and raises ``TimeoutError`` (reward 0,
            counted). Keep it below ``model.reward_timeout_s``.
        workers: verifier processes (the scorer runs up to 4 rewards at once; each process holds sympy, ~150 MB).
        format_bonus: reward for a wrong answer that is at least in ``\\boxed{}`` (shaping; 0 keeps it binary).
        max_chars: only the completion's last ``max_chars`` characters are parsed.
    """

    def __init__(
        self, timeout_s: float = 3.0, workers: int = 4, format_bonus: float = 0.0, max_chars: int = 4000
    ) -> None:
        if importlib.util.find_spec("math_verify") is None:
            raise ModuleNotFoundError("MathAnswerReward needs math-verify: pip install 'epr-lightning[math]'")
        if not timeout_s > 0:
            raise ValueError(f"MathAnswerReward.timeout_s must be > 0, got {timeout_s}")
        if workers < 1:
            raise ValueError(f"MathAnswerReward.workers must be >= 1, got {workers}")
        if not 0.0 <= format_bonus < 1.0:
            raise ValueError(f"MathAnswerReward.format_bonus must be in [0, 1), got {format_bonus}")
        self.timeout_s, self.workers, self.format_bonus, self.max_chars = (
            timeout_s,
            workers,
            format_bonus,
            max_chars,
        )
        self._pool: queue.Queue[_Worker] | None = None
        self._lock = threading.Lock()

    def _idle(self) -> queue.Queue[_Worker]:
        with self._lock:
            if self._pool is None:
                self._pool = queue.Queue()
                for _ in range(self.workers):
                    self._pool.put(_Worker())
            return self._pool

    def warm_up(self) -> None:
        """Start every worker process now (each takes ~1-3 s to import sympy), in parallel."""
        pool = self._idle()
        taken = [pool.get() for _ in range(self.workers)]
        try:
            threads = [threading.Thread(target=_start_quietly, args=(w,)) for w in taken if w.proc is None]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for w in taken:
                pool.put(w)

    def verdict(self, gold: str, completion: str) -> str:
        """``"correct"``, ``"wrong"`` or ``"none"``, within ``timeout_s`` (else ``TimeoutError``)."""
        pool = self._idle()
        worker = pool.get()
        try:
            result = worker.check(gold, completion[-self.max_chars :], self.timeout_s)
        except TimeoutError:  # restart the killed worker in the background, so the next call finds it ready
            threading.Thread(
                target=_restart, args=(worker, pool), daemon=True, name="math-verify-restart"
            ).start()
            raise
        except BaseException:
            pool.put(worker)
            raise
        pool.put(worker)
        return result

    def __call__(self, example: Example, completion: str) -> float:
        if example.answer is None or not str(example.answer).strip():
            raise ValueError(f"example {example.id!r} has no reference answer")
        verdict = self.verdict(str(example.answer), completion)
        if verdict == "correct":
            return 1.0
        boxed = extract_final_answer(completion).source == "boxed"
        return self.format_bonus if boxed else 0.0

    def extract_answer(self, completion: str) -> str | None:
        found = extract_final_answer(completion)
        return " ".join(found.text.split()) if found.text and found.source != "fallback" else None

    def close(self) -> None:
        """Stop the worker processes (they are daemons: they also end with this process)."""
        with self._lock:
            pool, self._pool = self._pool, None
        while pool is not None and not pool.empty():
            pool.get().stop()

    def __getstate__(self) -> dict[str, Any]:  # processes, pipes and locks stay with their owner
        state = dict(self.__dict__)
        state["_pool"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


if __name__ == "__main__":
    serve()
