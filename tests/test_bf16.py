"""bf16 compute with fp32 master weights (``model.compute_dtype: bfloat16``, ``epr_lightning/master_weights.py``).

Tiny model from a config, on the CPU: the log-probs stay fp32 and near the fp32 path, the optimizer steps fp32
masters exactly as fp32 AdamW would and the working weights are those masters rounded to bf16, a resume restores
the masters exactly, the precision audit's counters, LoRA (bf16 adapters with fp32 masters on a frozen bf16
base), and the settings refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from epr_lightning.callbacks import PrecisionAudit
from epr_lightning.lora import LoRAConfig
from epr_lightning.master_weights import STATE_KEY, MasterWeights, build_optimizer
from epr_lightning.models import TinyModel
from epr_lightning.module import RLModule
from epr_lightning.objectives import PPOClipLoss
from epr_lightning.objectives.base import PolicyBatch
from epr_lightning.rollout.base import TokenBatch
from epr_lightning.testing.closed_loop import quiet_tiny_args
from epr_lightning.update import NonFiniteGuard, Optimization, optimizer_step

BF16 = "--model.init_args.compute_dtype=bfloat16"


def _tokens(vocab: int, rows: int = 4, width: int = 14) -> TokenBatch:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, vocab, (rows, width), generator=g)
    mask = torch.zeros(rows, width)
    mask[:, 5:] = 1.0
    mask[1, 11:] = 0.0  # rows of different lengths
    return TokenBatch(ids, torch.ones_like(ids), mask, torch.zeros(rows, width), torch.arange(rows) // 2)


def _module(**kwargs) -> RLModule:
    module = RLModule(policy=TinyModel(hidden_size=64, num_layers=2), **kwargs)
    module.configure_model()  # no trainer: no mesh, the policy on the CPU
    return module


def test_bf16_weights_give_fp32_logprobs_and_entropies_near_the_fp32_path() -> None:
    fp32, bf16 = _module(), _module(compute_dtype="bfloat16")
    assert fp32.master_weights is None
    mw = bf16.master_weights
    assert mw is not None
    assert {p.dtype for p in bf16.built_policy.parameters()} == {torch.bfloat16}
    # the masters are the fp32 initial weights themselves (copied before the cast), not bf16 values upcast
    for (name, p32), master in zip(fp32.built_policy.named_parameters(), mw.masters, strict=True):
        assert master.dtype == torch.float32 and torch.equal(master, p32), name
    assert any(not torch.equal(m, m.bfloat16().float()) for m in mw.masters)
    tokens = _tokens(len(fp32.tokenizer))
    mask = tokens.loss_mask > 0
    ref = fp32.policy_pass(tokens, grad=False)
    low = bf16.policy_pass(tokens, grad=True)
    assert low.logp.dtype == low.entropy.dtype == torch.float32
    assert low.logp.requires_grad and low.logp_fp32 is None  # no fp32 pass unless the audit asks for one
    # bf16 weights and activations, fp32 LM-head arithmetic: on this tiny model log π within 0.01 nats and H
    # within 1e-3 nats of the fp32 path (measured: 1.5e-3 and 4e-5), and not equal to it (bf16 did compute)
    dlogp = (low.logp - ref.logp)[mask].abs()
    dent = (low.entropy - ref.entropy)[mask].abs()
    assert 0 < dlogp.max() < 0.01 and dent.max() < 1e-3, (dlogp.max(), dent.max())
    assert (low.logp[~mask] == 0).all()
    # on audited iterations the same pass also scores the tokens on the fp32 masters: the fp32 path exactly
    mw.fp32_reference = True
    audited = bf16.policy_pass(tokens, grad=False)
    torch.testing.assert_close(audited.logp_fp32, ref.logp, rtol=0, atol=1e-6)
    torch.testing.assert_close(audited.logp, low.logp.detach(), rtol=0, atol=0)
    assert {p.dtype for p in bf16.built_policy.parameters()} == {torch.bfloat16}  # put back after the pass


def _grads_recorded(mw: MasterWeights, sink: list[torch.Tensor]):
    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        sink.extend(p.grad.float().clone() for p in mw.working)

    return backward


def test_update_steps_fp32_masters_by_adamw_and_rounds_the_working_weights() -> None:
    module = _module(compute_dtype="bfloat16")
    mw = module.master_weights
    assert mw is not None and len(mw.working) == len(list(module.built_policy.parameters()))
    opt = build_optimizer(module.built_policy, lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), mw)
    optimized = [p for g in opt.param_groups for p in g["params"]]
    assert all(a is b for a, b in zip(optimized, mw.masters, strict=True))  # the optimizer holds the masters
    assert all(m.dtype == torch.float32 for m in optimized)
    before = [m.clone() for m in mw.masters]
    tokens = _tokens(len(module.tokenizer))
    grads: list[torch.Tensor] = []
    optim = Optimization(opt, None, _grads_recorded(mw, grads), module.built_policy.parameters, mw)
    loss = -(module.policy_pass(tokens, grad=True).logp * tokens.loss_mask).sum() / tokens.loss_mask.sum()
    norm = optimizer_step(optim, loss, 0.5, NonFiniteGuard(3), iteration=0)
    # the fp32 result: the same gradients, norm and clip in fp32, one AdamW step on fp32 copies of the masters
    ref = [b.clone() for b in before]
    for r, g in zip(ref, grads, strict=True):
        r.grad = g
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1).step()
    assert norm == pytest.approx(float(ref_norm), rel=1e-6) and norm > 0.5  # the clip bound
    for master, r, b in zip(mw.masters, ref, before, strict=True):
        assert torch.equal(master, r)
        assert not torch.equal(master, b)
    for p, master in zip(mw.working, mw.masters, strict=True):
        assert p.dtype == torch.bfloat16 and torch.equal(p, master.bfloat16())
        assert p.grad is None and master.grad is not None and master.grad.dtype == torch.float32
    # steps smaller than a bf16 ulp accumulate in the masters instead of being rounded away
    assert any(not torch.equal(m, m.bfloat16().float()) for m in mw.masters)


def _bf16_run(root: Path, iterations: int, *extra: str) -> list[str]:
    return quiet_tiny_args(
        root, "grpo", BF16,
        "--data.init_args.task", "epr_lightning.tasks.CharacterTask",
        f"--data.init_args.batches_per_epoch={iterations}",
        "--model.init_args.ppo_epochs=2",
        f"--model.init_args.lr_scheduler={SCHEDULE}",
        "--model.init_args.optimizer.init_args.lr=3e-3",
        "--model.init_args.sampling.temperature=0.7",
        *extra,
    )  # fmt: skip


RESUME_TAGS = ("loss/pg", "train/grad_norm", "policy/ratio_max", "policy/approx_kl", "train/lr")
SCHEDULE = json.dumps(
    {"class_path": "torch.optim.lr_scheduler.LinearLR", "init_args": {"end_factor": 0.1, "total_iters": 16}}
)


def test_resume_restores_the_fp32_masters_and_reproduces_the_straight_run(tmp_path: Path) -> None:
    from epr_lightning.cli import build_cli
    from epr_lightning.testing.closed_loop import EntropyTrace

    def fit(args: list[str], ckpt_path: str | None = None) -> EntropyTrace:
        cli = build_cli(args, run=False)
        trace = EntropyTrace()
        cli.trainer.callbacks.append(trace)  # type: ignore[attr-defined]
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
        return trace

    ckpts = tmp_path / "ckpt"
    saving = json.dumps(
        {
            "class_path": "epr_lightning.checkpointing.RolloutCheckpoint",
            "init_args": {"dirpath": str(ckpts), "every_n_iterations": 1, "save_top_k": -1},
        }
    )
    straight = fit(
        _bf16_run(tmp_path / "a", 4, "--trainer.enable_checkpointing=true", f"--trainer.callbacks+={saving}")
    )
    saved = sorted(p.name for p in ckpts.glob("*.ckpt"))
    at2 = next(ckpts / n for n in saved if "2" in n and "last" not in n)
    state = torch.load(at2, map_location="cpu", weights_only=False)
    masters = state["optimizer_states"][0][STATE_KEY]
    weights = [v for k, v in state["state_dict"].items() if k.startswith("policy.")]
    assert all(m.dtype == torch.float32 for m in masters) and all(w.dtype == torch.bfloat16 for w in weights)
    # the masters hold what bf16 weights cannot: re-deriving them from the weights would lose it
    assert any(not torch.equal(m, m.bfloat16().float()) for m in masters)
    # the resumed run has the same checkpoint callback (Lightning restores its state), in another folder
    saving_b = saving.replace(str(ckpts), str(tmp_path / "ckpt_b"))
    resumed = fit(
        _bf16_run(
            tmp_path / "b", 4, "--trainer.enable_checkpointing=true", f"--trainer.callbacks+={saving_b}"
        ),
        ckpt_path=str(at2),
    )
    assert len(straight.metrics) == 4 and len(resumed.metrics) == 2
    assert len({round(m["loss/pg"], 6) for m in straight.metrics}) > 1  # the updates changed the policy
    assert (
        len({m["train/lr"] for m in straight.metrics}) == 4
    )  # the schedule (on the masters' optimizer) moved
    for tag in RESUME_TAGS:
        for i, got in enumerate(resumed.metrics, start=2):
            assert got[tag] == pytest.approx(straight.metrics[i][tag], abs=1e-6, rel=1e-6), (tag, i)
    assert resumed.entropy == pytest.approx(straight.entropy[2:], abs=1e-6)
    assert resumed.reward == pytest.approx(straight.reward[2:], abs=1e-6)


def test_audit_counters_on_a_hand_made_batch() -> None:
    # |log π(bf16 compute) − log π(fp32)| on the masked tokens 0.0625, 0, 0.25 (the last position is off the mask)
    logp = torch.tensor([[-1.0, -2.5, -0.25, 0.0]])
    fp32 = torch.tensor([[-1.0625, -2.5, -0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gap = PrecisionAudit.fp32_gap(logp, fp32, mask)
    assert gap["precision/fp32_logp_absdiff_mean"] == pytest.approx(0.3125 / 3)
    assert gap["precision/fp32_logp_absdiff_max"] == pytest.approx(0.25)
    # clip decisions (ε = 0.2) of the bf16-compute ratio vs the fp32 one, A = +, +, −, −, + (last off the mask):
    # 1.25 vs 1.15 (clipped vs not), 1.1 vs 1.1 (neither), 0.75 vs 0.85 (clipped vs not), 0.9 vs 0.7 (not vs
    # clipped): 3 of 4 tokens flip
    r16 = torch.tensor([[1.25, 1.1, 0.75, 0.9, 2.0]])
    r32 = torch.tensor([[1.15, 1.1, 0.85, 0.7, 1.0]])
    old = torch.full((1, 5), -1.0)
    batch = PolicyBatch(
        logp=old + r16.log(), old_logp=old, sampler_logp=old, advantages=torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]]),
        mask=torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]), entropy=torch.zeros(1, 5),
        logp_fp32=old + r32.log(), old_logp_fp32=old,
    )  # fmt: skip
    out = PPOClipLoss(eps_low=0.2, eps_high=0.2)(batch)
    assert out.metrics["clip_decision_diff"].item() == pytest.approx(0.75)
    # the audit asks for the fp32 pass every N iterations, and never outside the training step
    audit = PrecisionAudit(fp32_check_every_n=3)
    mw = SimpleNamespace(fp32_reference=False)
    for iteration, due in ((0, True), (1, False), (2, False), (3, True), (6, True)):
        audit.on_train_batch_start(None, SimpleNamespace(master_weights=mw, iteration=iteration), None, 0)
        assert mw.fp32_reference is due, iteration
        audit.on_train_batch_end(None, SimpleNamespace(master_weights=mw), None, None, 0)
        assert mw.fp32_reference is False
    PrecisionAudit(fp32_check_every_n=0).on_train_batch_start(
        None, SimpleNamespace(master_weights=mw, iteration=0), None, 0
    )
    assert mw.fp32_reference is False
    with pytest.raises(ValueError, match="fp32_check_every_n"):
        PrecisionAudit(fp32_check_every_n=-1)


def test_a_bf16_run_reports_clip_flips_and_tis_corrects_the_sampler_mismatch(tmp_path: Path) -> None:
    from epr_lightning.cli import build_cli
    from epr_lightning.testing.closed_loop import EntropyTrace

    args = _bf16_run(
        tmp_path, 2, "--model.init_args.num_minibatches=1", "--model.init_args.ppo_epochs=2",
        "--model.init_args.objective.init_args.loss.init_args.tis_cap=1.0005",
    )  # fmt: skip
    cli = build_cli(args, run=False)
    trace, audit = EntropyTrace(), PrecisionAudit(fp32_check_every_n=2)
    records = []

    class Keep(EntropyTrace):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            records.append(outputs["record"])

    cli.trainer.callbacks.extend([audit, trace, Keep()])  # type: ignore[attr-defined]
    cli.trainer.fit(cli.model, cli.datamodule)
    first, second = trace.metrics
    # iteration 0 was audited: the update scored its minibatches on the fp32 masters too
    assert 0.0 <= first["policy/clip_decision_diff"] <= 1.0
    assert "policy/clip_decision_diff" not in second
    assert records[0].old_logp_fp32 is not None and records[1].old_logp_fp32 is None
    m = records[0].loss_mask > 0
    gap = (records[0].old_logp - records[0].old_logp_fp32)[m].abs()
    assert 0 < gap.max() < 0.1
    # the HF sampler computes on the same bf16 weights (bf16 LM head): its log-probs differ from the trainer's
    for rec, metrics in zip(records, trace.metrics, strict=True):
        # rows whose advantage is 0 skip the gradient pass (update.py), so the step's TIS stats cover the others
        scored = rec.seq_advantages != 0
        scored = scored if scored.any() else torch.arange(len(scored)) == 0
        m = (rec.loss_mask > 0) & scored[:, None]
        d = (rec.old_logp - rec.sampler_logp)[m]
        assert d.abs().max() > 1e-4
        # TIS weights min(π_old/π_sampler, C) on every token: the first of the 2 epochs' steps is on-policy
        # (π = π_old), so their mean over the two steps is this one value
        w = d.double().exp().clamp_max(1.0005)
        assert metrics["policy/tis_weight_mean"] == pytest.approx(float(w.mean()), rel=1e-5)
        assert metrics["policy/tis_capped_frac"] == pytest.approx(
            float((d.double().exp() > 1.0005).double().mean())
        )
        assert 0 < metrics["policy/tis_capped_frac"] < 1


def test_a_nonfinite_gradient_leaves_masters_and_working_weights_untouched() -> None:
    module = _module(compute_dtype="bfloat16")
    mw = module.master_weights
    assert mw is not None
    opt = build_optimizer(module.built_policy, lambda p: torch.optim.AdamW(p, lr=1e-2), mw)
    masters = [m.clone() for m in mw.masters]
    working = [p.detach().clone() for p in mw.working]
    optim = Optimization(opt, None, lambda loss: loss.backward(), module.built_policy.parameters, mw)
    tokens = _tokens(len(module.tokenizer))
    loss = module.policy_pass(tokens, grad=True).logp.sum() * float("nan")
    guard = NonFiniteGuard(3)
    assert optimizer_step(optim, loss, 1.0, guard, iteration=0) is None and guard.total == 1
    assert all(torch.equal(a, b) for a, b in zip(mw.masters, masters, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(mw.working, working, strict=True))
    assert all(m.grad is None for m in mw.masters) and all(p.grad is None for p in mw.working)


def test_lora_in_bf16_computes_on_bf16_adapters_and_steps_their_fp32_masters() -> None:
    module = _module(
        compute_dtype="bfloat16", lora=LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    )
    mw = module.master_weights
    named = dict(module.built_policy.named_parameters())
    adapters = {n: p for n, p in named.items() if p.requires_grad}
    base = {n: p for n, p in named.items() if not p.requires_grad}
    # every weight computes in bf16 (fp32 adapters would make peft upcast each adapted layer's activations)
    assert adapters and all("lora_" in n and p.dtype == torch.bfloat16 for n, p in adapters.items())
    assert base and all(p.dtype == torch.bfloat16 for p in base.values())
    # ... and only the adapters have fp32 masters, which the optimizer steps instead of them
    assert mw is not None and [id(p) for p in mw.working] == [id(p) for p in adapters.values()]
    assert all(m.dtype == torch.float32 for m in mw.masters)
    base_before = {n: p.detach().clone() for n, p in base.items()}
    adapters_before = {n: p.detach().clone() for n, p in adapters.items()}
    opt = build_optimizer(module.built_policy, lambda p: torch.optim.AdamW(p, lr=1e-2), mw)
    assert all(
        a is b for a, b in zip([p for g in opt.param_groups for p in g["params"]], mw.masters, strict=True)
    )
    optim = Optimization(opt, None, lambda loss: loss.backward(), module.built_policy.parameters, mw)
    tokens = _tokens(len(module.tokenizer))
    for step in range(2):  # lora_B starts at 0: the second step moves lora_A too
        out = module.policy_pass(tokens, grad=True)
        assert out.logp.dtype == torch.float32
        loss = -(out.logp * tokens.loss_mask).sum() / tokens.loss_mask.sum()
        assert optimizer_step(optim, loss, 1.0, NonFiniteGuard(3), iteration=step) is not None
    for (n, p), m in zip(adapters.items(), mw.masters, strict=True):
        assert p.grad is None and m.grad is not None and m.grad.dtype == torch.float32, n
        assert not torch.equal(p, adapters_before[n]), n
        assert torch.equal(p, m.to(torch.bfloat16)), n  # the working adapters are the masters rounded
    for n, p in base.items():
        assert p.grad is None and p.dtype == torch.bfloat16 and torch.equal(p, base_before[n]), n


def test_precision_settings_that_do_not_compose_are_refused() -> None:
    with pytest.raises(ValueError, match="model.compute_dtype must be one of"):
        RLModule(compute_dtype="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs model.logprob_dtype: float32"):
        RLModule(compute_dtype="bfloat16", logprob_dtype="bfloat16")
    for precision, compute in (
        ("bf16-true", "float32"),
        ("bf16-true", "bfloat16"),
        ("bf16-mixed", "bfloat16"),
    ):
        with pytest.raises(
            ValueError, match="set model.compute_dtype: bfloat16 and keep trainer.precision: 32-true"
        ):
            MasterWeights.check_precision(compute, precision)
    MasterWeights.check_precision("bfloat16", "32-true")
    MasterWeights.check_precision("float32", "bf16-mixed")  # autocast over fp32 weights stays as it was
    with pytest.raises(ValueError, match="under FSDP2"):
        MasterWeights.for_policy(TinyModel().build()[0], "bfloat16", mesh=object())
    # fp32 weights and fp32 compute: nothing to do
    assert MasterWeights.for_policy(TinyModel().build()[0], "float32") is None
    # bf16 weights loaded by the policy source (``policy.dtype: bfloat16``) get masters copied from them
    model = TinyModel().build()[0].to(torch.bfloat16)
    mw = MasterWeights.for_policy(model, "float32")
    assert mw is not None and all(
        torch.equal(m, p.float()) for p, m in zip(mw.working, mw.masters, strict=True)
    )
    assert not math.isnan(sum(float(m.sum()) for m in mw.masters))
