"""Controller rules (docs/methods.md §6) and the callbacks' plumbing on a fake module."""

import warnings

import lightning.pytorch as pl
import pytest
import torch

from epr_lightning.callbacks import (
    AdaptiveEntropyBonus,
    ClipHigherController,
    FixedEntropy,
    REPOZetaController,
    adaptive_bonus_step,
    clip_higher_step,
    entropy_direction,
    zeta_step,
)
from epr_lightning.callbacks.control_rules import iteration_entropy
from epr_lightning.objectives import REPO, REPOD, REPOR, EntropyBonus, Objective, PPOClipLoss
from epr_lightning.record import StepRecord

ZMIN, ZMAX = 1e-4, 0.05
BELOW, ABOVE, EQUAL = (1.0, 2.0), (3.0, 2.0), (2.0, 2.0)  # (H, H*)


# -------------------------------------------------------------------------- ζ controller table (docs/methods.md §6.1)
@pytest.mark.parametrize(
    "zeta, where, expected",
    [
        (1e-3, BELOW, 2e-3),
        (1e-3, ABOVE, 5e-4),
        (1e-3, EQUAL, 1e-3),
        (0.04, BELOW, 0.05),  # cap
        (1e-4, ABOVE, -1e-4),  # sign flip
        (-1e-4, BELOW, 1e-4),  # sign flip
        (0.0, BELOW, 1e-4),
        (0.0, ABOVE, -1e-4),
        (-0.03, ABOVE, -0.05),  # cap
    ],
)
def test_zeta_step_reproduces_the_paper_table(zeta, where, expected):
    assert zeta_step(zeta, *where, ZMIN, ZMAX) == pytest.approx(expected, abs=1e-15)


def test_zeta_step_walks_the_signed_log_scale():
    # from +0.05 a run of "above" halves down to 1e-4 (0.05/2^9 = 9.8e-5 < 1e-4 -> flips), then doubles to -0.05
    z, path = 0.05, []
    for _ in range(20):
        z = zeta_step(z, *ABOVE, ZMIN, ZMAX)
        path.append(z)
    assert path[:3] == pytest.approx([0.025, 0.0125, 0.00625])
    flip = next(i for i, v in enumerate(path) if v < 0)
    assert path[flip] == -ZMIN and path[flip - 1] == pytest.approx(0.05 / 2**8)  # 1.95e-4, halving -> 9.8e-5
    assert path[-1] == -ZMAX and all(abs(v) >= ZMIN for v in path)


def test_zeta_step_without_sign_flip_stops_at_the_floor():
    # [zeta_min, zeta_max] = [0.1, 1.0]: above target halves down to the floor, never below or across zero
    assert zeta_step(0.2, 3.0, 2.0, 0.1, 1.0, sign_flip=False) == pytest.approx(0.1)
    assert zeta_step(0.1, 3.0, 2.0, 0.1, 1.0, sign_flip=False) == pytest.approx(0.1)
    assert zeta_step(0.1, 3.0, 2.0, 0.1, 1.0) == pytest.approx(-0.1)  # the paper's rule flips here
    assert zeta_step(0.1, 1.0, 2.0, 0.1, 1.0, sign_flip=False) == pytest.approx(0.2)
    assert zeta_step(0.8, 1.0, 2.0, 0.1, 1.0, sign_flip=False) == pytest.approx(1.0)
    assert zeta_step(0.3, 2.0, 2.0, 0.1, 1.0, sign_flip=False) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="sign_flip"):
        zeta_step(-0.2, 1.0, 2.0, 0.1, 1.0, sign_flip=False)


