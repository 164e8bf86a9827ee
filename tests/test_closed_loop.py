"""Closed loop on the tiny random model + the toy CharacterTask: entropy dynamics under each method.

Setup (identical for every method): 62 rewarded characters (letters and digits) out of ~100, so the
best-reward policy still has log 62 = 4.13 nats of room; H0 ≈ 4.59 (near uniform); AdamW lr 1e-2; 4 prompts ×
4 samples × 12 tokens; 2 PPO epochs of 2 minibatches (so clipping binds and ADAPO's ε_high matters).

Measured on this setup (seed 0, 24 iterations; entropy at the end vs H0 = 4.592):
GRPO 2.03 (−56%); ADAPO κ=1.25 1.99 (−57%, ε_high saturated at 1.0); REPO-R with the paper's bounds
|ζ| ≤ 0.05: 1.59 (−65%, ζ saturated at +0.05); REPO-R with |ζ| ≤ 0.5: 3.17 (−31%).
At 20 iterations (the CI length), end entropy for seeds 0/1/2 (sampling + init seed): GRPO ≈2.0/2.57/2.88;
REPO-R |ζ|≤0.5 ≈3.2/3.02/3.01; REPO-R paper bounds 1.97/2.92/1.68; ADAPO 1.64/0.41/1.83.
So the controllers respond in the right direction, but on this toy neither REPO-R (paper bounds) nor ADAPO
holds entropy near H* = H0: the brief's ±15% / ±30% tracking claims are kept as an explicit xfail (slow).
"""

import warnings

import lightning.pytorch as pl
import pytest

from epr_lightning.cli import build_cli

ITERATIONS = 20
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
WIDE_REPO_R = (
    "--model.init_args.controllers=[{class_path: epr_lightning.callbacks.REPOZetaController, "
    "init_args: {zeta_min: 1.0e-3, zeta_max: 0.5, initial_zeta: 0.05}}]"
)


class Trace(pl.Callback):
    """Each iteration's entropy and the controller's coefficient that iteration used."""

    def __init__(self):
        self.entropy, self.coef, self.controller = [], [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.controllers:
            self.controller = pl_module.controllers[0]
            self.coef.append(self.controller.coef)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.entropy.append(outputs["record"].token_mean_entropy())


def run(method, tmp_path, iterations=ITERATIONS, seed=0, extra=()):
    cli = build_cli(
        [
            "--config",
            "configs/tiny_cpu.yaml",
            "--config",
            f"configs/method/{method}.yaml",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.default_root_dir",
            str(tmp_path),
            f"--seed_everything={seed}",
            f"--model.init_args.sampling.seed={seed}",  # the engine's sampling seed (seed_everything does not set it)
            f"--model.init_args.policy.init_args.seed={seed}",  # the tiny model's initialisation
            "--data.init_args.task",
            "epr_lightning.tasks.CharacterTask",
            f"--data.init_args.task.init_args.target_chars={ALNUM}",
            "--data.init_args.batches_per_epoch",
            str(iterations),
            "--model.init_args.optimizer.init_args.lr=1e-2",
            "--model.init_args.ppo_epochs=2",
            "--model.init_args.minibatch_size=8",
            *extra,
        ],
        run=False,
    )
    trace = Trace()
    cli.trainer.callbacks.append(trace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.trainer.fit(cli.model, cli.datamodule)
    return trace


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("closed_loop")
    return {
        "grpo": run("grpo", root),
        "repo_r": run("repo_r", root),
        "repo_r_wide": run("repo_r", root, extra=[WIDE_REPO_R]),
        "adapo": run("adapo", root),
    }


def test_grpo_entropy_collapses(runs):
    h = runs["grpo"].entropy
    assert len(h) == ITERATIONS
    assert h[-1] < 0.7 * h[0], f"GRPO entropy {h[0]:.3f} -> {h[-1]:.3f}"


def test_every_method_starts_from_the_same_policy(runs):
    first = [t.entropy[0] for t in runs.values()]
    assert max(first) - min(first) < 1e-6


def test_controllers_push_their_knob_toward_more_entropy_while_below_target(runs):
    # entropy falls below H* = H0 in every run, so ζ must climb to +ζ_max and ε_high to its cap
    repo = runs["repo_r"]
    assert repo.coef[0] == 1e-3 and repo.coef[-1] == pytest.approx(0.05)
    assert repo.controller.last_entropy < repo.controller.initial_entropy == pytest.approx(repo.entropy[0])
    assert runs["repo_r_wide"].coef[-1] == pytest.approx(0.5)
    eps = runs["adapo"].coef
    assert eps[0] == pytest.approx(0.28) and eps[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(eps[:-1], eps[1:], strict=True))  # entropy stayed below H*: ε_high only rose


def test_repo_r_with_a_wide_zeta_range_preserves_entropy_against_grpo(runs):
    grpo, repo = runs["grpo"].entropy[-1], runs["repo_r_wide"].entropy[-1]
    # seed 0 margin is > 0.5 nats; across seeds 1/2 it shrinks to 0.45/0.13 (see the module docstring)
    assert repo > grpo, f"REPO-R(|ζ|≤0.5) {repo:.3f} vs GRPO {grpo:.3f}"
    assert repo > 0.6 * runs["repo_r_wide"].entropy[0]


@pytest.mark.slow
@pytest.mark.xfail(
    reason="measured on this toy (seed 0, 24 it.): REPO-R paper bounds ends at 1.59 vs H*=4.59 (−65%), "
    "ADAPO at 1.99 (−57%); the reward pulls harder than |ζ|≤0.05 or ε_high≤1 can push back",
    strict=False,
)
@pytest.mark.parametrize("seed", [0, 1])
def test_tracking_claims_of_the_brief(tmp_path, seed):
    repo = run("repo_r", tmp_path, iterations=30, seed=seed)
    adapo = run("adapo", tmp_path, iterations=30, seed=seed)
    h_star = repo.entropy[0]
    assert abs(repo.entropy[-1] - h_star) <= 0.15 * h_star
    assert abs(adapo.entropy[-1] - h_star) <= 0.30 * h_star
