"""Step-time benchmark of tools/bench.py: our training step by stage next to a raw loop doing the same work.

The raw loop (``RawLoop``) is plain transformers + torch: ``generate`` of the same prompts × samples × exactly
the same number of new tokens as our step generated for that batch (its longest completion;
``min_new_tokens = max_new_tokens``, so no sample stops early and every generated token is scored), one
forward computing the fp32 log-softmax of the completion tokens (``logits_to_keep``: only the positions that
predict a completion token reach the LM head; the logits are upcast to fp32 before the log-softmax), backward,
grad clip (norm 1.0) and an AdamW step. In ``bfloat16`` it runs on bf16 working weights with fp32 master
copies, as the app does with ``model.compute_dtype: bfloat16``: every floating parameter is cast to bf16, the
optimizer holds fp32 copies of them; after backward the bf16 gradients are copied to the masters as fp32,
clipped there, AdamW steps the masters and the working weights are refreshed from them (rounded to bf16).

``bench_step`` runs ``iterations`` steps of the app (``RLModule`` in a ``Trainer``, the monitoring callbacks
on) and then the raw loop over the same batches, and reports both by stage: medians over the steps after the
first (which warms up).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_timers import STAGES, StageTimer, StepTimer, time_stages

RAW_STAGES = ("generate", "log-prob forward", "backward", "clip + optimizer step")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class StepWork:
    """The work both sides of a step benchmark do: the model, ``iterations`` steps of ``prompts`` arithmetic
    prompts × ``generations`` samples of up to ``new_tokens`` tokens, in ``precision``. ``every_row``: our update
    takes the gradient pass on every row, as the raw loop does (by default it leaves out the rows whose
    advantage is 0, which gives the same update with less work)."""

    model: str = "tiny"
    iterations: int = 4
    prompts: int = 4
    generations: int = 4
    new_tokens: int = 48
    precision: str = "float32"
    every_row: bool = False

    def data(self) -> Any:
        """The prompts of both sides: one batch of ``prompts`` per step, ``iterations`` steps."""
        from epr_lightning.data import PromptDataModule
        from epr_lightning.tasks.arithmetic import ArithmeticTask

        task = ArithmeticTask(num_train=256, num_val=0)
        return PromptDataModule(task, prompts_per_step=self.prompts, batches_per_epoch=self.iterations)

    def cli_args(self) -> list[str]:
        """This work as ``tools/bench.py`` arguments (for a benchmark's child process)."""
        return ["--model", self.model, "--iterations", str(self.iterations), "--prompts", str(self.prompts),
                "--generations", str(self.generations), "--new-tokens", str(self.new_tokens),
                "--precisions", self.precision, *(["--every-row"] if self.every_row else [])]  # fmt: skip


def policy_source(model: str) -> Any:
    from epr_lightning.models import PackagedSmolLM2, TinyModel

    if model == "smollm2":
        return PackagedSmolLM2()
    return TinyModel(hidden_size=256, intermediate_size=512, num_layers=4, vocab_size=49152)


def raw_policy(model: str) -> tuple[Any, Any]:
    """The raw loop's model, loaded with transformers alone from the HF folder the app loads (SmolLM2: the cached
    conversion of the packaged GGUF, made once before any measurement), in fp32 and train mode."""
    source = policy_source(model)
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


def optimizer_factory(params: Any) -> torch.optim.Optimizer:
    """The optimizer of both the app and the raw loop."""
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)


def app_module(work: StepWork) -> tuple[Any, list[Any]]:
    """The app's ``RLModule`` as both benchmarks build it for ``work``, and the monitoring callbacks at their
    defaults."""
    import dataclasses

    from epr_lightning.callbacks import DiversityMonitor, EntropyTracker, PrecisionAudit, SampleLogger
    from epr_lightning.module import RLModule
    from epr_lightning.rollout.base import SamplingParams

    module = RLModule(
        policy=policy_source(work.model),
        sampling=SamplingParams(max_new_tokens=work.new_tokens, seed=0),
        num_generations=work.generations,
        optimizer=optimizer_factory,
        compute_dtype=work.precision,  # type: ignore[arg-type]
    )
    if work.every_row:
        update = module.policy_update
        update.settings = dataclasses.replace(update.settings, skip_zero_advantage=False)
    return module, [EntropyTracker(), DiversityMonitor(), PrecisionAudit(), SampleLogger()]


