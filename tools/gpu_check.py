#!/usr/bin/env python
"""GPU smoke check (offline, one GPU, a few minutes): a ~0.5B random Qwen2-shaped policy trained for a few RL
iterations with the HF engine under FSDP2 (ModelParallelStrategy, 1 device, bf16 gathered params, fp32
master weights), reporting rollout and training throughput and peak memory; plus the fp32 log-prob path vs a
naive bf16 computation. SGLang is exercised only when ``sglang`` is importable.

    bash tools/gpu_check.sh                 # on the GPU machine
    python tools/gpu_check.py --cpu --tiny  # the same code path on a CPU, tiny shapes (seconds)

Needs only torch, lightning, transformers (and peft for --lora); no jsonargparse, no network. Prints one
``RESULT {...}`` JSON line at the end.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from the working tree, uninstalled

import torch

from epr_lightning.rollout.hf import HFEngine

SHAPES = {
    # ~0.62B parameters with the Qwen2/Qwen3 vocabulary (0.31B of them embeddings + untied head)
    "full": dict(arch="qwen2", hidden_size=1024, intermediate_size=2816, num_layers=24, num_heads=16,
                 num_kv_heads=16, vocab_size=151936),
    "tiny": dict(arch="qwen2", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, vocab_size=4096),
}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedHFEngine(HFEngine):
    """The HF engine, timing each ``generate`` and counting sampled tokens and peak memory while sampling."""

    def __init__(self, generation_batch_size: int | None = None) -> None:
        super().__init__(generation_batch_size)
        self.log: list[dict[str, float]] = []

    def generate(self, prompt_ids: Any, params: Any, num_samples: int, *, model: Any = None) -> Any:
        device = next(model.parameters()).device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        rollout = super().generate(prompt_ids, params, num_samples, model=model)
        sync(device)
        seconds = time.perf_counter() - start
        self.log.append(
            {
                "seconds": seconds,
                "completion_tokens": float(sum(len(c) for c in rollout.completion_ids)),
                "sequence_tokens": float(sum(len(p) + len(c) for p, c in zip(rollout.prompt_ids, rollout.completion_ids, strict=True))),
                "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0,
            }
        )  # fmt: skip
        return rollout


def step_timer() -> Any:
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        """Wall time of each training_step (rollout + scoring + update)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.peak_gb: list[float] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            sync(pl_module.device)
            self._start = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            sync(pl_module.device)
            self.seconds.append(time.perf_counter() - self._start)
            dev = pl_module.device
            self.peak_gb.append(torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0)

    return StepTimer()


def precision_check(
    shape: dict[str, Any], device: torch.device, seq_len: int, batch: int
) -> dict[str, float]:
    """|Δ log-prob| and |Δ entropy| against an all-fp32 reference, for (a) this package's path under bf16
    autocast (bf16 decoder, fp32 LM head and softmax) and (b) a naive bf16 model with bf16 logits."""
    from epr_lightning.logprobs import naive_logprobs_entropy, token_logprobs_and_entropy
    from epr_lightning.models import TinyModel

    with torch.device(device):  # random init directly on the GPU (seconds instead of a CPU init + copy)
        model = TinyModel(**shape).build()[0].eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, shape["vocab_size"], (batch, seq_len), generator=gen).to(device)
    attn, score = torch.ones_like(ids), torch.ones(ids.shape, device=device)
    score[:, : seq_len // 4] = 0
    m = score.bool()
    m[:, 0] = False
    out: dict[str, float] = {}
    with torch.no_grad():
        ref_lp, ref_ent = token_logprobs_and_entropy(model, ids, attn, score, chunk_size=512)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            lp, ent = token_logprobs_and_entropy(model, ids, attn, score, chunk_size=512)
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        logits = bf16(input_ids=ids, attention_mask=attn).logits[:, :-1]  # bf16 logits, bf16 softmax
        naive_lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1).float()
        p = torch.softmax(logits, dim=-1)
        naive_ent = -(p * torch.log_softmax(logits, dim=-1)).sum(-1).float()
        pad = torch.zeros_like(naive_lp[:, :1])
        naive_lp, naive_ent = torch.cat([pad, naive_lp], 1), torch.cat([pad, naive_ent], 1)
        exact_lp, _ = naive_logprobs_entropy(model, ids, attn)  # full fp32 logits: must equal ref
        del bf16
    for name, (a, b) in {
        "fp32_path_vs_naive_fp32_logp": (ref_lp, exact_lp),
        "bf16_autocast_fp32_head_logp": (lp, ref_lp),
        "bf16_autocast_fp32_head_entropy": (ent, ref_ent),
        "naive_bf16_logp": (naive_lp, ref_lp),
        "naive_bf16_entropy": (naive_ent, ref_ent),
    }.items():
        diff = (a.float() - b.float()).abs()[m]
        out[f"{name}/max"] = float(diff.max())
        out[f"{name}/mean"] = float(diff.mean())
    out["reference_entropy_mean"] = float(ref_ent[m].mean())
    del model
    return out


