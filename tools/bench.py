"""Benchmarks, printed as ratios measured within one run (machines are noisy; nothing here is a test).

1. Step overhead: our full training step vs raw ``generate`` + one raw forward/backward over the same tokens
   (goal: step / (generate + fwd/bwd) ≤ 1.10), and the step's time by stage (generate, the no-grad π_old
   pass, the gradient passes' forward, backward + clip + optimizer step, weight push, record + logging, and
   the rest: Lightning, scoring, prompt encoding).
2. Monitoring overhead: time spent in the monitoring callbacks (entropy, diversity, precision, samples) at
   their default settings as a share of the step time (goal: ≤ 5%).
3. Step memory: the peak resident set of ``--iterations`` training steps of the app (``RLModule`` in a
   ``Trainer``, the monitoring callbacks of 2. on) next to a raw loop doing the same work with the same model,
   prompts and settings — transformers ``generate``, the same fp32 chunked log-prob pass (so both compute the
   same numbers and the difference is what the app adds around them), backward, grad clip, AdamW step.
   Each runs in a fresh subprocess after the same imports; reported is its peak RSS (sampled every 1 ms) above
   the RSS right after the imports, up to the end of the first rollout (model load + generation) and over the
   whole run (goal for both: the app's peak ≤ the raw loop's + 0.25 GiB).
4. Log-prob memory: peak memory of the chunked fp32 log-prob + entropy pass (forward and backward) against
   materialising full fp32 logits, at batch×length = 8192 tokens and a 49,152 vocabulary (goal: ≤ 1/4).
   Each variant runs in a fresh subprocess and reports its peak growth of the resident set over the
   baseline (CPU, sampled every 0.5 ms) or its peak CUDA allocation.

Usage: ``python tools/bench.py [--model tiny|smollm2] [--iterations 4] [--compute-dtype float32|bfloat16]
[--skip-step] [--skip-step-memory] [--skip-memory]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_timers import STAGES, PeakRSS, StageTimer, StepTimer, time_stages, timed_call  # noqa: E402


# ----------------------------------------------------------------------------------------- step overhead
def bench_step(
    model: str,
    iterations: int,
    prompts: int,
    generations: int,
    new_tokens: int,
    compute_dtype: str = "float32",
) -> dict[str, float]:
    import lightning.pytorch as pl

    from epr_lightning.callbacks import DiversityMonitor, EntropyTracker, PrecisionAudit, SampleLogger
    from epr_lightning.data import PromptDataModule
    from epr_lightning.module import RLModule
    from epr_lightning.rollout.base import SamplingParams
    from epr_lightning.rollout.hf import left_pad
    from epr_lightning.tasks.arithmetic import ArithmeticTask

    module = RLModule(
        policy=_policy_source(model),
        sampling=SamplingParams(max_new_tokens=new_tokens, seed=0),
        num_generations=generations,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-6),
        compute_dtype=compute_dtype,  # type: ignore[arg-type]
    )
    data = PromptDataModule(
        ArithmeticTask(num_train=256, num_val=0), prompts_per_step=prompts, batches_per_epoch=iterations
    )
    monitors = [EntropyTracker(), DiversityMonitor(), PrecisionAudit(), SampleLogger()]
    stages = StageTimer()
    time_stages(module, stages)
    timer = StepTimer(monitors, stages)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer.callback, *monitors],
    )
    trainer.fit(module, datamodule=data)

    # Raw baselines on the same prompts and the same policy, same sampling settings.
    prompt_ids = module.admit_prompts(timer.last_batch).ids
    rollout = module.engine.generate(prompt_ids, module.sampling, generations, model=module.policy)
    tokens = rollout.to_batch(module.pad_id)
    policy_model = module.policy
    ids, attn = left_pad([p for p in prompt_ids for _ in range(generations)], module.pad_id)

    def raw_generate() -> None:
        with torch.no_grad():
            policy_model.generate(
                input_ids=ids,
                attention_mask=attn,
                do_sample=True,
                top_k=0,
                max_new_tokens=new_tokens,
                pad_token_id=module.pad_id,
                eos_token_id=module.tokenizer.eos_token_id,
            )

    def raw_fwd_bwd() -> None:
        logits = policy_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens.input_ids[:, 1:, None]).squeeze(-1)
        loss = -(logp * tokens.loss_mask[:, 1:]).sum() / tokens.loss_mask.sum()
        loss.backward()
        policy_model.zero_grad(set_to_none=True)

    gen = statistics.median(timed_call(raw_generate) for _ in range(3))
    fb = statistics.median(timed_call(raw_fwd_bwd) for _ in range(3))
    steps = timer.steps[1:] or timer.steps  # the first iteration warms up
    step = statistics.median(steps)
    monitor = statistics.median(timer.monitor_time[1:] or timer.monitor_time)
    per_stage = stages.medians()
    return {
        **{f"stage:{k}": per_stage.get(k, 0.0) for k in STAGES},
        "stage:other": step - sum(per_stage.get(k, 0.0) for k in STAGES),
        "tokens_generated": float(tokens.loss_mask.sum()),
        "raw_generate_s": gen,
        "raw_fwd_bwd_s": fb,
        "step_s": step,
        "step_ratio": step / (gen + fb),
        "monitor_s": monitor,
        "monitor_share": monitor / step,
    }


# ----------------------------------------------------------------------------------------- step memory
def _policy_source(model: str) -> Any:
    from epr_lightning.models import PackagedSmolLM2, TinyModel

    if model == "smollm2":
        return PackagedSmolLM2()
    return TinyModel(hidden_size=256, intermediate_size=512, num_layers=4, vocab_size=49152)


def _raw_policy(model: str) -> tuple[Any, Any]:
    """The raw loop's model, loaded with transformers alone from the HF folder the app loads (SmolLM2: the cached
    conversion of the packaged GGUF, which the parent process made before either child started)."""
    source = _policy_source(model)
    if model != "smollm2":
        return source.build()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from epr_lightning.models import convert_gguf

    folder = convert_gguf(Path(source.path), source.gguf_file)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return policy.train(), tokenizer


def step_memory_child(
    which: str, model: str, iterations: int, prompts: int, generations: int, new_tokens: int
) -> None:
    """Run ``iterations`` steps of the raw loop or the app and print its peak RSS above the post-import RSS."""
    import lightning.pytorch as pl

    from epr_lightning.data import PromptDataModule
    from epr_lightning.logprobs import score_tokens
    from epr_lightning.models import disable_dropout, encode_prompts
    from epr_lightning.module import RLModule
    from epr_lightning.rollout.base import SamplingParams
    from epr_lightning.rollout.hf import left_pad
    from epr_lightning.tasks.arithmetic import ArithmeticTask

    torch.manual_seed(0)
    data = PromptDataModule(
        ArithmeticTask(num_train=256, num_val=0), prompts_per_step=prompts, batches_per_epoch=iterations
    )
    meter = PeakRSS()
    rollout_peak: list[int] = []

    def first_rollout_done() -> None:
        if not rollout_peak:
            rollout_peak.append(max(meter.peak, meter.now()))

    if which == "app":
        from epr_lightning.callbacks import DiversityMonitor, EntropyTracker, PrecisionAudit, SampleLogger

        module = RLModule(
            policy=_policy_source(model),
            sampling=SamplingParams(max_new_tokens=new_tokens, seed=0),
            num_generations=generations,
            optimizer=lambda p: torch.optim.AdamW(p, lr=1e-6, weight_decay=0.0),
        )
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=[EntropyTracker(), DiversityMonitor(), PrecisionAudit(), SampleLogger()],
        )  # fmt: skip
        generate = module.engine.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            out = generate(*args, **kwargs)
            first_rollout_done()
            return out

        module.engine.generate = timed_generate  # type: ignore[method-assign]
        trainer.fit(module, datamodule=data)
    else:
        policy, tok = _raw_policy(model)
        disable_dropout(policy)
        opt = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad], lr=1e-6, weight_decay=0.0
        )
        pad = tok.pad_token_id
        data.setup("fit")
        for batch in data.train_dataloader():
            ids = encode_prompts(tok, [e.prompt for e in batch], getattr(data.task, "system_prompt", None))
            inp, attn = left_pad([p for p in ids for _ in range(generations)], pad)
            width = inp.shape[1]
            policy.eval()
            with torch.no_grad():
                seq = policy.generate(
                    input_ids=inp, attention_mask=attn, do_sample=True, top_k=0, max_new_tokens=new_tokens,
                    pad_token_id=pad, eos_token_id=tok.eos_token_id,
                )  # fmt: skip
            policy.train()
            first_rollout_done()
            done = torch.cumsum((seq[:, width:] == tok.eos_token_id).long(), dim=1)
            completion = ((done == 0) | ((done == 1) & (seq[:, width:] == tok.eos_token_id))).long()
            full_attn = torch.cat([attn, completion], dim=1)
            score = torch.cat([torch.zeros_like(attn), completion], dim=1).float()
            logp = score_tokens(policy, seq, full_attn, score).logp
            loss = -(logp * score).sum() / score.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
    peak = meter.stop()
    print(json.dumps({"rollout_peak_bytes": rollout_peak[0] - meter.base, "peak_bytes": peak - meter.base}))


def bench_step_memory(
    model: str, iterations: int, prompts: int, generations: int, new_tokens: int
) -> dict[str, float]:
    _policy_source(
        model
    ).build()  # SmolLM2: make the one-time GGUF conversion here, outside both measurements
    out = {}
    for which in ("raw", "app"):
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--step-memory-child", which, "--model", model,
             "--iterations", str(iterations), "--prompts", str(prompts), "--generations", str(generations),
             "--new-tokens", str(new_tokens)],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"step-memory child {which!r} failed:\n{proc.stderr[-3000:]}")
        out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = {f"{w}_{k}": v / 2**30 for w, d in out.items() for k, v in d.items()}
    return {
        **gib,
        "rollout_gap_gib": gib["app_rollout_peak_bytes"] - gib["raw_rollout_peak_bytes"],
        "gap_gib": gib["app_peak_bytes"] - gib["raw_peak_bytes"],
    }


# ----------------------------------------------------------------------------------------- log-prob memory
MEMORY_CHILD = r"""
import json, os, sys, threading, time, torch
from epr_lightning.logprobs import chunked_logprobs_entropy
variant, tokens, vocab, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
h = torch.empty(tokens, hidden, device=dev).normal_(0, 0.1).requires_grad_(True)
w = torch.empty(vocab, hidden, device=dev).normal_(0, 0.02).requires_grad_(True)
t = torch.randint(0, vocab, (tokens,), device=dev)
h.grad = torch.zeros_like(h); w.grad = torch.zeros_like(w)  # both variants need them: inside the baseline
page = os.sysconf("SC_PAGE_SIZE")
def rss():  # current resident set (ru_maxrss is a process-lifetime high-water mark: useless as a baseline)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak = [0]; stop = threading.Event()
def poll():
    while not stop.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.0005)
