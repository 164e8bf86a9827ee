"""End to end through the CLI: a tiny model trains 2 iterations, writes logs, a checkpoint and finite metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from epr_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]


def scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run_dir.rglob("events.out.tfevents*"))
    assert files, f"no TensorBoard event file under {run_dir}"
    out: dict[str, list[float]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def tiny_args(command: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        command,
        "--config",
        str(ROOT / "configs/tiny_cpu.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        *extra,
    ]


def fit_tiny(tmp_path: Path, *extra: str) -> Path:
    main(tiny_args("fit", tmp_path, *extra))
    return tmp_path / "runs"


def test_fit_two_iterations_writes_logs_checkpoint_and_finite_metrics(tmp_path):
    runs = fit_tiny(tmp_path)
    values = scalars(runs)
    for tag in (
        "rollout/reward_mean",
        "policy/entropy",
        "policy/entropy_mc",
        "loss/pg",
        "policy/clipfrac_upper",
        "policy/clipfrac_lower",
        "train/grad_norm",
        "val/pass@1",
        "val/entropy",
    ):
        assert tag in values, f"{tag} not logged; have {sorted(values)}"
        assert all(math.isfinite(v) for v in values[tag]), tag
    assert len(values["rollout/reward_mean"]) == 2  # one point per rollout iteration
    assert values["train/iteration"] == [0.0, 1.0]
    ckpts = list(runs.rglob("last.ckpt"))
    assert len(ckpts) == 1
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    assert state["epr"]["iteration"] == 2
    assert state["global_step"] == 2  # manual optimization: one optimizer step per iteration here
    assert any(k.startswith("policy.") for k in state["state_dict"])
    assert list(runs.rglob("config.yaml"))


def steps_of(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: list[int] = []
    for f in sorted(run_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        steps += [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
    return steps


def test_validation_runs_before_the_first_update(tmp_path):
    # tiny_cpu validates at the end of its epoch (step 1); the iteration-0 baseline adds step 0, whose entropy is
    # the untrained policy's: equal to a run that validates the same prompts without training at all.
    runs = fit_tiny(tmp_path / "a")
    assert steps_of(runs, "val/pass@1") == [0, 1]
    untrained = fit_tiny(tmp_path / "b", "--model.init_args.optimizer.init_args.lr", "0")
    assert scalars(runs)["val/entropy"][0] == pytest.approx(scalars(untrained)["val/entropy"][0], abs=1e-6)
    off = fit_tiny(tmp_path / "c", "--model.init_args.validate_before_training", "false")
    assert steps_of(off, "val/pass@1") == [1]


def test_first_on_policy_ratio_is_exactly_one(tmp_path):
    # pi_old of the first minibatch is its own gradient pass (detached); a no-grad pass before the first step gives
    # pi_old of the other rows. Nothing has been updated when either runs, so the no-grad pass must agree exactly
    # with a gradient pass over the same tokens: every ratio exactly 1 (fp32 end to end).
    from epr_lightning.cli import build_cli

    cli = build_cli(
        [
            "--config",
            str(ROOT / "configs/tiny_cpu.yaml"),
            "--model.init_args.ppo_epochs",
            "2",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        run=False,
    )
    module, data = cli.model, cli.datamodule
    data.setup("fit")
    module.configure_model()
    module.engine.setup(module.policy, module.tokenizer)
    prompts = module.admit_prompts(data._train[:2])
    rollout = module.engine.generate(prompts.ids, module.sampling, 4, model=module.policy)
    tokens = rollout.to_batch(module.pad_id)
    old = module.policy_pass(tokens, grad=False)
    cur = module.policy_pass(tokens, grad=True)
    m = tokens.loss_mask.bool()
    ratio = torch.exp(cur.logp.detach() - old.logp)[m]
    assert torch.equal(ratio, torch.ones_like(ratio))


def test_validate_subcommand(tmp_path):
    main(tiny_args("validate", tmp_path))
    values = scalars(tmp_path / "runs")
    assert {"val/pass@1", "val/reward_mean", "val/entropy", "val/distinct_2"} <= set(values)


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--model.init_args.sampling.temperature", "0", "temperature"),
        ("--model.init_args.sampling.max_new_tokens", "0", "max_new_tokens"),
        ("--model.init_args.num_generations", "0", "num_generations"),
    ],
)
def test_invalid_values_are_named(tmp_path, capsys, flag, value, needle):
    with pytest.raises(SystemExit) as exc:
        fit_tiny(tmp_path, flag, value)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_plot_runs_from_two_real_tiny_runs(tmp_path):
    from conftest import load_tool

    plot_runs = load_tool("plot_runs")
    runs = []
    for name, extra in (("grpo", []), ("repo_r", ["--config", str(ROOT / "configs/method/repo_r.yaml")])):
        out = fit_tiny(tmp_path / name, *extra, "--trainer.limit_val_batches", "1")
        runs.append(str(out))
    assert plot_runs.main([*runs, "--out", str(tmp_path / "plots")]) in (0, None)
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"entropy.png", "reward.png", "reward_vs_entropy.png"} <= names, names
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_print_config_shows_composed_method(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/tiny_cpu.yaml"),
                "--config",
                str(ROOT / "configs/method/repo_r.yaml"),
                "--print_config",
            ]
        )
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "epr_lightning.objectives.REPOR" in out and "REPOZetaController" in out and "Checkpoint" in out


def test_kl_to_reference_runs_and_reference_is_not_checkpointed(tmp_path):
    runs = fit_tiny(
        tmp_path,
        "--model.init_args.objective.init_args.terms",
        "[{class_path: epr_lightning.objectives.KLPenalty, init_args: {coef: 0.1}}]",
        "--model.init_args.optimizer.init_args.lr",
        "0.05",
        "--trainer.limit_val_batches",
        "0",
    )
    values = scalars(runs)
    kl = values["policy/kl_ref"]
    assert kl[0] == 0.0  # the first update starts from the reference itself
    assert kl[1] > 0.0 and all(math.isfinite(v) for v in kl)  # after one step the policy has moved away
    state = torch.load(next(runs.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert not any("reference" in k for k in state["state_dict"])
