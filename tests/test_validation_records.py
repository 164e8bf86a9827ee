"""Per-prompt validation records: which tokens hold the answer (hand-made cases), and the JSONL file a run's
validation leaves (``callbacks.ValidationRecords``) agreeing with the logged ``val/`` means."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_tool

from epr_lightning.callbacks import read_validation_records
from epr_lightning.cli import main
from epr_lightning.validation import answer_token_mask

ROOT = Path(__file__).resolve().parents[1]


def test_answer_token_mask_hand_cases():
    # "9 - 1 = 8" as tokens "9", " -", " 1", " =", " 8": the answer's last occurrence is the last token
    text = "9 - 1 = 8"
    ends = [1, 3, 5, 7, 9]
    assert answer_token_mask(ends, text, "8") == [False, False, False, False, True]
    # the last occurrence counts ("1" appears once at position 4): token " 1" only
    assert answer_token_mask(ends, text, "1") == [False, False, True, False, False]
    # an answer spread over two tokens ("12" as " 1" + "2") marks both; surrounding whitespace is ignored
    assert answer_token_mask([4, 5, 6], "So, 12", " 12 ") == [False, True, True]
    # no answer, or one the text does not contain: no answer tokens
    assert answer_token_mask(ends, text, None) == [False] * 5
    assert answer_token_mask(ends, text, "42") == [False] * 5


def test_a_validation_writes_one_record_per_prompt_matching_the_logged_means(tmp_path):
    main(["validate", "--config", str(ROOT / "configs/tiny_cpu.yaml"),
          "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--data.init_args.val_prompts", "6", "--data.init_args.val_batch_size", "6",
          "--model.init_args.val_num_generations", "3"])  # fmt: skip
    files = list((tmp_path / "runs").rglob("val_groups/iteration_00000.jsonl"))
    assert len(files) == 1
    records = read_validation_records(files[0])
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    assert all(r["n"] == 3 and r["c"] == sum(r["correct"]) and len(r["answers"]) == 3 for r in records)
    assert all(0 <= r["answer_tokens"] <= r["tokens"] and r["entropy_sum"] > 0 for r in records)
    scalars = load_tool("plot_runs").load_scalars(files[0].parents[1])
    logged_entropy = scalars["val/entropy"][1][0]
    # val/entropy is the mean of per-batch token means weighted by prompts; with one batch, the token mean
    pooled = sum(r["entropy_sum"] for r in records) / sum(r["tokens"] for r in records)
    assert logged_entropy == pytest.approx(pooled, rel=1e-5)
    lr = load_tool("lab_records")
    assert scalars["val/pass@1"][1][0] == pytest.approx(lr.pass_at_k_mean(records, 1), abs=1e-6)
