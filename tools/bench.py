"""Benchmarks, printed as ratios measured within one run (machines are noisy; nothing here is a test).

For each precision of ``--precisions`` (default: ``float32 bfloat16``; bf16 = ``model.compute_dtype: bfloat16``,
bf16 working weights with fp32 master weights, the raw loop the same way):

1. Step time (``bench_step.py``): our full training step against a raw loop doing the same work in plain
   transformers + torch — ``generate`` of the same prompts × samples × exactly the same number of new tokens, one
   forward computing the fp32 log-softmax of the completion tokens, backward, grad clip, AdamW step — both by
   stage: the raw loop's generate, log-prob forward, backward, clip + optimizer step; our step's generate, the
   no-grad π_old pass, the gradient passes' forward, backward + clip + optimizer step, weight push, record +
   logging and the rest (Lightning, scoring, prompt encoding). Printed: ``step ratio = our step / raw loop
   step`` (goal: ≤ 1.00), medians over the steps after the first.
2. Monitoring overhead: time spent in the monitoring callbacks (entropy, diversity, precision, samples) at
   their default settings as a share of the step time (goal: ≤ 5%).
3. Step memory (``bench_memory.py``): the peak resident set of ``--iterations`` training steps of the app
   (the monitoring callbacks of 2. on) next to the raw loop in the same precision, each in a fresh subprocess,
   above the RSS right after the imports, up to the end of the first rollout and over the whole run (goal for
   both: the app's peak ≤ the raw loop's + 0.25 GiB).

Then a summary with a row per precision: the step ratio, the whole-run RSS gap, and the speed-up of our step
over its float32 step (fp32 step / this precision's step).

4. Log-prob memory (once; ``bench_memory.py``): peak memory of the chunked fp32 log-prob + entropy pass
   (forward and backward) against materialising full fp32 logits, at batch×length = 8192 tokens and a 49,152
   vocabulary (goal: ≤ 1/4).

The step lines also say how the work differs: tokens sampled (the raw loop's rows run to the longest
completion, ours end at EOS; the decoding steps are the same) and the share of our rows that skip the gradient
pass (advantage 0: the same update). ``--every-row`` makes our update run every row, as the raw loop does, for
a comparison of the same update work (step time and step memory).

Usage: ``python tools/bench.py [--model tiny|smollm2] [--iterations 4] [--prompts 4] [--generations 4]
[--new-tokens 48] [--precisions float32 bfloat16] [--every-row] [--skip-step] [--skip-step-memory]
[--skip-memory]`` (``--compute-dtype X`` = ``--precisions X``). The exit status is 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_memory import bench_memory, bench_step_memory, step_memory_child  # noqa: E402
from bench_step import RAW_STAGES, StepWork, bench_step  # noqa: E402
from bench_timers import STAGES  # noqa: E402

STEP_RATIO_GOAL = 1.00  # our step / the raw loop's step
RSS_GAP_GOAL_GIB = 0.25  # the app's peak RSS - the raw loop's
MONITOR_SHARE_GOAL = 0.05
LOGPROB_MEMORY_GOAL = 0.25


def verdict(ok: bool) -> str:
    return "OK" if ok else "OVER"


def summary_rows(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per precision (in ``results``' order) from its ``step_s``, ``step_ratio`` and ``gap_gib`` (each
    may be missing: a skipped benchmark): the step ratio, the whole-run RSS gap (GiB) and the speed-up of our
    step over its float32 step (NaN where a number is missing)."""
    fp32_step = results.get("float32", {}).get("step_s", math.nan)
    return [
        {
            "precision": precision,
            "step_ratio": r.get("step_ratio", math.nan),
            "gap_gib": r.get("gap_gib", math.nan),
            "speedup": fp32_step / r["step_s"] if "step_s" in r else math.nan,
        }
        for precision, r in results.items()
    ]


def format_summary(rows: list[dict[str, Any]]) -> list[str]:
    """The summary table's lines, a row per precision; n/a for a missing number."""

    def cell(value: float, text: str, goal_ok: bool | None = None) -> str:
        if math.isnan(value):
            return "n/a"
        return text if goal_ok is None else f"{text} {verdict(goal_ok)}"

    lines = [
        f"[summary] {'precision':<10} {'step ratio':<14} {'RSS gap':<16} speed-up of our step",
        f"          {'(goal)':<10} {'(<= 1.00)':<14} {'(<= +0.25 GiB)':<16} (fp32 step / this step)",
    ]
    for r in rows:
        ratio = cell(r["step_ratio"], f"{r['step_ratio']:.3f}", r["step_ratio"] <= STEP_RATIO_GOAL)
        gap = cell(r["gap_gib"], f"{r['gap_gib']:+.3f} GiB", r["gap_gib"] <= RSS_GAP_GOAL_GIB)
        speedup = cell(r["speedup"], f"{r['speedup']:.2f}")
        lines.append(f"          {r['precision']:<10} {ratio:<14} {gap:<16} {speedup}")
    return lines