if dev == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = rss(); poller = threading.Thread(target=poll, daemon=True); poller.start()
if variant == "naive":
    logits = (h @ w.T).float()
    logz = torch.logsumexp(logits, -1)
    lp = logits.gather(-1, t[:, None]).squeeze(-1) - logz
    ent = logz - (torch.softmax(logits, -1) * logits).sum(-1)
else:
    lp, ent = chunked_logprobs_entropy(h, t, w, chunk_size=1024)
(lp.sum() + 0.01 * ent.sum()).backward()
if dev == "cuda":
    used = torch.cuda.max_memory_allocated() - base
else:
    peak[0] = max(peak[0], rss()); stop.set(); poller.join(); used = peak[0] - base
print(json.dumps({"peak_bytes": used, "device": dev}))
"""


def bench_memory(tokens: int = 8192, vocab: int = 49152, hidden: int = 576) -> dict[str, float]:
    out = {}
    for variant in ("naive", "chunked"):
        proc = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, variant, str(tokens), str(vocab), str(hidden)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
    return {
        "naive_peak_mb": out["naive"] / 2**20,
        "chunked_peak_mb": out["chunked"] / 2**20,
        "memory_ratio": out["chunked"] / out["naive"],
    }


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
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument(
        "--compute-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the step benchmark's model.compute_dtype (bfloat16: the raw baselines run on the same bf16 weights)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-step-memory", action="store_true")
    parser.add_argument("--step-memory-child", choices=["raw", "app"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from epr_lightning.cli import _quiet_libraries

    _quiet_libraries()
    if args.step_memory_child:
        step_memory_child(
            args.step_memory_child,
            args.model,
            args.iterations,
            args.prompts,
            args.generations,
            args.new_tokens,
        )
        return 0
    ok = True
    if not args.skip_step:
        r = bench_step(
            args.model, args.iterations, args.prompts, args.generations, args.new_tokens, args.compute_dtype
        )
        print(
            f"[step] model={args.model} prompts={args.prompts}x{args.generations} new_tokens<={args.new_tokens} "
            f"tokens={r['tokens_generated']:.0f} compute_dtype={args.compute_dtype}"
        )
        print(f"  raw generate        {r['raw_generate_s']:.3f} s")
        print(f"  raw forward+backward{r['raw_fwd_bwd_s']:8.3f} s")
        print(f"  our training step   {r['step_s']:.3f} s, by stage (median over the steps after the first):")
        for name in (*STAGES, "other"):
            print(f"    {name:<24}{r['stage:' + name]:8.3f} s")
        print(
            f"  ratio step/(gen+fb) {r['step_ratio']:.3f}   (goal <= 1.10) {'OK' if r['step_ratio'] <= 1.10 else 'OVER'}"
        )
        print(
            f"  monitoring          {r['monitor_s']:.3f} s = {100 * r['monitor_share']:.1f}% of the step "
            f"(goal <= 5%) {'OK' if r['monitor_share'] <= 0.05 else 'OVER'}"
        )
        ok &= r["step_ratio"] <= 1.10 and r["monitor_share"] <= 0.05
    if not args.skip_step_memory:
        r = bench_step_memory(args.model, args.iterations, args.prompts, args.generations, args.new_tokens)
        print(
            f"[step memory] model={args.model} {args.iterations} iterations, peak RSS above the post-import RSS"
        )
        print("                      first rollout   whole run")
        print(f"  raw loop            {r['raw_rollout_peak_bytes']:9.3f} GiB {r['raw_peak_bytes']:9.3f} GiB")
        print(f"  our training step   {r['app_rollout_peak_bytes']:9.3f} GiB {r['app_peak_bytes']:9.3f} GiB")
        gaps_ok = max(r["rollout_gap_gib"], r["gap_gib"]) <= 0.25
        print(
            f"  gap                 {r['rollout_gap_gib']:+9.3f} GiB {r['gap_gib']:+9.3f} GiB   (goal <= 0.25) "
            f"{'OK' if gaps_ok else 'OVER'}"
        )
        ok &= gaps_ok
    if not args.skip_memory:
        m = bench_memory()
        print("[memory] 8192 tokens x 49152 vocab, hidden 576, forward+backward of log-probs and entropy")
        print(f"  full fp32 logits    {m['naive_peak_mb']:.0f} MiB")
        print(f"  chunked fp32 pass   {m['chunked_peak_mb']:.0f} MiB")
        print(
            f"  ratio               {m['memory_ratio']:.3f}   (goal <= 0.25) {'OK' if m['memory_ratio'] <= 0.25 else 'OVER'}"
        )
        ok &= m["memory_ratio"] <= 0.25
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
