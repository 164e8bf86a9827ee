"""The fair lab's per-prompt arithmetic (tools/lab_records.py, tools/lab_pairs.py) on hand-made records."""

from __future__ import annotations

import math

import pytest
from conftest import load_tool

lr = load_tool("lab_records")
pairs = load_tool("lab_pairs")
lab = load_tool("lab")


def rec(pid: str, n: int, c: int, answers=None, h=(10.0, 2.0), tokens=(20, 4)) -> dict:
    answers = answers or [str(i) for i in range(n)]
    return {"id": pid, "n": n, "c": c, "answers": answers, "correct": [i < c for i in range(n)],
            "entropy_sum": h[0], "tokens": tokens[0], "answer_entropy_sum": h[1], "answer_tokens": tokens[1]}  # fmt: skip


def test_unbiased_pass_at_k_against_a_hand_computed_case():
    # n = 4, c = 1: pass@1 = 1/4, pass@2 = 1 − C(3,2)/C(4,2) = 1 − 3/6 = 1/2, pass@4 = 1
    # n = 4, c = 2: pass@1 = 1/2, pass@2 = 1 − C(2,2)/C(4,2) = 5/6, pass@4 = 1
    records = [rec("a", 4, 1), rec("b", 4, 2), rec("c", 4, 0)]
    assert lr.pass_at_k_mean(records, 1) == pytest.approx((0.25 + 0.5 + 0) / 3)
    assert lr.pass_at_k_mean(records, 2) == pytest.approx((0.5 + 5 / 6 + 0) / 3)
    assert lr.pass_at_k_mean(records, 4) == pytest.approx(2 / 3)
    assert math.isnan(lr.pass_at_k_mean(records, 8))  # fewer samples than k: not estimable


def test_rare_prompts_coverage_distinct_answers_and_entropy_split():
    first = [rec("a", 16, 0), rec("b", 16, 2), rec("c", 16, 3), rec("d", 16, 10)]
    assert lr.rare_ids(first) == {"a", "b"}
    last = [rec("a", 16, 1), rec("b", 16, 0), rec("c", 16, 16), rec("d", 16, 16)]
    assert lr.coverage(last, {"a", "b"}) == 0.5
    assert math.isnan(lr.coverage(last, {"zz"}))
    # two correct samples with the same answer count once (whitespace ignored); wrong ones never
    r = rec("x", 4, 3, answers=["5", " 5", "6", "7"])
    assert lr.distinct_correct([r]) == 2.0
    # answer tokens: (2 + 2) / (4 + 4) = 0.5 nats; the rest: (10 − 2 + 30 − 2) / (16 + 36) ≈ 0.692
    split = lr.entropy_split([rec("a", 4, 0), rec("b", 4, 0, h=(30.0, 2.0), tokens=(40, 4))])
    assert split == pytest.approx((0.5, 36 / 52))
    s = lr.summarize(first, last)
    assert s["coverage_rare_initial"] == 0.5 and s["coverage_rare"] == 0.5 and s["rare_prompts"] == 2


def test_paired_bootstrap_known_answers():
    # constant differences: the interval is that constant
    assert lr.paired_bootstrap([[0.25] * 10, [0.25] * 7]) == pytest.approx((0.25, 0.25, 0.25))
    # ±1 differences on 400 prompts: mean 0, 95% interval ≈ ±1.96·σ/√n = ±0.098
    d = [1.0, -1.0] * 200
    mean, low, high = lr.paired_bootstrap([d], n_boot=2000, seed=1)
    assert mean == 0.0 and low == pytest.approx(-0.098, abs=0.015) and high == pytest.approx(0.098, abs=0.015)
    # seeds are averaged, not pooled: seed means 1 and 0 → 0.5 even with different prompt counts
    assert lr.paired_bootstrap([[1.0] * 3, [0.0] * 30])[0] == pytest.approx(0.5)
    assert all(math.isnan(v) for v in lr.paired_bootstrap([]))


def make_runs():
    # base solves prompt p in `base_c[p]` of 16; the method solves one prompt more often, one less
    ids = [f"p{i}" for i in range(8)]
    base_c = [0, 0, 1, 4, 8, 12, 16, 16]
    meth_c = [1, 0, 1, 4, 8, 12, 16, 15]
    runs = {}
    for seed, shift in ((0, 0.0), (1, 10.0)):
        runs["grpo", seed] = {"last": [rec(i, 16, c) for i, c in zip(ids, base_c, strict=True)],
                              "entropy_change_pct": -60.0 + shift}  # fmt: skip
        runs["grpo_repo_r", seed] = {"last": [rec(i, 16, c) for i, c in zip(ids, meth_c, strict=True)],
                                     "entropy_change_pct": -10.0 - shift}  # fmt: skip
    return runs


def test_claims_on_hand_made_runs():
    runs = make_runs()
    c = pairs.claims(runs, "grpo", "grpo_repo_r", n_boot=500)
    # pass@16: p0 goes 0 → 1 (+1), p7 stays 1 (16 → 15 of 16 still solves within 16): mean +1/8
    assert c["a"]["diff"][0] == pytest.approx(1 / 8) and c["a"]["holds"]
    # pass@1: p0 +1/16, p7 −1/16 → 0
    assert c["b"]["diff"][0] == pytest.approx(0.0, abs=1e-12) and c["b"]["holds"]
    # entropy: seeds −10 and −20 → −15: within ±15 (the band is inclusive)
    assert c["c"]["change"] == -15.0 and c["c"]["holds"] and c["c"]["per_seed"] == [-10.0, -20.0]
    runs["grpo_repo_r", 1]["entropy_change_pct"] = -21.0
    assert not pairs.claims(runs, "grpo", "grpo_repo_r", n_boot=50)["c"]["holds"]
    table = pairs.pair_table(runs, [("grpo", "grpo_repo_r")], ks=(1, 16), n_boot=200)
    assert "| grpo → grpo_repo_r | 2 | +0.000" in table and "+0.125 [" in table
    section = pairs.claims_section(runs, [("grpo", "grpo_repo_r")], n_boot=200)
    assert "**does not hold**" in section and section.count("**holds**") == 2


