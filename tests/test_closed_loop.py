"""Closed loop on the tiny random model + the toy CharacterTask: entropy dynamics under each method.

Setup (identical for every method): 62 rewarded characters (letters and digits) out of ~100; 4 prompts ×
4 samples × 12 tokens; 2 PPO epochs of 2 minibatches; AdamW lr 2e-4; sampling (and log-prob / entropy)
temperature 0.1, so H0 ≈ 3.4 nats. Each method otherwise as its YAML says (advantage estimator, aggregation,
clip; ADAPO ε_high 0.28 → [0.2, 1.0], κ = 1.25).

REPO-R runs with |ζ| ∈ [1e-4, 0.5] starting at ζ = 0.05 (constructor arguments, ``WIDE_REPO_R``; the bounds
and start ``configs/method/repo_r.yaml`` shipped before its SmolLM2 floor [0.1, 1.0]), not the paper's [1e-4, 0.05] from
1e-3, because measured on this toy the paper's cap binds and entropy still falls: with |ζ| ≤ 0.05, ζ sits at
+0.05 at the end and the end entropy is 0.47–0.63·H* (table below). Our reading [X], not measured term by term: REPO-R adds ≈ η·ζ·|A|·E_π[π·L²] against the pull −η·E_π[π·A·L]
(L = log π + H, docs/methods.md §1 and §5); here every one of 12 tokens carries 1/12 of the reward, so A and L are far
more correlated per token than in an LLM rollout of thousands of tokens, and the log-probs of a 100-char
vocabulary are much less spread out than an LLM's (log π ≈ −4.6 at uniform vs −20…0), so the same ζ has
much less authority. Starting at 1e-3 with |ζ| ≤ 0.5, the nine doublings let the entropy fall first
(seed 0: 1.01·H*, seed 1: 0.83·H*, outside ±15%), hence the start at 0.05.
The first setup (T = 1, lr 1e-2) collapsed any bounded controller: near a uniform policy L ≈ 0, so the
restoring term is negligible until the policy has collapsed (REPO-R |ζ| ≤ 0.05: 1.6–2.9 nats from 4.59).
At T = 0.1 with lr 1e-3 every method collapsed within 20 iterations (GRPO 0.09·H0, REPO-R paper bounds 0.07,
ADAPO 0.32).

Measured end entropy / H* after 20 iterations (seed = sampling + model init; one torch thread, as in tests),
with the method YAMLs of commit 83705bc on (LOO advantages for REPO/ADAPO, GRPO's per-sequence aggregation):

| seed | H* | GRPO | REPO-R [1e-4, 0.5] from 0.05 | REPO-R paper [1e-4, 0.05] from 1e-3 | ADAPO |
|---|---|---|---|---|---|
| 0 | 3.42 | 0.67 | 0.95 | 0.63 | 0.15 |
| 1 | 3.48 | 0.16 | 0.96 | 0.48 | 0.44 |
| 2 | 3.40 | 0.16 | 0.92 | 0.47 | 0.26 |

In every run ζ ends at its cap (REPO-R) and ε_high at 1.0 (ADAPO), with ADAPO's upper clip fraction < 1e-4 over
the last five iterations. (Before 83705bc, with group-std advantages everywhere, the same table read GRPO
0.76/0.70/0.69, REPO-R 0.98/0.93/0.90, paper bounds 0.87/0.47/0.78, ADAPO 0.41/0.32/0.41; the investigation
below was measured then, and its conclusions did not change.)

ADAPO did not meet ±30% in any setting tried. Investigation (seed 0 unless noted; numbers are end entropy / H*
after 20 iterations; ``cu`` = upper clip fraction, averaged over an iteration's minibatch steps):

1. No bug found. ``PPOClipLoss`` on a hand example (r = [1.5, 0.5, 1.1, 2.0], A = [+1, −1, +1, −1], last token
   masked, ε = 0.2/0.28) gives the textbook −min(rA, clip(r, 0.8, 1.28)A) = [−1.28, 0.8, −1.1, ·], gradient
   [0, 0, −1.1, 0], and clip fractions 1/3 each over the three masked tokens. At every optimizer step the loss's
   ε_high equals the controller's coefficient (checked over 8
   iterations: 0.28, 0.35, 0.44, …, 1.0). With ppo_epochs > 1 π_old is the separate no-grad pass before the
   first optimizer step (``update.PolicyUpdate``).
2. In this toy a larger ε_high *speeds up* the collapse. Fixed ε_high (DAPO loss, ε_low = 0.2), test setup:

   | seed | ε_high 0.2 (GRPO) | 0.28 (DAPO) | 0.4 | 0.6 | 1.0 | ADAPO (0.28 → 1.0 by iteration 6) |
   |---|---|---|---|---|---|---|
   | 0 | 0.76 | 0.82 | 0.79 | 0.56 | 0.14 | 0.41 |
   | 1 | 0.70 | 0.48 | | | 0.22 | 0.32 |
   | 2 | 0.69 | 0.68 | | | 0.52 | 0.41 |

   Why (measured on the π_old of the clipped tokens): DAPO's rationale needs the upper clip to bind only on
   *rare* tokens (a token with π ≈ 0.9 cannot reach r > 1.11). Here H ≈ 3.4 nats over ~100 characters, so every
   token is "rare" and its ratio can pass 1 + ε: of the tokens the upper clip removed, only 43–53%
   (GRPO, DAPO; 3 seeds) had L = log π + H < 0 (GRPO: mean π_old 0.08 vs 0.13–0.16 for all A > 0 tokens); 37–42% of all A > 0 tokens have
   L < 0. Loosening the clip therefore frees about as many entropy-lowering (L > 0) as entropy-raising tokens,
   and Theorem 1's weight π²·A·L favours the likelier ones, so ΔH becomes more negative. At ε_high = 1.0
   ratios rarely exceed 2 (``cu`` ≤ 0.003 from iteration 6), i.e. ADAPO becomes PPO with only a lower clip.
3. Regimes tried for the DAPO mechanism (GRPO vs ADAPO, seeds 0/1/2 unless noted):

   | regime | GRPO | ADAPO | note |
   |---|---|---|---|
   | T=0.1, lr 2e-4, 2 epochs × 2 minibatches (the test's) | 0.76/0.70/0.69 | 0.41/0.32/0.41 | above |
   | binary reward (alnum share ≥ 0.75), same | 0.81 | 0.48 | seed 0 |
   | binary reward (share ≥ 0.9), same | 0.69 | 0.23 | seed 0 |
   | peaked T=0.03 (H0 0.7–1.0 nats), lr 3e-5, 2×2 | 0.26/0.11/0.68 | 0.14/0.34/0.28 | DAPO 0.09/0.44/0.51 |
   | T=0.03, lr 1e-5, 4 epochs × 4 minibatches | 0.35/0.02/0.15 | 0.49/0.02/0.19 | |
   | T=0.05 (H0 1.8), lr 2e-5, 4×4 | 0.15/0.42/0.15 | 0.37/0.45/0.18 | |
   | T=0.03, lr 3e-5, 4 epochs × 8 minibatches | 0.05/0.01/0.08 | 0.17/0.00/0.01 | |

   In the peaked regimes the clip is more selective (T=0.03, lr 3e-5, seed 0: 51–69% of upper-clipped tokens
   have L < 0, vs 16–20% of all A > 0 tokens) and ADAPO ends at or above GRPO in 8 of 12 runs, i.e. the
   sign of the mechanism is right there, but the effect is far too small: the upper clip binds on ≤ 8% of tokens
   after iteration 0 and ADAPO's falls to ≈ 0 within 4–8 iterations, and even with the upper clip removed
   altogether (ε_high = 10, T=0.03, lr 3e-5: 0.69 and 0.31 on seeds 1, 2) the entropy does not hold ±30%. Raising ε_high only loosens a constraint; it never adds an entropy-raising force, so it
   can at best slow a collapse, and here not enough. Hence the strict xfail; what does hold (ε_high saturates,
   the clip stops binding, the controller's saturation warning fires) is asserted.
4. Second session (2026-12-02), looking for any regime where the upper clip is an entropy knob at all (rows
   reproduce with ``tools/entropy_sweep.py``; fixed ε_high on the DAPO/GRPO loss, ε_low = 0.2 unless noted):

   | regime | values → end entropy / H* (seeds) |
   |---|---|
   | the test's setup, a *tighter* upper clip | ε_high 0.01: 0.57/0.85/0.71; 0.05: 0.32/0.82/0.56 (GRPO 0.76/0.70/0.69) |
   | GSPO sequence ratio, ε_low 1e-3, the test's setup | ε_high 1e-3: 0.55/0.67; 4e-3: 0.61/0.69; 0.02: 0.10/0.62; 0.1: 0.43/0.68 |
   | 10 rewarded digits, T=0.05, lr 3e-5, 8 epochs × 1 minibatch | ε_high 0.1: 0.20/0.19; 0.2: 0.19/0.39; 0.5: 0.06/0.04; 1.0: 0.18/0.41 |
   | 62 alnum, T=0.03 (H0 1.0), lr 3e-5, 8 epochs × 1 minibatch | ε_high 0.05: 0.61; 0.2: 0.01; 0.6: 0.31; 2.0: 0.43 (reward saturates at 1.0) |
   | SmolLM2-135M, ``configs/demo.yaml`` + ``configs/method/dapo.yaml`` (2 epochs), seed 0 | ε_high 0.2: 0.02; 1.0: 0.06 (lowest 0.01); reward 0.28 → 0.91–0.94 |

   No direction of ε_high is consistent across seeds, so no controller of ε_high alone (in either direction) can
   track H* here. A standalone simulation (not committed: a linear softmax policy over fixed random features,
   16–64 states × 50–100 actions, exact group advantages, Adam or SGD, 2×2 to 8×4 PPO steps, 3 seeds) agrees:
   across ε_high ∈ [0.05, 3] the end entropy moves by ≤ 0.1·H0 in most regimes, and where it moves a *tighter*
   upper clip keeps more (Adam lr 3e-3, 4×4: ε_high 0 → 0.54–0.64, 0.2 → 0.38–0.44, 1.0 → 0.38–0.43), i.e. the
   clip acts as a trust region on every A > 0 token, not as DAPO's release of rare tokens. An LLM-like variant
   (tabular logits, 7 of 8 positions near-deterministic with π ≈ 0.97, one rewarded fork, Adam, 2×4 steps)
   makes ε_high a strong knob, but with the opposite sign: end entropy / H0 0.75–0.94 at ε_high 0.2 and
   0.40–0.44 at 1.0. The first minibatch of each iteration (ratio exactly 1) is never clipped, so its full
   policy-gradient collapse is outside any clip's reach. For scale: the paper's own ADAPO row (docs/methods.md §11, a secondary account) reports +102% entropy on
   Qwen3-32B, also outside ±30%.
"""

