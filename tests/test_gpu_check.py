"""tools/gpu_check.py: the CPU code path (tiny shapes) in CI, the real check on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def run_check(*args: str, timeout: int) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/gpu_check.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert proc.returncode == 0, result["checks"]
    return result


def test_cpu_tiny_code_path_with_lora() -> None:
    pytest.importorskip("peft")
    res = run_check("--cpu", "--tiny", "--lora", "--minibatch-size", "8", timeout=180)
    assert all(res["checks"].values())
    assert res["fsdp2_hf"]["iterations"] == 2 and res["fsdp2_hf"]["rollout_tokens_per_s"] > 0
    prec = res["precision"]
    assert prec["fp32_path_vs_naive_fp32_logp/max"] < 1e-5  # the chunked fp32 pass is the full-logits math
    assert prec["bf16_autocast_fp32_head_entropy/mean"] < prec["naive_bf16_entropy/mean"]
    assert res["sglang"] == {"skipped": "--cpu"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_smoke_check() -> None:
    res = run_check(timeout=480)
    assert res["params_millions"] > 400
    assert res["fsdp2_hf"]["peak_gpu_gb"] > 1