def test_floor_controller_never_turns_negative_and_warns_at_the_floor():
    readings = [2.0, 2.5, 2.5, 2.5, 2.5, 1.5]  # H* = 2; above the band four times, then below
    flipping = REPOR(zeta=0.2)
    drive(
        REPOZetaController(zeta_min=0.1, zeta_max=1.0), FakeModule(Objective(transforms=[flipping])), readings
    )
    assert flipping.zeta == pytest.approx(-0.2)  # 0.1 -> -0.1 -> -0.2 -> -0.4, then halves back to -0.2
    floor = REPOR(zeta=0.2)
    ctrl = REPOZetaController(zeta_min=0.1, zeta_max=1.0, sign_flip=False, saturation_patience=3)
    with pytest.warns(UserWarning, match="zeta_min"):
        drive(ctrl, FakeModule(Objective(transforms=[floor])), readings)
    assert floor.zeta == pytest.approx(0.2)  # 0.1, 0.1, 0.1, 0.1 (at the floor), then doubled
    with pytest.raises(ValueError, match="below zeta_min"):
        REPOZetaController(zeta_min=0.1, zeta_max=1.0, sign_flip=False, initial_zeta=0.05)


def test_tolerance_band_holds_the_coefficient():
    # |H - H*| = 0.05 <= 0.1 * 1.0 -> hold; 0.2 > 0.1 -> move
    assert entropy_direction(0.95, 1.0, tolerance=0.1) == 0
    assert entropy_direction(0.8, 1.0, tolerance=0.1) == 1
    assert entropy_direction(1.2, 1.0, tolerance=0.1) == -1
    assert zeta_step(1e-3, 0.95, 1.0, ZMIN, ZMAX, tolerance=0.1) == 1e-3


def test_clip_higher_rises_below_falls_above_and_stays_in_bounds():
    # 0.28 * 1.25 = 0.35 ; 0.28 / 1.25 = 0.224 ; 0.21 / 1.25 = 0.168 -> floor eps_low 0.2 ; 0.9*1.25 -> cap 1.0
    assert clip_higher_step(0.28, *BELOW, eps_low=0.2) == pytest.approx(0.35)
    assert clip_higher_step(0.28, *ABOVE, eps_low=0.2) == pytest.approx(0.224)
    assert clip_higher_step(0.28, *EQUAL, eps_low=0.2) == pytest.approx(0.28)
    assert clip_higher_step(0.21, *ABOVE, eps_low=0.2) == pytest.approx(0.2)
    assert clip_higher_step(0.9, *BELOW, eps_low=0.2, eps_high_max=1.0) == pytest.approx(1.0)
    assert clip_higher_step(0.28, *BELOW, eps_low=0.2, kappa=2.0) == pytest.approx(0.56)
    eps = 0.28
    for h in [1.0] * 30 + [3.0] * 30:
        eps = clip_higher_step(eps, h, 2.0, eps_low=0.2, eps_high_max=1.0)
        assert 0.2 <= eps <= 1.0


def test_adaptive_bonus_additive_steps_with_clipping():
    # 0.01 + 0.005 = 0.015 ; 0.01 - 0.005 = 0.005 ; 0.002 - 0.005 -> 0 ; 0.049 + 0.005 -> 0.05
    assert adaptive_bonus_step(0.01, *BELOW, delta=0.005, coef_max=0.05) == pytest.approx(0.015)
    assert adaptive_bonus_step(0.01, *ABOVE, delta=0.005, coef_max=0.05) == pytest.approx(0.005)
    assert adaptive_bonus_step(0.002, *ABOVE, delta=0.005, coef_max=0.05) == 0.0
    assert adaptive_bonus_step(0.049, *BELOW, delta=0.005, coef_max=0.05) == pytest.approx(0.05)


# -------------------------------------------------------------------------- callbacks on a fake module
def record(iteration, entropy_value, logp_value=-1.0):
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    return StepRecord(
        iteration=iteration,
        input_ids=torch.zeros(2, 3, dtype=torch.long),
        loss_mask=mask,
        group_index=torch.tensor([0, 0]),
        rewards=torch.zeros(2),
        correct=torch.zeros(2, dtype=torch.bool),
        seq_advantages=torch.zeros(2),
        token_advantages=torch.zeros(2, 3),
        entropy=torch.full((2, 3), entropy_value) * mask,
        old_logp=torch.full((2, 3), logp_value) * mask,
        sampler_logp=torch.zeros(2, 3),
        clip_upper=None,
        clip_lower=None,
        prompts=["p"],
        completions=["a", "b"],
        answers=[None, None],
        num_prompts=1,
        num_generations=2,
    )


