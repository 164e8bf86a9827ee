"""Memory benchmarks of tools/bench.py.

Step memory (``bench_step_memory``): the peak resident set of ``iterations`` training steps of the app
(``RLModule`` in a ``Trainer``, the monitoring callbacks on) next to the raw loop of ``bench_step.RawLoop`` in the
same precision, with the same model, prompts and settings, generating up to the same budget (stopping at EOS)
and scoring with the same chunked fp32 log-prob pass (so both compute the same numbers and the difference is
what the app adds around them). Each runs in a fresh subprocess (``tools/bench.py --step-memory-child``) after
the same imports; reported is its peak RSS (sampled every 1 ms) above the RSS right after the imports, up to
the end of the first rollout (model load + generation) and over the whole run.

Log-prob memory (``bench_memory``): the chunked fp32 log-prob + entropy pass (forward and backward) against
materialising full fp32 logits, each variant in a fresh subprocess, as its peak growth of the resident set
over the baseline (CPU, sampled every 0.5 ms) or its peak CUDA allocation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from bench_step import RawLoop, StepWork, app_module, policy_source, raw_policy
from bench_timers import PeakRSS

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "bench.py"


def step_memory_child(which: str, work: StepWork) -> None:
    """Run ``work`` on the raw loop or the app and print its peak RSS above the post-import RSS."""
    import lightning.pytorch as pl

    from epr_lightning.models import encode_prompts

    torch.manual_seed(0)
    data = work.data()
    meter = PeakRSS()
    rollout_peak: list[int] = []

    def first_rollout_done() -> None:
        if not rollout_peak:
            rollout_peak.append(max(meter.peak, meter.now()))

    if which == "app":
        module, monitors = app_module(work)
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=monitors,
        )  # fmt: skip
        generate = module.engine.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            out = generate(*args, **kwargs)
            first_rollout_done()
            return out

        module.engine.generate = timed_generate  # type: ignore[method-assign]
        trainer.fit(module, datamodule=data)
    else:
        policy, tok = raw_policy(work.model)
        raw = RawLoop(policy, tok, work.precision, chunked_logprobs=True)
        raw.after_generate = first_rollout_done
        data.setup("fit")
        for batch in data.train_dataloader():
            ids = encode_prompts(tok, [e.prompt for e in batch], getattr(data.task, "system_prompt", None))
            raw.step(ids, work.generations, work.new_tokens, exact=False)
    peak = meter.stop()
    print(json.dumps({"rollout_peak_bytes": rollout_peak[0] - meter.base, "peak_bytes": peak - meter.base}))


def bench_step_memory(work: StepWork) -> dict[str, float]:
    """Peak RSS (GiB) of the raw loop and the app doing ``work``, each in a fresh subprocess, and the gaps."""
    # SmolLM2: make the one-time GGUF conversion here, outside both measurements
    policy_source(work.model).build()
    out = {}
    for which in ("raw", "app"):
        proc = subprocess.run(
            [sys.executable, str(BENCH), "--step-memory-child", which, *work.cli_args()],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
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
