"""tools/bench_timers.py, the bookkeeping of tools/bench.py (whose timings are benchmarks, never asserted): the
per-stage tally of a step."""

from __future__ import annotations

import types

from conftest import load_tool

bench_timers = load_tool("bench_timers")


def test_stage_timer_tallies_each_stage_per_step_and_skips_the_warm_up_step(monkeypatch):
    ticks = iter([0.0, 1.0, 1.0, 3.0, 10.0, 10.5, 11.0, 11.25, 20.0, 21.0])
    monkeypatch.setattr(bench_timers, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    owner = types.SimpleNamespace(passes=lambda x, grad=False: x * 2)
    timer = bench_timers.StageTimer()
    timer.wrap(owner, "passes", lambda args, kwargs: "grad" if kwargs.get("grad") else "no-grad")
    assert owner.passes(3, grad=True) == 6 and owner.passes(4) == 8  # the wrapped call's result is kept
    timer.end_step()
    owner.passes(1, grad=True)
    owner.passes(1, grad=True)  # two calls of one stage in a step add up
    timer.end_step()
    owner.passes(1)
    timer.end_step()
    assert timer.steps == [{"grad": 1.0, "no-grad": 2.0}, {"grad": 0.75}, {"no-grad": 1.0}]
    # the first step warms up; a stage missing from a step counts 0 there
    assert timer.medians() == {"grad": 0.375, "no-grad": 0.5}