class FakeModule:
    def __init__(self, objective):
        self.objective = objective
        self.device = torch.device("cpu")
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = float(value)


def drive(controller, module, entropies):
    controller.setup(None, module, "fit")
    controller.on_train_start(None, module)
    for i, h in enumerate(entropies):
        controller.on_train_batch_end(None, module, {"record": record(i, h)}, None, i)


def test_iteration_entropy_exact_and_mc():
    # 3 masked tokens with H = 2 -> 2 ; -log pi = 0.5 on each -> 0.5
    rec = record(0, 2.0, logp_value=-0.5)
    assert iteration_entropy(rec, "exact") == pytest.approx(2.0)
    assert iteration_entropy(rec, "mc") == pytest.approx(0.5)


def test_zeta_controller_measures_h_star_at_iteration0_and_writes_the_transform():
    repo_r = REPOR(zeta=1e-3)
    module = FakeModule(Objective(transforms=[repo_r]))
    ctrl = REPOZetaController()
    # iteration 0: H = H* = 2 -> unchanged; then below, below, above
    drive(ctrl, module, [2.0, 1.5, 1.5, 2.5])
    assert ctrl.initial_entropy == 2.0
    assert repo_r.zeta == pytest.approx(2e-3) and ctrl.coef == repo_r.zeta  # 1e-3 -> 2e-3 -> 4e-3 -> 2e-3
    assert module.logged["ctrl/zeta"] == pytest.approx(2e-3)
    assert module.logged["ctrl/target_entropy"] == 2.0
    assert module.logged["ctrl/entropy_error"] == pytest.approx(0.5)
    assert ctrl.updates == 4


def test_smoothing_averages_the_rollout_entropy_from_h_star_and_survives_a_resume():
    # H* = 2; rollouts read 2, 3, 1.8, 1.8. Each rollout alone: halve, double, double -> 2e-3.
    raw = REPOR(zeta=1e-3)
    drive(REPOZetaController(), FakeModule(Objective(transforms=[raw])), [2.0, 3.0, 1.8, 1.8])
    assert raw.zeta == pytest.approx(2e-3)
    # smoothing 0.5: the reading is 2, 2.5, 2.15, 1.975 -> halve, halve, double -> 5e-4
    repo_r = REPOR(zeta=1e-3)
    module = FakeModule(Objective(transforms=[repo_r]))
    ctrl = REPOZetaController(smoothing=0.5)
    drive(ctrl, module, [2.0, 3.0, 1.8, 1.8])
    assert repo_r.zeta == pytest.approx(5e-4)
    assert ctrl.smoothed_entropy == pytest.approx(1.975) and ctrl.last_entropy == pytest.approx(1.975)
    assert module.logged["ctrl/entropy_error"] == pytest.approx(-0.025, abs=1e-6)
    # the average starts from H*, not from the first rollout: H* = 1.8 (validation), first rollout 2.6 -> 2.2
    first = REPOZetaController(smoothing=0.5)
    val_module = FakeModule(Objective(transforms=[REPOR(zeta=1e-3)]))
    val_module.initial_validation = {"val/entropy": 1.8}
    drive(first, val_module, [2.6])
    assert first.smoothed_entropy == pytest.approx(2.2)
    # a resumed controller continues the average where it stopped
    resumed_objective = Objective(transforms=[REPOR(zeta=1e-3)])
    resumed_objective.load_state_dict(module.objective.state_dict())
    resumed = REPOZetaController(smoothing=0.5)
    resumed.load_state_dict(ctrl.state_dict())
    resumed_module = FakeModule(resumed_objective)
    resumed.setup(None, resumed_module, "fit")
    resumed.on_train_start(None, resumed_module)
    resumed.on_train_batch_end(None, resumed_module, {"record": record(4, 1.025)}, None, 4)
    assert resumed.smoothed_entropy == pytest.approx(1.5)
    assert resumed_objective.coefficient("zeta") == pytest.approx(1e-3)