import pytest

from epr_lightning.testing.closed_loop import run_quiet, toy_args

ITERATIONS = 20
WIDE_REPO_R = (  # see the module docstring for why not the paper's |ζ| ≤ 0.05
    "--model.init_args.controllers=[{class_path: epr_lightning.callbacks.REPOZetaController, "
    "init_args: {zeta_min: 1.0e-4, zeta_max: 0.5, initial_zeta: 0.05}}]"
)


def run(method, tmp_path, iterations=ITERATIONS, seed=0, extra=()):
    return run_quiet(toy_args(tmp_path, method, seed, iterations, *extra))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("closed_loop")
    return {
        "grpo": run("grpo", root),
        "repo_r": run("repo_r", root, extra=[WIDE_REPO_R]),
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
    # iteration 0 measures H = H* (no change); while π_old's entropy is below H*, ζ doubles
    assert all(h < repo.entropy[0] for h in repo.entropy[1:3])
    assert repo.coef[:4] == pytest.approx([0.05, 0.05, 0.1, 0.2])


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
    "steps, tighter clip, sequence-level ratio) does ε_high move entropy consistently — see the module docstring",
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
    repo = run("repo_r", tmp_path, seed=seed, extra=[WIDE_REPO_R])
    assert grpo.entropy[-1] < 0.8 * grpo.entropy[0]
    h_star = repo.controller.initial_entropy
    assert abs(repo.entropy[-1] - h_star) <= 0.15 * h_star
