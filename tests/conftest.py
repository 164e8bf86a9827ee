"""Shared fixtures: the offline char tokenizer and a tiny random causal LM (no network, CPU, < 1 s)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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
        len(tiny_tokenizer),
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )


def randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    """peft initialises B = 0 (a no-op adapter); give every adapter weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def load_tool(name: str):
    """Import ``tools/<name>.py`` (the tools are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