def test_h_star_comes_from_the_iteration0_validation_when_there_is_one():
    # the module validated before its first update: H* is that entropy (1.8), not the first rollout's (2.0)
    repo_r = REPOR(zeta=1e-3)
    module = FakeModule(Objective(transforms=[repo_r]))
    module.initial_validation = {"val/entropy": 1.8, "val/pass@1": 0.5}
    ctrl = REPOZetaController()
    drive(ctrl, module, [2.0, 1.9])  # above H* twice: ζ halves twice
    assert ctrl.initial_entropy == 1.8 and module.logged["ctrl/target_entropy"] == pytest.approx(1.8)
    assert repo_r.zeta == pytest.approx(2.5e-4)
    # initial_entropy_from="rollout" keeps the paper's first-rollout reference; no validation falls back to it
    rollout = REPOZetaController(initial_entropy_from="rollout")
    drive(rollout, FakeModule(Objective(transforms=[REPOR(zeta=1e-3)])), [2.0])
    assert rollout.initial_entropy == 2.0
    fallback = REPOZetaController()
    drive(fallback, FakeModule(Objective(transforms=[REPOR(zeta=1e-3)])), [2.0])
    assert fallback.initial_entropy == 2.0
    with pytest.raises(ValueError, match="initial_entropy_from"):
        REPOZetaController(initial_entropy_from="val")


def test_zeta_controller_adapts_repo_d_and_repo_beta():
    repo_d = REPOD(zeta=1.0)
    drive(
        REPOZetaController(zeta_min=1e-3, zeta_max=10.0),
        FakeModule(Objective(transforms=[repo_d])),
        [2.0, 1.0],
    )
    assert repo_d.zeta == 2.0
    repo = REPO(beta=0.01)
    module = FakeModule(Objective(transforms=[repo]))
    drive(REPOZetaController(), module, [2.0, 3.0])
    assert repo.beta == pytest.approx(0.005) and "ctrl/beta" in module.logged


def test_initial_zeta_and_fixed_target():
    repo_r = REPOR(zeta=1e-3)
    drive(
        REPOZetaController(target=FixedEntropy(5.0), initial_zeta=0.01),
        FakeModule(Objective(transforms=[repo_r])),
        [2.0],
    )
    assert repo_r.zeta == pytest.approx(0.02)  # 2 < 5 at iteration 0 already -> doubled from the initial 0.01


def test_clip_higher_controller_adapts_ppo_eps_high():
    loss = PPOClipLoss(eps_low=0.2, eps_high=0.28)
    module = FakeModule(Objective(loss=loss))
    drive(ClipHigherController(), module, [2.0, 1.0, 1.0])
    assert loss.eps_high == pytest.approx(0.28 * 1.25**2)
    assert module.logged["ctrl/eps_high"] == pytest.approx(0.4375)


