"""RLModule: one rollout-then-update iteration per ``training_step``, as named stages.

    prompts → generate (no grad) → rewards → advantages → epochs × minibatches of clipped updates
    → push weights to the engine → StepRecord for the callbacks

Manual optimization: ``trainer.global_step`` counts optimizer steps; ``self.iteration`` counts rollouts.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from epr_lightning.checkpointing import capture_rng_state, restore_rng_state
from epr_lightning.logprobs import LogProbDType, PolicyPass, score_tokens
from epr_lightning.lora import LoRAConfig, apply_lora
from epr_lightning.master_weights import MasterWeights, build_optimizer, scored
from epr_lightning.models import (
    PackagedSmolLM2,
    PolicySource,
    disable_dropout,
    encode_prompts,
    eos_token_ids,
    load_policy_weights,
)
from epr_lightning.objectives.objective import Objective
from epr_lightning.parallel import FSDP2Config, shard_policy
from epr_lightning.prompts import AdmittedPrompts, admit, check_prompt_settings, prompt_token_limit
from epr_lightning.record import StepRecord, build_record, rollout_metrics
from epr_lightning.reward_failures import RewardFailureStop
from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams, TokenBatch
from epr_lightning.rollout.episodes import any_rank_active_fn
from epr_lightning.rollout.hf import HFEngine
from epr_lightning.rollout.kinds import SampleKind, rollout_kind
from epr_lightning.tasks.base import Example
from epr_lightning.update import Optimization, PolicyUpdate, UpdateSettings, UpdateStats
from epr_lightning.validation import run_validation_now, validation_entropy, validation_results


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)


class RLModule(pl.LightningModule):
    """RL post-training of a causal LM with a pluggable objective and rollout engine.

    Args:
        policy: where the model and tokenizer come from.
        engine: the rollout engine (HF ``generate`` in-process by default; SGLang for GPUs).
        objective: advantage estimator, REPO-style transforms, surrogate loss, extra terms.
        sampling: rollout sampling settings (temperature, top-p, max new tokens, seed).
        num_generations: samples per prompt (the group size G).
        ppo_epochs: passes over each rollout.
        num_minibatches: split each rollout into this many minibatches, one optimizer step each per epoch
            (None = use ``minibatch_size``). Method YAMLs state their schedule this way, so it does not depend
            on the base config's batch size.
        minibatch_size: samples per optimizer step (None = the whole rollout: one step per epoch); only one of
            ``num_minibatches`` and ``minibatch_size`` may be set.
        optimizer: optimizer factory (``class_path`` + ``init_args`` in YAML).
        lr_scheduler: optional scheduler factory; stepped once per optimizer step.
        grad_clip: max global grad norm (None = no clipping).
        logprob_chunk_size: scored tokens per LM-head chunk in the fp32 log-prob/entropy pass.
        fp32_lm_head: run the LM-head matmul in fp32 (bf16 weights then do not round the logits).
        logprob_dtype: ``float32`` (the default, and what the method needs) or ``bfloat16`` — a research switch
            that computes the trainer's logits, log-probs, entropies and so the ratios in bf16, to measure what
            that precision does (``policy/clip_decision_diff`` counts the clip decisions it flips).
        compute_dtype: ``bfloat16`` = rollouts and updates on bf16 weights, fp32 master weights in the optimizer
            (``master_weights.py``; keep ``trainer.precision: 32-true``); log-probs/entropies/ratios stay fp32.
        use_chat_template: wrap prompts with the tokenizer's chat template when it has one.
        max_prompt_tokens: prompts longer than this are skipped or rejected (see ``long_prompts``).
        long_prompts: "skip" (count and drop) or "error".
        reward_timeout_s: per-completion reward timeout; raising/timing-out/NaN rewards count as 0.
        max_failed_reward_iterations: stop once every reward (or episode: ``env_error``) failed in this many
            iterations in a row (None or 0: never); each kind of failure is shown once (``reward_failures.py``).
        max_nonfinite_updates: consecutive non-finite losses/gradients tolerated before aborting.
        val_num_generations: samples per validation prompt (None = ``num_generations``).
        gradient_checkpointing: recompute decoder activations in backward (saves memory).
        lora: train LoRA adapters instead of all weights (None = full fine-tuning).
        fsdp: FSDP2 settings, used when the Trainer's strategy is ``ModelParallelStrategy``.
        init_weights: a checkpoint (``.ckpt`` of an earlier run) whose policy weights this run starts from — a
            warm start on a new task (optimizer, iteration and controller state start fresh, unlike
            ``--ckpt_path``, which resumes). The model (and LoRA setup) must match the checkpoint's.
        validate_before_training: when the Trainer validates (``val_check_interval`` / a val split), run
            validation once before the first update too, so ``val/`` metrics have an iteration-0 baseline
            (a resumed run does not repeat it).
        controllers: callbacks that adapt the objective (``epr_lightning.callbacks.REPOZetaController`` …);
            returned from ``configure_callbacks`` so that Lightning adds them to the trainer's callbacks. A
            method YAML sets them here, which composes with (never replaces) ``trainer.callbacks``.
    """

    def __init__(
        self,
        policy: PolicySource | None = None,
        engine: RolloutEngine | None = None,
        objective: Objective | None = None,
        sampling: SamplingParams | None = None,
        num_generations: int = 4,
        ppo_epochs: int = 1,
        num_minibatches: int | None = None,
        minibatch_size: int | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        grad_clip: float | None = 1.0,
        logprob_chunk_size: int = 1024,
        fp32_lm_head: bool = True,
        logprob_dtype: LogProbDType = "float32",
        compute_dtype: Literal["float32", "bfloat16"] = "float32",
        use_chat_template: bool = True,
        max_prompt_tokens: int | None = None,
        long_prompts: Literal["skip", "error"] = "skip",
        reward_timeout_s: float = 5.0,
        max_failed_reward_iterations: int | None = 3,
        max_nonfinite_updates: int = 3,
        val_num_generations: int | None = None,
        gradient_checkpointing: bool = False,
        lora: LoRAConfig | None = None,
        fsdp: FSDP2Config | None = None,
        init_weights: str | None = None,
        validate_before_training: bool = True,
        controllers: list[pl.Callback] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if num_generations < 1:
            raise ValueError(f"model.num_generations must be >= 1, got {num_generations}")
        settings = UpdateSettings(
            ppo_epochs, num_minibatches, minibatch_size, grad_clip, max_nonfinite_updates
        )
        check_prompt_settings(max_prompt_tokens, long_prompts)
        if not reward_timeout_s > 0:
            raise ValueError(f"model.reward_timeout_s must be > 0, got {reward_timeout_s}")
        self.policy_source = policy
        self.engine = engine if engine is not None else HFEngine()
        self.objective = objective if objective is not None else Objective()
        self.sampling = sampling if sampling is not None else SamplingParams()
        self.objective.check_settings(num_generations, settings.single_step)
        self.num_generations = num_generations
        self.policy_update = PolicyUpdate(settings, self.objective, self.policy_pass)
        self.objective.set_generation_budget(self.sampling.max_new_tokens)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.logprob_chunk_size = logprob_chunk_size
        self.fp32_lm_head = fp32_lm_head
        MasterWeights.check_settings(compute_dtype, logprob_dtype)
        self.logprob_dtype, self.compute_dtype = logprob_dtype, compute_dtype
        self.master_weights: MasterWeights | None = None  # fp32 masters when the weights compute in bf16
        self.use_chat_template = use_chat_template
        self.max_prompt_tokens = max_prompt_tokens
        self.long_prompts = long_prompts
        self.reward_timeout_s = reward_timeout_s
        self.reward_failures = RewardFailureStop(max_failed_reward_iterations)
        self.val_num_generations = val_num_generations or num_generations
        self.gradient_checkpointing = gradient_checkpointing
        self.lora = lora
        self.fsdp = fsdp if fsdp is not None else FSDP2Config()
        self.controllers = list(controllers or [])
        self.validate_before_training = validate_before_training
        self.initial_validation: dict[str, float] = {}  # val/ metrics before the first update (not saved)
        if init_weights is not None and not Path(init_weights).expanduser().is_file():
            raise FileNotFoundError(f"model.init_weights {init_weights!r} is not a checkpoint file")
        self.init_weights = init_weights
        self.iteration = 0  # completed rollout iterations (checkpointed)
        self.skipped_prompts = 0
        self.policy: torch.nn.Module | None = None
        self._reference: list[torch.nn.Module] = []  # a list hides it from state_dict/checkpoints
        self.tokenizer: Any = None
        self._samples: SampleKind | None = None  # built in setup, once per run (not checkpointed)

    @property
    def reference(self) -> torch.nn.Module | None:
        """The frozen initial policy for KL terms (None unless the objective needs one)."""
        return self._reference[0] if self._reference else None

    # ---------------------------------------------------------------- setup
    def configure_model(self) -> None:
        """Build the policy once (idempotent: Lightning calls this for every stage)."""
        if self.policy is not None:
            return
        source = self.policy_source if self.policy_source is not None else PackagedSmolLM2()
        policy: Any  # an HF causal LM (duck-typed)
        policy, self.tokenizer = source.build()
        self.policy = policy
        # stop at any EOS the tokenizer or the model's generation_config names (Qwen, Llama 3, Gemma list several)
        stops = [*self.sampling.stop_token_ids, *eos_token_ids(policy, self.tokenizer)]
        self.sampling.stop_token_ids = list(dict.fromkeys(stops))
        self.chat_template_kwargs = dict(getattr(source, "chat_template_kwargs", None) or {})
        if self.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        if self.lora is not None:
            self.policy = policy = apply_lora(policy, self.lora)
        disable_dropout(policy)  # deterministic log-prob passes: ratio exactly 1 on-policy
        if self.init_weights is not None:
            load_policy_weights(policy, self.init_weights)
        mesh = getattr(self, "device_mesh", None) if self._trainer is not None else None
        self.master_weights = MasterWeights.for_policy(policy, self.compute_dtype, mesh)
        if mesh is not None:  # ModelParallelStrategy: FSDP2-shard each decoder layer, then the root
            shard_policy(policy, mesh, self.fsdp)
        if self.objective.needs_reference and not self._reference:
            reference, _ = source.build()
            disable_dropout(reference)
            self._reference = [reference.requires_grad_(False).eval()]
            MasterWeights.for_policy(reference, self.compute_dtype)  # the same numerics as the policy

    def setup(self, stage: str) -> None:
        MasterWeights.check_precision(self.compute_dtype, self.trainer.precision)
        self.configure_model()
        self.engine.setup(
            self.built_policy, self.tokenizer, rank=self.global_rank, world_size=self.trainer.world_size
        )
        if self.task is not None:  # how this run's samples come about (``self.device`` is the run's here)
            multi_rank = self.trainer.world_size > 1
            self._samples = rollout_kind(
                self.task, self.engine, reward_timeout_s=self.reward_timeout_s, tokenizer=self.tokenizer,
                template_kwargs=getattr(self, "chat_template_kwargs", None),
                any_rank_active=any_rank_active_fn(self.device) if multi_rank else None,
            )  # fmt: skip

    def configure_callbacks(self) -> list[pl.Callback]:
        """The objective's controllers (merged into the trainer's callbacks by Lightning)."""
        return list(self.controllers)

    def configure_optimizers(self) -> Any:
        opt = build_optimizer(self.built_policy, self.optimizer_factory, self.master_weights)
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"},
        }

    # ---------------------------------------------------------------- the iteration
    def training_step(self, batch: list[Example], batch_idx: int) -> dict[str, StepRecord]:
        prompts = self.admit_prompts(batch)
        rollout = self.rollout(prompts, self.num_generations)
        scores = self.samples.score(prompts.examples, rollout)
        self.reward_failures.check(scores, self.iteration, self.device)  # warns once per kind; stops at N
        tokens = rollout.to_batch(self.pad_id, self.device)
        seq_adv = self.objective.sequence_advantages(scores.rewards.to(self.device), tokens.group_index)
        stats = self.policy_update(
            tokens, seq_adv, iteration=self.iteration, optim=self.optimization(), reference=self.reference
        )
        self.engine.push_weights(self.built_policy)
        record = build_record(
            self.iteration, prompts.examples, rollout, tokens, scores, seq_adv, stats, self.num_generations
        )
        self.log_iteration(record, rollout, stats, len(prompts.examples))
        self.iteration += 1
        return {"record": record}

    # ---------------------------------------------------------------- stages
    @property
    def built_policy(self) -> torch.nn.Module:
        """The policy (built by ``configure_model``, which Lightning calls before fit and validate)."""
        if self.policy is None:
            raise RuntimeError("RLModule.policy is built in configure_model; it has not run yet")
        return self.policy

    @property
    def nonfinite_total(self) -> int:
        """Optimizer steps skipped for a non-finite loss or gradient (checkpointed)."""
        return self.policy_update.guard.total

    def optimization(self) -> Optimization:
        """Lightning's optimizer and scheduler and the manual backward, for the update's optimizer steps."""
        return Optimization(
            optimizer=self.optimizers(),
            scheduler=self.lr_schedulers(),
            backward=self.manual_backward,
            params=self.built_policy.parameters,
            master=self.master_weights,
        )

    @property
    def pad_id(self) -> int:
        return next(t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if t is not None)

    def admit_prompts(self, examples: list[Example]) -> AdmittedPrompts:
        """Drop (and count) or reject prompts longer than ``max_prompt_tokens``; the rest with their token ids."""
        ids = encode_prompts(
            self.tokenizer,
            [e.messages or e.prompt for e in examples],
            getattr(self.task, "system_prompt", None),
            self.use_chat_template,
            getattr(self, "chat_template_kwargs", None),
        )
        context = getattr(getattr(self.policy, "config", None), "max_position_embeddings", None)
        limit, where = prompt_token_limit(self.max_prompt_tokens, context, self.sampling.max_new_tokens)
        kept, skipped = admit(examples, ids, limit, where, self.long_prompts)
        self.skipped_prompts += skipped
        return kept

    @property
    def task(self) -> Any:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(dm, "task", None)

    @property
    def samples(self) -> SampleKind:
        """How this task's samples are generated, scored and logged (``rollout/kinds.py``; built in ``setup``)."""
        if self._samples is None:
            raise RuntimeError(
                "RLModule needs a datamodule with a `task` (epr_lightning.data.PromptDataModule)"
            )
        return self._samples

    @torch.no_grad()
    def rollout(self, prompts: AdmittedPrompts, num_samples: int) -> Rollout:
        self.engine.wake_up()
        rollout = self.samples.generate(prompts, self.sampling, num_samples, self.policy)
        self.engine.sleep()
        return rollout

    def policy_pass(
        self, tokens: TokenBatch, *, grad: bool, model: torch.nn.Module | None = None
    ) -> PolicyPass:
        """Log-probs, exact entropies and S of the completion tokens under the current policy (or ``model``)."""
        score = partial(
            score_tokens, self.built_policy if model is None else model, tokens.input_ids, tokens.attention_mask,
            tokens.loss_mask, temperature=self.sampling.temperature, chunk_size=self.logprob_chunk_size,
            fp32_head=self.fp32_lm_head, logprob_dtype=self.logprob_dtype,
        )  # fmt: skip
        return scored(score, grad=grad, master=self.master_weights if model is None else None)

    def log_iteration(
        self, record: StepRecord, rollout: Rollout, stats: UpdateStats, num_prompts: int
    ) -> None:
        metrics = {
            **rollout_metrics(record, rollout),
            "rollout/skipped_prompts": float(self.skipped_prompts),
            "train/iteration": float(self.iteration),
            "train/nonfinite_skips": float(self.nonfinite_total),
        }
        metrics.update({**stats.metrics, **self.samples.iteration_metrics(rollout)})
        if self.global_rank == 0:
            self.samples.log_sample(self.logger, rollout, self.iteration)
        bar = {"rollout/reward_mean", "policy/entropy"}
        for name, value in metrics.items():
            logged = torch.as_tensor(value, dtype=torch.float32)
            self.log(name, logged, on_step=True, prog_bar=name in bar, batch_size=num_prompts)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: list[Example], batch_idx: int) -> dict[str, Any]:
        prompts = self.admit_prompts(batch)
        rollout = self.rollout(prompts, self.val_num_generations)
        scores = self.samples.score(prompts.examples, rollout)
        tokens = rollout.to_batch(self.pad_id, self.device)
        h = validation_entropy(rollout, tokens, lambda: self.policy_pass(tokens, grad=False))  # [N, T]
        size = len(prompts.examples)
        metrics, groups = validation_results(self.tokenizer, prompts.examples, tokens, h, scores, rollout)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, on_epoch=True, on_step=False, batch_size=size, sync_dist=True)
        for name, value, n in self.samples.validation_metrics(rollout):  # e.g. success per difficulty
            self.log(f"val/{name}", value, on_epoch=True, on_step=False, batch_size=n, sync_dist=True)
        return {"groups": groups}  # per-prompt records, for callbacks.ValidationRecords

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["epr"] = {
            "iteration": self.iteration,
            "objective": self.objective.state_dict(),
            "engine": self.engine.state_dict(),
            "nonfinite_total": self.nonfinite_total,
            "skipped_prompts": self.skipped_prompts,
            "reward_failures": self.reward_failures.state_dict(),
            "rng": capture_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["epr"]
        self.iteration = int(state["iteration"])
        if self._trainer is None or self.trainer.state.fn == "fit":  # validate works under any method
            try:
                self.objective.load_state_dict(state["objective"])
            except KeyError as err:
                raise ValueError(
                    f"{err.args[0]}: resuming training needs the method config the checkpoint was trained with "
                    "(validate works under any)"
                ) from None
        self.engine.load_state_dict(state["engine"])
        self.policy_update.guard.total = int(state["nonfinite_total"])
        self.skipped_prompts = int(state["skipped_prompts"])
        self.reward_failures.load_state_dict(state["reward_failures"])
        restore_rng_state(state["rng"])

    def on_train_start(self) -> None:
        # A resumed or freshly built policy must be what the engine samples from.
        if self.iteration > 0:
            self.engine.push_weights(self.built_policy)
        elif self.validate_before_training:
            if run_validation_now(self.trainer):  # the iteration-0 baseline (controllers may take H* from it)
                metrics = self.trainer.callback_metrics
                self.initial_validation = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}

    def teardown(self, stage: str) -> None:
        self.engine.shutdown()