def test_sequential_claims_on_hand_made_task_b_rows():
    def row(method, seed, start, end):
        return {"method": method, "seed": seed, "val_pass1_b_start": start, "val_pass1_b_end": end}

    seq = [row("grpo", 0, 0.05, 0.50), row("grpo", 1, 0.15, 0.30),  # means 0.10 / 0.40
           row("repo", 0, 0.20, 0.35), row("repo", 1, 0.10, 0.40),  # means 0.15 / 0.375
           row("grpo_from_base", 0, 0.12, 0.6), row("grpo_from_base", 1, 0.14, 0.6)]  # fmt: skip
    lines = pairs.sequential_claims(seq, "grpo")
    d = next(line for line in lines if line.startswith("- (d)"))
    # the premise: GRPO after A (0.10) writes the tagged answer less often than the untrained model (0.13)
    assert "0.100 (0.050, 0.150) vs 0.130 (0.120, 0.140): **holds**" in d
    e = next(line for line in lines if line.startswith("- (e) repo"))
    # at B's start 0.15 >= 0.10 holds; at its end 0.375 < 0.40 does not
    assert "at B's start 0.150 (0.200, 0.100) vs 0.100 (0.050, 0.150): **holds**" in e
    assert "at B's end 0.375 (0.350, 0.400) vs 0.400 (0.500, 0.300): **does not hold**" in e
    # the premise fails when the control writes the tag less often than GRPO after A
    seq[4]["val_pass1_b_start"] = seq[5]["val_pass1_b_start"] = 0.05
    d = next(line for line in pairs.sequential_claims(seq, "grpo") if line.startswith("- (d)"))
    assert d.endswith("**does not hold**")
    # rows without B's validation (an old cache) give no claims rather than a wrong one
    assert pairs.sequential_claims([{"method": "grpo", "seed": 0}], "grpo") == []


def test_seed_interval_known_answers():
    # values 1, 2, 3: mean 2, sd 1, t(0.975, df=2) = 4.303 → half-width 4.303/√3 = 2.484
    mean, low, high = lab.seed_interval([1.0, 2.0, 3.0])
    assert (
        mean == 2.0
        and low == pytest.approx(2.0 - 2.4843, abs=1e-3)
        and high == pytest.approx(4.4843, abs=1e-3)
    )
    # identical seeds: no spread, the interval is the point
    assert lab.seed_interval([0.5, 0.5, 0.5]) == pytest.approx((0.5, 0.5, 0.5))
    # one seed: a mean, no interval; NaN values are left out
    m, lo, hi = lab.seed_interval([0.3, math.nan])
    assert m == 0.3 and math.isnan(lo) and math.isnan(hi)
    # the large-df expansion meets the normal quantile's neighbourhood: t(0.975, 30) = 2.042, t(0.975, 120) = 1.980
    assert lab.t_quantile_975(30) == pytest.approx(2.042, abs=1e-3)
    assert lab.t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    with pytest.raises(ValueError, match="df >= 1"):
        lab.t_quantile_975(0)


def test_seed_noise_section_reads_an_effect_only_when_the_seed_interval_excludes_zero():
    runs = make_runs()  # per seed: pass@16 +1/8 on both seeds; pass@1 0 on both; entropy +50 then +30 points
    diffs = pairs.seed_differences(runs, "grpo", "grpo_repo_r")
    assert diffs["pass@16"] == pytest.approx([0.125, 0.125]) and diffs["pass@1"] == pytest.approx([0.0, 0.0])
    assert diffs["entropy change %"] == [50.0, 30.0]
    section = pairs.seed_noise_section(runs, [("grpo", "grpo_repo_r")])
    # pass@16 is +0.125 on both seeds (zero spread) → an effect; entropy +50/+30 with 2 seeds: t(1) = 12.7 makes
    # the interval 40 ± 127, which includes 0 → no effect there
    assert "+0.125 [+0.125, +0.125] (+0.125, +0.125)" in section
    assert "+40.0 [-87.1, +167.1] (+50.0, +30.0)" in section
    assert section.rstrip().endswith("| effect on pass@16 |")
    # the same differences on a third seed that reverses pass@16 → no effect distinguishable from seed noise
    runs["grpo", 2] = runs["grpo_repo_r", 0] | {}
    runs["grpo_repo_r", 2] = runs["grpo", 0] | {}
    section = pairs.seed_noise_section(runs, [("grpo", "grpo_repo_r")])
    assert "| grpo → grpo_repo_r | 3 |" in section and section.rstrip().endswith(
        "no effect distinguishable from seed noise |"
    )


def test_parse_pairs_accepts_sweep_run_names():
    names = ["dapo[eps_high=0.2]", "dapo[eps_high=0.28]"]
    assert pairs.parse_pairs(["dapo[eps_high=0.28]:dapo[eps_high=0.2]"], names) == [
        ("dapo[eps_high=0.28]", "dapo[eps_high=0.2]")
    ]
    with pytest.raises(
        SystemExit, match=r"run names \(dapo\[eps_high=0.2\], dapo\[eps_high=0.28\]\), got 'dapo:x'"
    ):
        pairs.parse_pairs(["dapo:x"], names)
