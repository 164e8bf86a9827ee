"""Every shipped YAML composes with configs/tiny_cpu.yaml; method configs build the objective they claim and
never replace the base config's checkpoint callback (controllers come from ``RLModule.configure_callbacks``)."""

from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from epr_lightning.callbacks import AdaptiveEntropyBonus, ClipHigherController, REPOZetaController
from epr_lightning.cli import build_cli
from epr_lightning.objectives import (
    REPO,
    REPOD,
    REPOR,
    ClipCovLoss,
    DrGRPOAdvantage,
    EntropyBonus,
    GRPOAdvantage,
    GSPOLoss,
    KLCovLoss,
    PPOClipLoss,
    REINFORCELoss,
    RLOOAdvantage,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "tiny_cpu.yaml"
ALL_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml"))
METHODS = sorted((ROOT / "configs" / "method").glob("*.yaml"))


def compose(*configs, extra=()):
    args = []
    for c in configs:
        args += ["--config", str(c)]
    return build_cli([*args, "--trainer.logger", "false", *extra], run=False)


# configs/sft/ holds `epr-lightning sft` configs (another CLI; tests/test_sft.py composes them)
OTHER_CONFIGS = [p for p in ALL_CONFIGS if p.parent.name not in ("method", "sft")]


@pytest.mark.parametrize("config", OTHER_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_other_config_composes_with_tiny_cpu(config):
    cli = compose(BASE, config)
    assert cli.model is not None and cli.trainer is not None


EXPECTED = {
    # method: (loss type, transform types, term types, controller types)
    "grpo": (PPOClipLoss, [], [], []),
    "dr_grpo": (PPOClipLoss, [], [], []),
    "rloo": (REINFORCELoss, [], [], []),
    "dapo": (PPOClipLoss, [], [], []),
    "gspo": (GSPOLoss, [], [], []),
    "entropy_bonus": (PPOClipLoss, [], [EntropyBonus], []),
    "adaptive_entropy_bonus": (PPOClipLoss, [], [EntropyBonus], [AdaptiveEntropyBonus]),
    "clip_cov": (ClipCovLoss, [], [], []),
    "kl_cov": (KLCovLoss, [], [], []),
    "repo": (PPOClipLoss, [REPO], [], []),
    "repo_r": (PPOClipLoss, [REPOR], [], [REPOZetaController]),
    "grpo_repo_r": (PPOClipLoss, [REPOR], [], [REPOZetaController]),
    "repo_d": (PPOClipLoss, [REPOD], [], [REPOZetaController]),
    "adapo": (PPOClipLoss, [], [], [ClipHigherController]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_method_composes_builds_its_objective_and_keeps_the_checkpoint(name):
    cli = compose(BASE, ROOT / "configs" / "method" / f"{name}.yaml")
    # the composed config still lists exactly the base file's callbacks (a method file must not set them)
    assert cli.config["trainer"]["callbacks"] == compose(BASE).config["trainer"]["callbacks"]
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(checkpoints) == 1 and checkpoints[0].save_last
    loss, transforms, terms, controllers = EXPECTED[name]
    obj = cli.model.objective
    assert type(obj.loss) is loss
    assert [type(t) for t in obj.transforms] == transforms
    assert [type(t) for t in obj.terms] == terms
    assert [type(c) for c in cli.model.configure_callbacks()] == controllers
    for controller in cli.model.configure_callbacks():
        controller.bind(obj)  # the controller finds the piece it adapts


def test_every_method_yaml_is_covered():
    # every shipped method YAML, no more and no less (a new YAML needs a row in EXPECTED and ESTIMATORS)
    assert METHODS and {p.stem for p in METHODS} == set(EXPECTED) == set(ESTIMATORS)


# method: (advantage estimator, aggregation), as the README's method table states them
ESTIMATORS = {
    "grpo": (GRPOAdvantage, "seq_mean_token_mean"),
    "dr_grpo": (DrGRPOAdvantage, "seq_mean_token_sum_norm"),
    "rloo": (RLOOAdvantage, "seq_mean_token_mean"),
    "dapo": (RLOOAdvantage, "token_mean"),
    "gspo": (RLOOAdvantage, "seq_mean_token_mean"),
    "entropy_bonus": (RLOOAdvantage, "token_mean"),
    "adaptive_entropy_bonus": (RLOOAdvantage, "token_mean"),
    "clip_cov": (GRPOAdvantage, "token_mean"),
    "kl_cov": (GRPOAdvantage, "token_mean"),
    "repo": (RLOOAdvantage, "token_mean"),
    "repo_r": (RLOOAdvantage, "token_mean"),
    "grpo_repo_r": (GRPOAdvantage, "seq_mean_token_mean"),
    "repo_d": (RLOOAdvantage, "token_mean"),
    "adapo": (RLOOAdvantage, "token_mean"),
}


@pytest.mark.parametrize("base", [ROOT / "configs" / "demo.yaml", BASE], ids=["demo", "tiny_cpu"])
def test_every_method_resolves_to_the_same_update_schedule(base, tmp_path):
    # A base that sets its own schedule must not leak into the comparison: the method file comes last.
    odd = tmp_path / "odd_schedule.yaml"
    odd.write_text(
        "model:\n  init_args:\n    ppo_epochs: 3\n    minibatch_size: 5\n    num_minibatches: null\n"
    )
    schedules = {}
    for name in EXPECTED:
        for before in ([base], [base, odd]):
            cli = compose(*before, ROOT / "configs" / "method" / f"{name}.yaml")
            m = cli.model.policy_update.settings
            schedules[name, len(before)] = (m.ppo_epochs, m.num_minibatches, m.minibatch_size)
    shared = {v for (name, _), v in schedules.items() if name != "rloo"}
    assert shared == {(1, 2, None)}, schedules  # 2 optimizer steps per rollout for every PPO-family method
    assert {schedules["rloo", 1], schedules["rloo", 2]} == {(1, 1, None)}  # strictly on-policy


def test_demo_is_grpo_exactly():
    demo, grpo = (
        compose(ROOT / "configs" / "demo.yaml").model,
        compose(ROOT / "configs" / "demo.yaml", ROOT / "configs" / "method" / "grpo.yaml").model,
    )
    for m in (demo.policy_update.settings, grpo.policy_update.settings):
        assert (m.ppo_epochs, m.num_minibatches, m.minibatch_size) == (1, 2, None)
    assert demo.objective.loss.state_dict() == grpo.objective.loss.state_dict()
    assert type(demo.objective.advantage) is type(grpo.objective.advantage) is GRPOAdvantage
    assert demo.objective.aggregation == grpo.objective.aggregation


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_method_advantage_estimator_and_aggregation(name):
    obj = compose(BASE, ROOT / "configs" / "method" / f"{name}.yaml").model.objective
    estimator, aggregation = ESTIMATORS[name]
    assert type(obj.advantage) is estimator and obj.aggregation == aggregation


def test_dr_grpo_normalises_by_the_generation_budget():
    model = compose(BASE, ROOT / "configs" / "method" / "dr_grpo.yaml").model
    assert model.objective.norm_length == model.sampling.max_new_tokens == 12


def test_clip_cov_follows_cui_et_al():
    loss = compose(BASE, ROOT / "configs" / "method" / "clip_cov.yaml").model.objective.loss
    assert (loss.base.eps_low, loss.base.eps_high, loss.base.dual_clip) == (1.0, 1.0, 10.0)
    assert (loss.clip_ratio, loss.cov_low, loss.cov_high) == (2e-4, 1.0, 5.0)


def test_method_specific_settings(tmp_path):
    def model(name, *before):
        return compose(BASE, *before, ROOT / "configs" / "method" / f"{name}.yaml").model

    epochs = tmp_path / "two_epochs.yaml"
    epochs.write_text("model:\n  init_args:\n    ppo_epochs: 2\n    minibatch_size: 2\n")
    rloo = model("rloo", epochs)  # the method file comes after: it resets the update schedule
    assert (
        isinstance(rloo.objective.advantage, RLOOAdvantage)
        and rloo.policy_update.settings.ppo_epochs == 1
        and rloo.policy_update.settings.minibatch_size is None
        and rloo.policy_update.settings.num_minibatches == 1
    )
    dapo = model("dapo").objective
    assert (dapo.loss.eps_low, dapo.loss.eps_high, dapo.aggregation) == (0.2, 0.28, "token_mean")
    repo_d = model("repo_d").configure_callbacks()[0]
    assert (repo_d.zeta_min, repo_d.zeta_max) == (1e-3, 10.0)
    repo_r = model("repo_r")
    assert repo_r.objective.transforms[0].zeta == 1e-3  # the paper's setting, chosen by the fair lab
    zeta_ctrl = repo_r.configure_callbacks()[0]
    assert (zeta_ctrl.zeta_min, zeta_ctrl.zeta_max, zeta_ctrl.sign_flip) == (1e-4, 0.05, True)
    floor = compose(BASE, ROOT / "configs" / "lab" / "fair" / "repo_r_floor.yaml").model  # the default before
    assert floor.objective.transforms[0].zeta == 0.2
    floor_ctrl = floor.configure_callbacks()[0]
    assert (floor_ctrl.zeta_min, floor_ctrl.zeta_max, floor_ctrl.tolerance, floor_ctrl.sign_flip) == (
        0.1,
        1.0,
        0.05,
        False,
    )
    adapo = model("adapo")
    assert adapo.configure_callbacks()[0].kappa == 1.25 and adapo.objective.loss.eps_high == 0.28


def test_controller_without_its_piece_fails_at_setup_naming_the_yaml(tmp_path):
    cli = compose(
        BASE,
        ROOT / "configs" / "method" / "grpo.yaml",
        extra=[
            "--model.init_args.controllers=[{class_path: epr_lightning.callbacks.REPOZetaController}]",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
        ],
    )
    with pytest.raises(ValueError, match="configs/method/repo_r.yaml"):
        cli.trainer.fit(cli.model, cli.datamodule)


# The fair lab compares each REPO-R file with the base it modifies: everything but the transform and its
# controller must be the base's (advantage, loss and its clip range, aggregation, schedule, extra terms).
SAME_BASE_PAIRS = [
    ("grpo", ROOT / "configs" / "method" / "grpo_repo_r.yaml"),
    ("dapo", ROOT / "configs" / "method" / "repo_r.yaml"),
    ("dapo", ROOT / "configs" / "lab" / "fair" / "repo_r_floor.yaml"),
    ("dapo", ROOT / "configs" / "lab" / "fair" / "repo_r_paper.yaml"),
    ("dapo", ROOT / "configs" / "lab" / "fair" / "repo_r_centred.yaml"),
]


def _objective_fingerprint(model):
    obj = model.objective
    loss = obj.loss
    return (
        type(obj.advantage).__name__,
        vars(obj.advantage),
        type(loss).__name__,
        {k: v for k, v in vars(loss).items() if not k.startswith("_")},
        obj.aggregation,
        [type(t).__name__ for t in obj.terms],
        (model.policy_update.settings.ppo_epochs, model.policy_update.settings.num_minibatches),
    )


@pytest.mark.parametrize("base,variant", SAME_BASE_PAIRS, ids=[p.stem for _, p in SAME_BASE_PAIRS])
def test_same_base_pairs_differ_only_by_the_transform(base, variant):
    base_model = compose(BASE, ROOT / "configs" / "method" / f"{base}.yaml").model
    model = compose(BASE, variant).model
    assert _objective_fingerprint(model) == _objective_fingerprint(base_model)
    assert [type(t) for t in model.objective.transforms] == [REPOR]
    assert not base_model.objective.transforms and not base_model.controllers
    assert [type(c) for c in model.controllers] == [REPOZetaController]


def test_sequential_task_b_rewards_only_the_tagged_answer_on_new_prompts():
    """The fair lab's task B: the behaviour it needs (an answer after 'Answer:') is what task A does not reward."""
    lab = ROOT / "configs" / "lab"
    task_a = compose(BASE, lab / "arithmetic.yaml").datamodule.task
    task_b = compose(BASE, lab / "arithmetic.yaml", lab / "fair" / "task_b_tagged.yaml").datamodule.task
    example = task_b.examples("val")[0]
    tagged, untagged = f"Answer: {example.answer}", f"The sum is {example.answer}"
    assert task_b.reward(example, tagged) == 1.0 and task_b.reward(example, untagged) == 0.0
    assert task_a.reward(example, tagged) == 1.0 and task_a.reward(example, untagged) == 1.0
    prompts_a = {e.prompt for e in task_a.examples("val")}
    prompts_b = [e.prompt for e in task_b.examples("val")]
    assert prompts_b != [e.prompt for e in task_a.examples("val")]
    assert any(p not in prompts_a for p in prompts_b)


def test_the_shipped_repo_r_is_the_fair_labs_paper_setting():
    """configs/method/repo_r.yaml ships what configs/lab/fair/repo_r_paper.yaml ran in the fair lab."""
    shipped = compose(BASE, ROOT / "configs" / "method" / "repo_r.yaml")
    lab = compose(BASE, ROOT / "configs" / "lab" / "fair" / "repo_r_paper.yaml")
    assert shipped.config["model"]["init_args"] == lab.config["model"]["init_args"]