class RawLoop:
    """One training step in plain transformers + torch, timed by stage (``RAW_STAGES``; see the module docstring).

    ``precision`` is ``float32`` or ``bfloat16`` (bf16 working weights, fp32 masters in the optimizer).
    ``chunked_logprobs`` scores with the app's chunked fp32 pass (``score_tokens``) instead of the plain
    log-softmax (the step-memory benchmark does, so that both compute the same numbers there).
    """

    def __init__(self, policy: Any, tokenizer: Any, precision: str, chunked_logprobs: bool = False) -> None:
        from epr_lightning.models import disable_dropout

        disable_dropout(policy)
        self.policy, self.tokenizer, self.chunked = policy, tokenizer, chunked_logprobs
        self.working = [p for p in policy.parameters() if p.requires_grad]
        self.masters: list[torch.Tensor] = []
        if precision != "float32":
            dtype = _DTYPES[precision]
            for p in policy.parameters():
                if p.is_floating_point() and p.dtype != dtype:
                    if p.requires_grad:
                        self.masters.append(p.detach().to(torch.float32, copy=True))
                    p.data = p.data.to(dtype)
        self.optimizer = optimizer_factory(self.masters or self.working)
        self.stage_times: list[dict[str, float]] = []
        self.after_generate: Any = None  # called after each generate (the step-memory benchmark's mark)

    def step(self, prompt_ids: list[list[int]], samples: int, new_tokens: int, exact: bool = True) -> None:
        """Generate ``samples`` completions of each prompt (``exact``: exactly ``new_tokens`` each, EOS
        suppressed; else up to ``new_tokens``, stopping at EOS), then one update on their tokens."""
        from epr_lightning.rollout.hf import left_pad

        tok, policy, times = self.tokenizer, self.policy, {}
        pad, eos = tok.pad_token_id, tok.eos_token_id
        t0 = time.perf_counter()
        inp, attn = left_pad([p for p in prompt_ids for _ in range(samples)], pad)
        width = inp.shape[1]
        policy.eval()
        with torch.no_grad():
            seq = policy.generate(
                input_ids=inp, attention_mask=attn, do_sample=True, top_k=0, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens if exact else None, pad_token_id=pad, eos_token_id=eos,
            )  # fmt: skip
        if self.after_generate is not None:
            self.after_generate()
        policy.train()
        done = torch.cumsum((seq[:, width:] == eos).long(), dim=1)
        completion = ((done == 0) | ((done == 1) & (seq[:, width:] == eos))).long()
        full_attn = torch.cat([attn, completion], dim=1)
        t1 = time.perf_counter()
        times["generate"] = t1 - t0
        if self.chunked:
            from epr_lightning.logprobs import score_tokens

            score = torch.cat([torch.zeros_like(attn), completion], dim=1).float()
            logp = score_tokens(policy, seq, full_attn, score).logp
        else:
            steps = seq.shape[1] - width
            logits = policy(input_ids=seq, attention_mask=full_attn, logits_to_keep=steps + 1).logits
            logits = logits[:, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, seq[:, width:, None]).squeeze(-1)
            score = completion.float()
        loss = -(logp * score).sum() / score.sum().clamp_min(1.0)
        t2 = time.perf_counter()
        times["log-prob forward"] = t2 - t1
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        times["backward"] = t3 - t2
        stepped = self.working
        if self.masters:  # bf16 grads → fp32 on the masters
            for p, m in zip(self.working, self.masters, strict=True):
                m.grad = None if p.grad is None else p.grad.to(torch.float32)
                p.grad = None
            stepped = self.masters
        torch.nn.utils.clip_grad_norm_(stepped, 1.0)
        self.optimizer.step()
        if self.masters:  # working weights = masters rounded to bf16
            with torch.no_grad():
                for p, m in zip(self.working, self.masters, strict=True):
                    p.copy_(m)
        times["clip + optimizer step"] = time.perf_counter() - t3
        self.stage_times.append(times)

    def medians(self) -> dict[str, float]:
        """Median seconds per stage over the steps after the first (which warms up)."""
        steps = self.stage_times[1:] or self.stage_times
        return {k: statistics.median(s[k] for s in steps) for k in RAW_STAGES}


def bench_step(work: StepWork) -> dict[str, float]:
    """Our step and the raw loop doing ``work``: ``raw:<stage>``, ``raw_step_s``, ``stage:<stage>``,
    ``step_s``, ``step_ratio`` (our step / the raw loop's), the monitoring callbacks' time and share, and what
    differs in the work: the tokens each samples a step (``new_tokens``: the raw loop's, every row to the
    longest completion; ``our_tokens``: ours, which end at EOS) and the share of our rows that the update leaves
    out of the gradient pass (``skipped_rows_frac``: advantage 0, so the same update)."""
    import lightning.pytorch as pl

    module, monitors = app_module(work)
    data = work.data()
    stages = StageTimer()
    time_stages(module, stages)
    timer = StepTimer(monitors, stages)
    batches: list[tuple[list[list[int]], int]] = []  # per step: the prompts' ids, the generated steps
    sampled: list[int] = []  # per step: the tokens our rollout sampled (its completions end at EOS)
    rollout = module.rollout

    def recorded_rollout(prompts_in: Any, num_samples: int) -> Any:
        out = rollout(prompts_in, num_samples)
        batches.append((prompts_in.ids, max(len(c) for c in out.completion_ids)))
        sampled.append(sum(len(c) for c in out.completion_ids))
        return out

    module.rollout = recorded_rollout  # type: ignore[method-assign]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[timer.callback, *monitors],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)

    torch.manual_seed(0)
    raw = RawLoop(*raw_policy(work.model), work.precision)
    for prompt_ids, steps in batches:
        raw.step(prompt_ids, work.generations, steps)
    raw_stages = raw.medians()
    raw_step = statistics.median(sum(s.values()) for s in (raw.stage_times[1:] or raw.stage_times))
    step = statistics.median(timer.steps[1:] or timer.steps)
    monitor = statistics.median(timer.monitor_time[1:] or timer.monitor_time)
    per_stage = stages.medians()
    return {
        **{f"raw:{k}": v for k, v in raw_stages.items()},
        "raw_step_s": raw_step,
        **{f"stage:{k}": per_stage.get(k, 0.0) for k in STAGES},
        "stage:other": step - sum(per_stage.get(k, 0.0) for k in STAGES),
        "new_tokens": float(statistics.median(len(ids) * work.generations * n for ids, n in batches)),
        "our_tokens": float(statistics.median(sampled)),
        "skipped_rows_frac": statistics.median(timer.skipped_rows[1:] or timer.skipped_rows),
        "step_s": step,
        "step_ratio": step / raw_step,
        "monitor_s": monitor,
        "monitor_share": monitor / step,
    }
