"""Closed loop on the tiny random model + the toy CharacterTask: entropy dynamics under each method.

Setup (identical for every method, ``epr_lightning/testing/closed_loop.py``): 62 rewarded characters (letters and
digits) out of ~100; 4 prompts × 4 samples × 12 tokens; 2 PPO epochs of 2 minibatches; AdamW lr 2e-4; sampling
(and log-prob / entropy) temperature 0.1, so H0 ≈ 3.4 nats. Each method otherwise as its YAML says. REPO-R runs
with the floor on ζ, ``configs/lab/fair/repo_r_floor.yaml`` (ζ ∈ [0.1, 1.0], the default before the fair lab), and
the test reads its controller settings from that file: it is the setting that holds the entropy, here as on
SmolLM2. The shipped ``configs/method/repo_r.yaml`` (the paper's |ζ| ≤ 0.05) does not hold it, in the toy either
(0.47–0.63·H*), and on SmolLM2 the fair lab found the floor's cost too high (docs/results.md).

The measured numbers (end entropy / H* per method and seed, the paper's ζ bounds, and the investigation of why
ADAPO does not hold ±30% here, hence its strict xfail) are in docs/results.md, "The closed-loop toy".
"""

from pathlib import Path

import pytest
import yaml

from epr_lightning.testing.closed_loop import run_quiet, toy_args

ITERATIONS = 20
REPO_R_YAML = Path(__file__).resolve().parents[1] / "configs" / "lab" / "fair" / "repo_r_floor.yaml"
FLOOR = "configs/lab/fair/repo_r_floor.yaml"  # the toy runs it in place of configs/method/repo_r.yaml


def floor_repo_r() -> tuple[float, dict]:
    """The floor REPO-R's starting ζ (its transform's) and its ζ controller's init_args, parsed from the YAML."""
    init = yaml.safe_load(REPO_R_YAML.read_text())["model"]["init_args"]
    (transform,) = [
        t for t in init["objective"]["init_args"]["transforms"] if t["class_path"].endswith("REPOR")
    ]
    (controller,) = [c for c in init["controllers"] if c["class_path"].endswith("REPOZetaController")]
    args = controller["init_args"]
    return float(args.get("initial_zeta", transform["init_args"]["zeta"])), args


def run(method, tmp_path, iterations=ITERATIONS, seed=0, extra=()):
    return run_quiet(toy_args(tmp_path, method, seed, iterations, *extra))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("closed_loop")
    return {
        "grpo": run("grpo", root),
        "repo_r": run(FLOOR, root),
        "adapo": run("adapo", root),
    }


def test_every_method_runs_the_same_steps_from_the_same_policy(runs):
    assert {len(t.entropy) for t in runs.values()} == {ITERATIONS}
    first = [t.entropy[0] for t in runs.values()]
    assert max(first) - min(first) < 1e-6


def test_grpo_entropy_falls(runs):
    h = runs["grpo"].entropy
    assert h[-1] < 0.8 * h[0], f"GRPO entropy {h[0]:.3f} -> {h[-1]:.3f}"


def test_controllers_measure_pi_old_and_write_into_the_objective(runs):
    for name, attr in (("repo_r", "policy/zeta"), ("adapo", None)):
        trace = runs[name]
        # H* is iteration 0's π_old entropy (before any update); the last reading is the last record's
        assert trace.controller.initial_entropy == pytest.approx(trace.entropy[0], abs=1e-6)
        assert trace.controller.last_entropy == pytest.approx(trace.entropy[-1], abs=1e-6)
        if attr:  # the ζ each iteration's transform used is the one the controller set before it
            used = [m[attr] for m in trace.metrics]
            assert used == pytest.approx(trace.coef, rel=1e-9)
    repo = runs["repo_r"]
    start, floor = floor_repo_r()
    ctrl = repo.controller
    assert (ctrl.zeta_min, ctrl.zeta_max, ctrl.tolerance, ctrl.sign_flip) == (
        floor["zeta_min"],
        floor["zeta_max"],
        floor["tolerance"],
        floor["sign_flip"],
    )  # the run used the floor file's controller
    # ζ replayed from the controller's rule on the measured π_old entropies: iteration 0 starts at the YAML's ζ; then
    # below (1 − tolerance)·H* ζ doubles, above (1 + tolerance)·H* it halves, within [zeta_min, zeta_max] (no
    # sign flip), else it stays
    h_star, tol = repo.entropy[0], floor["tolerance"]
    expected = [start]
    for h in repo.entropy[:-1]:
        zeta = expected[-1]
        if h < (1 - tol) * h_star:
            zeta = min(2 * zeta, floor["zeta_max"])
        elif h > (1 + tol) * h_star:
            zeta = max(zeta / 2, floor["zeta_min"])
        expected.append(zeta)
    assert repo.coef == pytest.approx(expected, rel=1e-9)
    assert (
        len(set(expected)) >= 3
    )  # the rule did act (measured on seed 0: 0.2 until iteration 4, then 0.4, 0.8, 1.0)


def test_repo_r_holds_entropy_within_15_percent(runs):
    trace = runs["repo_r"]
    h_star, h_end = trace.controller.initial_entropy, trace.entropy[-1]
    assert abs(h_end - h_star) <= 0.15 * h_star, f"REPO-R {h_end:.3f} vs H*={h_star:.3f}"
    assert h_end > runs["grpo"].entropy[-1]


def test_adapo_exhausts_its_knob(runs):
    trace = runs["adapo"]
    assert trace.coef[0] == pytest.approx(0.28) and trace.coef[-1] == pytest.approx(1.0)
    late = [m["policy/clipfrac_upper"] for m in trace.metrics[-5:]]
    assert max(late) < 0.01, (
        late
    )  # with ε_high at its cap the upper clip no longer binds: nothing left to raise
    # ... and the controller says so (once, after saturation_patience = 5 iterations at the cap)
    saturated = [w for w in trace.warnings if "eps_high has been at its bound 1 (eps_high_max)" in w]
    assert len(saturated) == 1 and "below the target" in saturated[0]


@pytest.mark.xfail(
    reason="ADAPO's only knob is the upper clip; at its cap ε_high=1.0 the upper clip fraction is ≈0 and the "
    "entropy ends at 0.15·H* (seed 0), below GRPO's 0.67; in no regime tried (peaked T, binary reward, more PPO "
    "steps, tighter clip, sequence-level ratio) does ε_high move entropy consistently — docs/results.md, 'The closed-loop toy'",
    strict=True,
)
def test_adapo_holds_entropy_within_30_percent(runs):
    trace = runs["adapo"]
    h_star, h_end = trace.controller.initial_entropy, trace.entropy[-1]
    assert abs(h_end - h_star) <= 0.30 * h_star, f"ADAPO {h_end:.3f} vs H*={h_star:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_tracking_claims_across_seeds(tmp_path, seed):
    grpo = run("grpo", tmp_path, seed=seed)
    repo = run(FLOOR, tmp_path, seed=seed)
    assert grpo.entropy[-1] < 0.8 * grpo.entropy[0]
    h_star = repo.controller.initial_entropy
    assert abs(repo.entropy[-1] - h_star) <= 0.15 * h_star
