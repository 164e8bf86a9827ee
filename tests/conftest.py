"""Shared fixtures: the offline char tokenizer and a tiny random causal LM (no network, CPU, < 1 s)."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores shared by everything: one intra-op thread per test process keeps runs predictable.
torch.set_num_threads(int(os.environ.get("EPR_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from epr_lightning.tiny import char_tokenizer

    return char_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from epr_lightning.tiny import tiny_causal_lm

    return tiny_causal_lm(
        len(tiny_tokenizer), eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id
    )


def quiet_tiny_args(tmp_path, method: str, *extra: str) -> list[str]:
    """CLI args for an in-process tiny run of ``configs/method/<method>.yaml``: no logger, progress bar,
    checkpoints, callbacks or validation (tests that only read ``callback_metrics`` or their own callbacks)."""
    return [
        "--config", "configs/tiny_cpu.yaml",
        "--config", f"configs/method/{method}.yaml",
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.callbacks", "[]",
        "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(tmp_path),
        *extra,
    ]  # fmt: skip
