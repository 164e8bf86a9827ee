"""tools/entropy_sweep.py: one row per value × seed, on the closed-loop toy and on the user's own configs."""

from __future__ import annotations

import pytest
from conftest import load_tool


def test_toy_rows_share_h0_per_seed_and_report_the_controller(capsys):
    tool = load_tool("entropy_sweep")
    rows = tool.main(["--method", "adapo", "--vary", "model.init_args.ppo_epochs=1,2", "--iterations", "2"])
    assert [r[:2] for r in rows] == [("1", "0"), ("2", "0")]
    # the varied knob acts only on updates: the same seed samples the same first rollout from the same policy
    assert rows[0][2] == rows[1][2] and float(rows[0][2]) > 3.0
    for (
        r
    ) in rows:  # ADAPO: iteration 0 measures H*, iteration 1 moves ε_high one step (×1.25 or ÷1.25, ≥ ε_low)
        assert float(r[-1]) in (pytest.approx(0.35), pytest.approx(0.224))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("value | seed | H0") and len(out) == 3


def test_own_configs_and_a_zero_learning_rate_keeps_the_entropy():
    tool = load_tool("entropy_sweep")
    rows = tool.main(
        [
            "--config", "configs/tiny_cpu.yaml", "--config", "configs/method/grpo.yaml",
            "--vary", "model.init_args.optimizer.init_args.lr=0.0,1e-2",
            "--", "--data.init_args.batches_per_epoch=3", "--data.init_args.task=epr_lightning.tasks.CharacterTask",
        ]
    )  # fmt: skip
    frozen, trained = rows
    assert frozen[3] == "1.00" and frozen[4] == "1.00"  # lr 0: π never moves, so neither does its entropy
    assert trained[3] != "1.00" and trained[-1] == "nan"  # GRPO has no controller


def test_own_configs_get_only_seeds_every_policy_accepts():
    from epr_lightning.testing.closed_loop import seed_args

    # PackagedSmolLM2 / HFModel have no init `seed` (only the toy's TinyModel does): a sweep over configs/demo.yaml
    # must not pass one
    assert seed_args(3) == ["--seed_everything=3", "--model.init_args.sampling.seed=3"]
    assert seed_args(3, tiny_model=True)[-1] == "--model.init_args.policy.init_args.seed=3"


@pytest.mark.parametrize("bad", ["eps_high", "eps_high=", "=0.1,0.2"])
def test_bad_vary_names_the_expected_form(bad):
    with pytest.raises(SystemExit, match="KEY=V1,V2"):
        load_tool("entropy_sweep").main(["--vary", bad])
