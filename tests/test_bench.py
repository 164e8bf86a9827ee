"""tools/bench.py and its helpers (whose timings are benchmarks, never asserted): the per-stage tally of a step,
the fp32/bf16 summary table, and one tiny run printing both precisions' ratios to the raw loop."""

from __future__ import annotations

import math
import re
import types

from conftest import load_tool

bench_timers = load_tool("bench_timers")
bench = load_tool("bench")


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


def test_summary_has_a_row_per_precision_with_ratio_gap_and_speed_up_against_fp32():
    results = {
        "float32": {"step_s": 2.0, "step_ratio": 1.25, "gap_gib": 0.1},
        "bfloat16": {"step_s": 0.5, "step_ratio": 0.8, "gap_gib": 0.5},
    }
    rows = bench.summary_rows(results)
    assert [r["precision"] for r in rows] == ["float32", "bfloat16"]
    assert [(r["step_ratio"], r["gap_gib"], r["speedup"]) for r in rows] == [
        (1.25, 0.1, 1.0),
        (0.8, 0.5, 4.0),
    ]
    lines = bench.format_summary(rows)
    assert lines[0].startswith("[summary]")
    assert lines[2].split() == ["float32", "1.250", "OVER", "+0.100", "GiB", "OK", "1.00"]
    assert lines[3].split() == ["bfloat16", "0.800", "OK", "+0.500", "GiB", "OVER", "4.00"]
    # a skipped benchmark or no fp32 run: n/a, not a made-up number
    (row,) = bench.summary_rows({"bfloat16": {"gap_gib": -0.01}})
    assert math.isnan(row["step_ratio"]) and math.isnan(row["speedup"])
    assert bench.format_summary([row])[2].split() == ["bfloat16", "n/a", "-0.010", "GiB", "OK", "n/a"]


SUMMARY_ROW = re.compile(r"^\s+(float32|bfloat16)\s+(\S+) (?:OK|OVER)\s+([+-]\S+) GiB (?:OK|OVER)\s+(\S+)$")


TINY_RUN = "--model tiny --iterations 2 --prompts 1 --generations 2 --new-tokens 4".split()


def test_one_tiny_run_prints_both_precisions_against_the_raw_loop(capsys):
    bench.main([*TINY_RUN, "--skip-memory"])  # the exit status says whether the goals are met: not asserted
    out = capsys.readouterr().out
    for precision in ("float32", "bfloat16"):
        assert f"[step] model=tiny precision={precision}" in out
        assert f"[step memory] model=tiny precision={precision}" in out
    assert out.count("raw loop (transformers + torch), by stage") == 2
    assert out.count("step ratio = our step / raw loop step") == 2
    # what differs in the work is printed next to the ratio: tokens sampled and rows left out of the update
    work = re.findall(
        r"the raw loop samples (\d+) tokens a step .*, ours (\d+) .*; (\d+)% of our rows skip", out
    )
    assert len(work) == 2, out
    for raw_tokens, our_tokens, skipped in work:
        assert 0 < int(our_tokens) <= int(raw_tokens) and 0 <= int(skipped) <= 100
    rows = {m[1]: m for line in out.splitlines() if (m := SUMMARY_ROW.match(line))}
    assert set(rows) == {"float32", "bfloat16"}, out
    for _, ratio, gap, speedup in (m.groups() for m in rows.values()):
        assert math.isfinite(float(gap))
        assert all(math.isfinite(float(x)) and float(x) > 0 for x in (ratio, speedup))
    assert float(rows["float32"][4]) == 1.0


def test_every_row_makes_our_update_run_every_row_as_the_raw_loop_does(capsys):
    bench.main([*TINY_RUN, "--precisions", "float32", "--skip-memory", "--skip-step-memory", "--every-row"])
    out = capsys.readouterr().out
    assert re.findall(r"; (\d+)% of our rows skip the gradient pass", out) == ["0"], out