def train_run(args: argparse.Namespace, shape: dict[str, Any], engine: Any, precision: str, strategy: Any,
              fsdp_dtype: str) -> tuple[Any, Any]:  # fmt: skip
    import lightning.pytorch as pl

    from epr_lightning.data import PromptDataModule
    from epr_lightning.lora import LoRAConfig
    from epr_lightning.models import TinyModel
    from epr_lightning.module import RLModule
    from epr_lightning.parallel import FSDP2Config
    from epr_lightning.rollout.base import SamplingParams
    from epr_lightning.tasks.arithmetic import ArithmeticTask

    module = RLModule(
        policy=TinyModel(**shape),
        engine=engine,
        sampling=SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0),
        num_generations=args.num_generations,
        minibatch_size=args.minibatch_size,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0),
        gradient_checkpointing=args.gradient_checkpointing,
        logprob_chunk_size=1024,
        lora=LoRAConfig(r=16, alpha=32) if args.lora else None,
        fsdp=FSDP2Config(param_dtype=fsdp_dtype, reduce_dtype="float32"),
    )
    data = PromptDataModule(
        ArithmeticTask(num_train=256, num_val=8, max_value=99, word_problems=True),
        prompts_per_step=args.prompts,
        batches_per_epoch=args.steps,
        val_prompts=None,
    )
    timer = step_timer()
    trainer = pl.Trainer(
        accelerator="cpu" if args.cpu else "gpu",
        devices=1,
        strategy=strategy,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    return module, timer


def summarize(engine: TimedHFEngine, timer: Any, skip: int = 1) -> dict[str, float]:
    """Throughput over the iterations after the first ``skip`` (warm-up: allocator, kernels, autotuning)."""
    gens, steps = engine.log[skip:], timer.seconds[skip:]
    if not gens:
        gens, steps = engine.log, timer.seconds
    gen_s = sum(g["seconds"] for g in gens)
    train_s = sum(steps) - gen_s
    return {
        "iterations_measured": float(len(gens)),
        "rollout_tokens_per_s": sum(g["completion_tokens"] for g in gens) / gen_s,
        "training_tokens_per_s": sum(g["sequence_tokens"] for g in gens) / max(train_s, 1e-9),
        "rollout_seconds_per_iter": gen_s / len(gens),
        "update_seconds_per_iter": train_s / len(gens),
        "peak_gpu_gb_rollout": max(g["peak_gb"] for g in engine.log),
        "peak_gpu_gb": max(timer.peak_gb) if timer.peak_gb else 0.0,
        "completion_tokens_per_iter": sum(g["completion_tokens"] for g in gens) / len(gens),
    }


def sglang_check(args: argparse.Namespace, shape: dict[str, Any]) -> dict[str, Any]:
    """A short 1-GPU run with the colocated in-process SGLang engine (bf16-mixed), when sglang is installed."""
    if args.cpu or importlib.util.find_spec("sglang") is None:
        return {"skipped": "sglang not importable" if not args.cpu else "--cpu"}
    from epr_lightning.rollout.sglang import SGLangEngine
    from epr_lightning.tiny import char_tokenizer, tiny_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        tok = char_tokenizer()
        kw = {k: v for k, v in shape.items() if k != "vocab_size"}
        model = tiny_causal_lm(
            shape["vocab_size"], eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw
        )
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        engine = SGLangEngine(
            model_path=tmp, dtype="bfloat16", mem_fraction_static=0.3, enable_memory_saver=True
        )
        try:
            timed = _TimedEngine(engine)
            module, timer = train_run(args, shape, timed, "bf16-mixed", "auto", "float32")
            return {"ok": True, **summarize(timed, timer)}
        except Exception as err:  # report, never hide the HF results above
            return {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000]}
        finally:
            engine.shutdown()


