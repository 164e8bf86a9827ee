#!/bin/bash
# GPU smoke check from the working tree, offline: FSDP2 + HF-engine RL steps on a ~0.6B random Qwen2-shaped
# model (bf16 gathered params, fp32 master weights), throughput, peak memory, fp32-vs-bf16 log-prob error;
# the SGLang part runs only when sglang is importable. Installs nothing. Usually 1-3 minutes on one H100/H200.
#
#   bash tools/gpu_check.sh [--lora] [--gradient-checkpointing] [--steps N] [--no-sglang]
#   bash tools/gpu_check.sh --cpu --tiny     # the same code path on a CPU in seconds
#
# Exit status: 0 all checks passed, 1 a check failed, 2 missing packages or no GPU, 124 timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && ! "$PY" -c "import torch" 2>/dev/null; then PY=.venv/bin/python; fi

missing=$("$PY" - <<'PYEOF'
import importlib.util
need = ["torch", "lightning", "transformers", "tokenizers", "safetensors", "torchmetrics"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PYEOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python packages: $missing (carry wheels and pip install --no-index them)" >&2
    exit 2
fi
if [[ " $* " == *" --lora "* ]] && ! "$PY" -c "import peft" 2>/dev/null; then
    echo "gpu_check: --lora needs peft" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONWARNINGS="ignore"
timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" tools/gpu_check.py "$@"