def test_clip_higher_saturation_warns_once_per_episode_and_logs():
    loss = PPOClipLoss(eps_low=0.2, eps_high=0.28)
    module = FakeModule(Objective(loss=loss))
    ctrl = ClipHigherController(kappa=2.0, saturation_patience=3)
    ctrl.setup(None, module, "fit")
    ctrl.on_train_start(None, module)
    # H* = 2 at iteration 0; then always below: 0.28 -> 0.56 -> 1.0 (cap, iteration 2) -> 1.0 -> 1.0 -> ...
    saturated, messages = [], []
    for i, h in enumerate([2.0] + [1.0] * 7 + [3.0] + [1.0] * 3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ctrl.on_train_batch_end(None, module, {"record": record(i, h)}, None, i)
        saturated.append(module.logged["ctrl/saturated"])
        messages += [(i, str(w.message)) for w in caught]
    # at the cap from iteration 2 on: warn at the 3rd consecutive iteration (4) and not again in that episode;
    # iteration 8 (above H*) leaves the cap (1.0 -> 0.5) and resets; 9 is back at the cap: a new episode warns at 11
    assert saturated == [0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    assert [i for i, _ in messages] == [4, 11]
    text = messages[0][1]
    assert "eps_high" in text and "1 (eps_high_max)" in text and "below the target (2)" in text
    assert "repo_r.yaml" in text
    assert ctrl.state_dict()["saturated_iterations"] == 3


def test_zeta_saturation_in_the_lowering_direction_and_disabled_patience():
    repo_r = REPOR(zeta=-0.05)
    module = FakeModule(Objective(transforms=[repo_r]))
    with pytest.warns(UserWarning, match=r"zeta has been at its bound -0.05 \(zeta_max\).*above the target"):
        drive(REPOZetaController(saturation_patience=2), module, [2.0, 3.0, 3.0])
    quiet = REPOZetaController(saturation_patience=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drive(quiet, FakeModule(Objective(transforms=[REPOR(zeta=-0.05)])), [2.0] + [3.0] * 10)
    assert quiet.saturated_iterations == 10


def test_adaptive_bonus_controller_adapts_the_entropy_term():
    bonus = EntropyBonus(coef=0.0)
    drive(AdaptiveEntropyBonus(delta=0.01), FakeModule(Objective(terms=[bonus])), [2.0, 1.0, 1.0, 3.0])
    assert bonus.coef == pytest.approx(0.01)  # 0 -> 0 -> .01 -> .02 -> .01
    # H* (the iteration-0 entropy, 2.0) reaches the term, which gates the bonus with it (Skywork-OR1's rule)
    assert bonus.target == pytest.approx(2.0)
    assert Objective(terms=[bonus]).state_dict()["terms.0"] == {"coef": pytest.approx(0.01), "target": 2.0}


def test_missing_piece_names_the_yaml():
    with pytest.raises(ValueError, match="configs/method/repo_r.yaml"):
        REPOZetaController().setup(None, FakeModule(Objective()), "fit")
    with pytest.raises(ValueError, match="adaptive_entropy_bonus.yaml"):
        AdaptiveEntropyBonus().setup(None, FakeModule(Objective()), "fit")
    with pytest.raises(ValueError, match="several"):
        REPOZetaController().setup(None, FakeModule(Objective(transforms=[REPOR(), REPOD()])), "fit")


def test_out_of_range_starting_zeta_points_to_repo_d_yaml():
    module = FakeModule(Objective(transforms=[REPOD(zeta=1.0)]))
    ctrl = REPOZetaController()  # REPO-R bounds, |zeta| <= 0.05
    ctrl.setup(None, module, "fit")
    with pytest.raises(ValueError, match="repo_d.yaml"):
        ctrl.on_train_start(None, module)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: REPOZetaController(zeta_min=0.1, zeta_max=0.05), "zeta_min must be < zeta_max"),
        (lambda: REPOZetaController(zeta_min=0.0), "zeta_min"),
        (lambda: REPOZetaController(initial_zeta=0.5), "initial_zeta"),
        (lambda: REPOZetaController(entropy_source="sampled"), "entropy_source"),
        (lambda: REPOZetaController(tolerance=-1.0), "tolerance"),
        (lambda: ClipHigherController(kappa=1.0), "kappa"),
        (lambda: AdaptiveEntropyBonus(delta=0.0), "delta"),
        (lambda: AdaptiveEntropyBonus(coef_min=0.1, coef_max=0.05), "coef_min"),
        (lambda: ClipHigherController(saturation_patience=-1), "saturation_patience"),
        (lambda: REPOZetaController(smoothing=1.0), "smoothing"),
        (lambda: AdaptiveEntropyBonus(smoothing=-0.1), "smoothing"),
    ],
)
def test_bad_controller_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_state_round_trip_keeps_one_owner_of_the_coefficient():
    repo_r = REPOR(zeta=1e-3)
    objective = Objective(transforms=[repo_r])
    ctrl = REPOZetaController()
    drive(ctrl, FakeModule(objective), [2.0, 1.0, 1.0])
    state = ctrl.state_dict()  # the controller's own state only: ζ is the objective's
    assert state == {
        "initial_entropy": 2.0,
        "updates": 3,
        "last_entropy": 1.0,
        "last_target": 2.0,
        "saturated_iterations": 0,
        "smoothed_entropy": None,
    }
    assert objective.state_dict()["transforms.0"] == {"zeta": 4e-3}
    fresh_objective = Objective(transforms=[REPOR(zeta=1e-3)])  # built from YAML, then restored
    fresh_objective.load_state_dict(objective.state_dict())
    fresh = REPOZetaController(initial_zeta=1e-3)  # a starting value does not override a restored one
    fresh.load_state_dict(state)
    module = FakeModule(fresh_objective)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.setup(None, module, "fit")
        fresh.on_train_start(None, module)
    assert fresh_objective.coefficient("zeta") == fresh.coef == 4e-3
    fresh.on_train_batch_end(None, module, {"record": record(3, 1.0)}, None, 3)
    assert fresh_objective.coefficient("zeta") == 8e-3 and fresh.initial_entropy == 2.0  # H* not re-measured