class _TimedEngine:
    """Delegating timer around any RolloutEngine (used for SGLang)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.log = inner, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, prompt_ids: Any, params: Any, num_samples: int, *, model: Any = None) -> Any:
        start = time.perf_counter()
        rollout = self.inner.generate(prompt_ids, params, num_samples, model=model)
        self.log.append({"seconds": time.perf_counter() - start,
                         "completion_tokens": float(sum(len(c) for c in rollout.completion_ids)),
                         "sequence_tokens": float(sum(len(p) + len(c) for p, c in zip(rollout.prompt_ids, rollout.completion_ids, strict=True))),
                         "peak_gb": 0.0})  # fmt: skip
        return rollout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo) instead of one GPU")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (for --cpu code-path checks)")
    parser.add_argument("--steps", type=int, default=None, help="RL iterations (first is warm-up)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per iteration")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--minibatch-size", type=int, default=None, help="samples per optimizer step")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (needs peft)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-sglang", action="store_true", help="skip the SGLang part even if importable")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (2 if tiny else 4)
    args.prompts = args.prompts or (2 if tiny else 16)
    args.max_new_tokens = args.max_new_tokens or (8 if tiny else 128)
    if args.minibatch_size is None and not tiny:
        args.minibatch_size = 32
    shape = SHAPES["tiny" if tiny else "full"]

    import lightning
    import transformers
    from lightning.pytorch.strategies import ModelParallelStrategy

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --cpu --tiny for the CPU code path)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    result: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "lightning": lightning.__version__,
                     "transformers": transformers.__version__},
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "shape": shape, "args": vars(args),
    }  # fmt: skip
    print(f"[gpu_check] {result['device']} torch {torch.__version__} lightning {lightning.__version__} "
          f"transformers {transformers.__version__}", flush=True)  # fmt: skip

    t0 = time.perf_counter()
    result["precision"] = precision_check(shape, device, seq_len=64 if tiny else 512, batch=4 if tiny else 8)
    print("[gpu_check] precision:", json.dumps(result["precision"], indent=1), flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    engine = TimedHFEngine()
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)
    module, timer = train_run(args, shape, engine, "32-true", strategy, "bfloat16")
    params = sum(p.numel() for p in module.policy.parameters())
    result["params_millions"] = params / 1e6  # DTensor numel is the global size
    result["fsdp2_hf"] = summarize(engine, timer)
    result["fsdp2_hf"]["iterations"] = float(len(timer.seconds))
    print("[gpu_check] FSDP2 + HF engine:", json.dumps(result["fsdp2_hf"], indent=1), flush=True)
    del module
    if device.type == "cuda":
        torch.cuda.empty_cache()

    result["sglang"] = {"skipped": "--no-sglang"} if args.no_sglang else sglang_check(args, shape)
    print("[gpu_check] sglang:", json.dumps(result["sglang"], indent=1), flush=True)
    result["seconds_total"] = time.perf_counter() - t0

    prec = result["precision"]
    checks = {
        "fp32 chunked path equals full fp32 logits": prec["fp32_path_vs_naive_fp32_logp/max"] < 1e-3,
        "fp32-head path beats naive bf16 (mean |Δlogp|)": prec["bf16_autocast_fp32_head_logp/mean"]
        < prec["naive_bf16_logp/mean"],
        "all RL iterations ran": len(timer.seconds) == args.steps,
        "rollouts produced tokens": result["fsdp2_hf"]["completion_tokens_per_iter"] > 0,
    }
    result["checks"] = checks
    for name, ok in checks.items():
        print(f"[gpu_check] {'PASS' if ok else 'FAIL'}: {name}")
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
