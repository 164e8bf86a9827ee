"""Timers for tools/bench.py: the step and monitoring timers (Lightning callbacks), the per-stage tally of a
training step, and a resident-set sampler. Bookkeeping only: the benchmarks print what these measure."""

from __future__ import annotations

import statistics
import time
from typing import Any


def timed_call(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


class StepTimer:
    """Lightning callback (put first) timing ``training_step`` and the monitoring callbacks' hooks."""

    def __init__(self, monitors: list[Any], stages: StageTimer | None = None) -> None:
        import lightning.pytorch as pl

        outer = self

        class _Timer(pl.Callback):
            def on_train_batch_start(self, *a: Any) -> None:
                outer._t0 = time.perf_counter()
                if stages is not None:
                    stages.current = {}

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                outer.steps.append(time.perf_counter() - outer._t0)
                if stages is not None:
                    stages.end_step()
                outer.last_batch = batch
                outer.monitor_time.append(0.0)
                skipped = trainer.callback_metrics.get("train/skipped_rows_frac")
                outer.skipped_rows.append(float("nan") if skipped is None else float(skipped))

        self.callback = _Timer()
        self.steps: list[float] = []
        self.monitor_time: list[float] = []
        self.skipped_rows: list[float] = []  # per step: the share of rows left out of the gradient pass
        self.last_batch: Any = None
        for cb in monitors:
            original = cb.on_train_batch_end

            def wrapped(*a: Any, _orig=original, **k: Any) -> None:
                t0 = time.perf_counter()
                _orig(*a, **k)
                self.monitor_time[-1] += time.perf_counter() - t0

            cb.on_train_batch_end = wrapped


class StageTimer:
    """Wall time per stage of each training step, by wrapping the module's stage functions (bench only).

    ``wrap(owner, attr, name)`` times every call of ``owner.attr`` under ``name`` (a function of the call's
    arguments, or a string); ``end_step`` closes a step's tally.
    """

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []

    def wrap(self, owner: Any, attr: str, name: Any) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                stage = name if isinstance(name, str) else name(args, kwargs)
                self.current[stage] = self.current.get(stage, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed)

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = {}

    def medians(self) -> dict[str, float]:
        """Median seconds per stage over the steps after the first (which warms up)."""
        steps = self.steps[1:] or self.steps
        names = dict.fromkeys(k for step in steps for k in step)
        return {k: statistics.median(step.get(k, 0.0) for step in steps) for k in names}


STAGES = ("generate", "pi_old (no-grad pass)", "forward (grad pass)", "backward + clip + step", "push weights",
          "record + logging")  # fmt: skip


def time_stages(module: Any, timer: StageTimer) -> None:
    """Wrap the stages of ``module``'s iteration (``RLModule.training_step`` and ``PolicyUpdate``)."""
    import epr_lightning.module as module_file
    import epr_lightning.update as update_file

    timer.wrap(module, "rollout", "generate")
    timer.wrap(
        module.policy_update, "policy_pass",
        lambda a, k: "forward (grad pass)" if k.get("grad") else "pi_old (no-grad pass)",
    )  # fmt: skip
    timer.wrap(update_file, "optimizer_step", "backward + clip + step")
    timer.wrap(module.engine, "push_weights", "push weights")
    timer.wrap(module_file, "build_record", "record + logging")
    timer.wrap(module, "log_iteration", "record + logging")


class PeakRSS:
    """The resident set of this process, polled every millisecond in a thread; ``peak`` is its maximum."""

    def __init__(self) -> None:
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.now()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.001)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())