def test_state_keys_distinguish_named_controllers():
    assert REPOZetaController().state_key == "REPOZetaController"
    named = ClipHigherController(name="adapo")
    assert (
        named.state_key == "ClipHigherController[adapo]" and named.metric("eps_high") == "ctrl/adapo/eps_high"
    )


# -------------------------------------------------------------------------- a real Lightning checkpoint
class ZetaSpy(pl.Callback):
    """ζ in the objective when each iteration starts, and each iteration's exact entropy."""

    def __init__(self):
        self.zeta_at_start, self.entropy = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.zeta_at_start.append(pl_module.objective.transforms[0].zeta)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.entropy.append(iteration_entropy(outputs["record"], "exact"))


def test_state_round_trip_through_a_real_checkpoint(tmp_path):
    from epr_lightning.cli import build_cli

    args = [
        "--config",
        "configs/tiny_cpu.yaml",
        "--config",
        "configs/method/repo_r.yaml",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.init_args.task",
        "epr_lightning.tasks.CharacterTask",
        "--data.init_args.batches_per_epoch",
        "2",
        "--model.init_args.optimizer.init_args.lr=1e-2",
    ]
    first = build_cli(args, run=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first.trainer.fit(first.model, first.datamodule)
    ckpt_path = next(tmp_path.rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu")
    saved = ckpt["callbacks"]["REPOZetaController"]
    saved_zeta = ckpt["epr"]["objective"]["transforms.0"]["zeta"]
    controller = first.model.controllers[0]
    assert "coef" not in saved and saved_zeta == controller.coef  # the objective alone saves ζ
    assert saved["updates"] == 2 and saved["initial_entropy"] == controller.initial_entropy is not None
    assert saved["initial_entropy"] > 0

    second = build_cli([*args, "--trainer.max_epochs", "2"], run=False)
    spy = ZetaSpy()
    second.trainer.callbacks.append(spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second.trainer.fit(second.model, second.datamodule, ckpt_path=str(ckpt_path))
    resumed = second.model.controllers[0]
    assert spy.zeta_at_start[0] == saved_zeta  # the first resumed iteration used the saved ζ
    # its update followed the rule from the saved ζ and the saved H* (not a re-measured one)
    assert spy.zeta_at_start[1] == pytest.approx(
        zeta_step(
            saved_zeta,
            spy.entropy[0],
            saved["initial_entropy"],
            resumed.zeta_min,
            resumed.zeta_max,
            resumed.tolerance,
            resumed.sign_flip,
        )
    )
    assert resumed.initial_entropy == saved["initial_entropy"] and resumed.updates == 4