def print_step(args: argparse.Namespace, precision: str, r: dict[str, float]) -> bool:
    print(
        f"[step] model={args.model} precision={precision} prompts={args.prompts}x{args.generations} "
        f"new_tokens<={args.new_tokens} (generated per step: {r['new_tokens']:.0f})"
    )
    print("  raw loop (transformers + torch), by stage (median over the steps after the first):")
    for name in RAW_STAGES:
        print(f"    {name:<24}{r['raw:' + name]:8.3f} s")
    print(f"    {'total':<24}{r['raw_step_s']:8.3f} s")
    print("  our training step, by stage:")
    for name in (*STAGES, "other"):
        print(f"    {name:<24}{r['stage:' + name]:8.3f} s")
    print(f"    {'total':<24}{r['step_s']:8.3f} s")
    ratio_ok = r["step_ratio"] <= STEP_RATIO_GOAL
    print(
        f"  step ratio = our step / raw loop step {r['step_ratio']:.3f}   (goal <= 1.00) {verdict(ratio_ok)}"
    )
    print(
        f"  work: the raw loop samples {r['new_tokens']:.0f} tokens a step (every row to the longest completion), "
        f"ours {r['our_tokens']:.0f} (ending at EOS); {100 * r['skipped_rows_frac']:.0f}% of our rows skip the "
        "gradient pass (advantage 0: the same update)"
    )
    monitor_ok = r["monitor_share"] <= MONITOR_SHARE_GOAL
    print(
        f"  monitoring          {r['monitor_s']:.3f} s = {100 * r['monitor_share']:.1f}% of the step "
        f"(goal <= 5%) {verdict(monitor_ok)}"
    )
    return ratio_ok and monitor_ok


def print_step_memory(args: argparse.Namespace, precision: str, r: dict[str, float]) -> bool:
    print(
        f"[step memory] model={args.model} precision={precision} {args.iterations} iterations, "
        "peak RSS above the post-import RSS"
    )
    print("                      first rollout   whole run")
    print(f"  raw loop            {r['raw_rollout_peak_bytes']:9.3f} GiB {r['raw_peak_bytes']:9.3f} GiB")
    print(f"  our training step   {r['app_rollout_peak_bytes']:9.3f} GiB {r['app_peak_bytes']:9.3f} GiB")
    gaps_ok = max(r["rollout_gap_gib"], r["gap_gib"]) <= RSS_GAP_GOAL_GIB
    print(
        f"  gap                 {r['rollout_gap_gib']:+9.3f} GiB {r['gap_gib']:+9.3f} GiB   (goal <= +0.25) "
        f"{verdict(gaps_ok)}"
    )
    return gaps_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="tiny = 4-layer random Llama with a 49k vocabulary; smollm2 = the packaged model",
    )
    parser.add_argument("--iterations", type=int, default=StepWork.iterations)
    parser.add_argument("--prompts", type=int, default=StepWork.prompts)
    parser.add_argument("--generations", type=int, default=StepWork.generations)
    parser.add_argument("--new-tokens", type=int, default=StepWork.new_tokens)
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["float32", "bfloat16"],
        default=["float32", "bfloat16"],
        help="model.compute_dtype of each step and step-memory run (the raw loop in the same precision)",
    )
    parser.add_argument(
        "--compute-dtype",
        choices=["float32", "bfloat16"],
        help="one precision only (the same as --precisions X)",
    )
    parser.add_argument(
        "--every-row",
        action="store_true",
        help="our update takes the gradient pass on every row, as the raw loop does (by default it leaves out "
        "rows whose advantage is 0: the same update, less work)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-step-memory", action="store_true")
    parser.add_argument("--step-memory-child", choices=["raw", "app"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    precisions = list(dict.fromkeys([args.compute_dtype] if args.compute_dtype else args.precisions))
    from epr_lightning.cli import _quiet_libraries

    _quiet_libraries()

    def work(precision: str) -> StepWork:
        return StepWork(args.model, args.iterations, args.prompts, args.generations, args.new_tokens,
                        precision, args.every_row)  # fmt: skip

    if args.step_memory_child:
        step_memory_child(args.step_memory_child, work(precisions[0]))
        return 0
    ok = True
    results: dict[str, dict[str, float]] = {}
    for precision in precisions:
        results[precision] = {}
        if not args.skip_step:
            r = bench_step(work(precision))
            ok &= print_step(args, precision, r)
            results[precision].update(r)
        if not args.skip_step_memory:
            r = bench_step_memory(work(precision))
            ok &= print_step_memory(args, precision, r)
            results[precision]["gap_gib"] = r["gap_gib"]
    if not (args.skip_step and args.skip_step_memory):
        print("\n".join(format_summary(summary_rows(results))))
    if not args.skip_memory:
        m = bench_memory()
        print("[memory] 8192 tokens x 49152 vocab, hidden 576, forward+backward of log-probs and entropy")
        print(f"  full fp32 logits    {m['naive_peak_mb']:.0f} MiB")
        print(f"  chunked fp32 pass   {m['chunked_peak_mb']:.0f} MiB")
        memory_ok = m["memory_ratio"] <= LOGPROB_MEMORY_GOAL
        print(f"  ratio               {m['memory_ratio']:.3f}   (goal <= 0.25) {verdict(memory_ok)}")
        ok &= memory_ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
