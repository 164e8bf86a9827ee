"""``epr-lightning export CKPT OUT_DIR``: a trained policy as a Hugging Face folder.

    epr-lightning export runs/demo/version_0/checkpoints/last.ckpt exported/            # merged weights
    epr-lightning export runs/lab/version_0/checkpoints/last.ckpt adapter/ --lora adapter  # LoRA adapter only

CKPT is a Lightning ``.ckpt`` file or the DCP directory ``ModelParallelStrategy`` writes. The policy is rebuilt
from the run's config (default: the ``config.yaml`` LightningCLI saved in the run folder above the checkpoint;
pass the training command's ``--config`` files otherwise). ``--lora merge`` (the default) writes full weights
with the adapters merged in fp32 — ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` and SGLang load it;
``--lora adapter`` writes only the adapters (``adapter_config.json`` + ``adapter_model.safetensors``, for
``peft.PeftModel.from_pretrained(base, OUT_DIR)``) and the tokenizer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def find_run_config(ckpt: Path) -> Path | None:
    """``<run>/checkpoints/<name>`` → ``<run>/config.yaml`` when it exists."""
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def save_adapter(policy: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write only the LoRA adapters of a peft policy (plus the tokenizer)."""
    if not hasattr(policy, "peft_config"):
        raise ValueError(
            "--lora adapter: the run trained no LoRA adapters (model.lora is not set); use --lora merge"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def export(
    ckpt: str | Path,
    out_dir: str | Path,
    configs: list[str | Path],
    *,
    dtype: str = "float32",
    lora: str = "merge",
) -> Path:
    """Checkpoint + run config → HF folder (merged weights) or LoRA adapter folder. Returns ``out_dir``."""
    from epr_lightning.export import (
        build_module,
        load_policy_weights,
        read_checkpoint_state,
        save_pretrained_merged,
    )

    module = build_module(configs)
    load_policy_weights(module, read_checkpoint_state(ckpt))
    if lora == "adapter":
        return save_adapter(module.policy, module.tokenizer, out_dir)
    return save_pretrained_merged(module.policy, module.tokenizer, out_dir, dtype=dtype)


def main(argv: list[str] | None = None, prog: str = "epr-lightning export") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ckpt", type=Path, help="Lightning .ckpt file or ModelParallelStrategy DCP directory")
    parser.add_argument("out_dir", type=Path, help="output folder (created)")
    parser.add_argument(
        "--config", action="append", default=None, help="run config YAML (repeatable; later files override)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--lora",
        default="merge",
        choices=["merge", "adapter"],
        help="LoRA runs: merged weights or the adapters only",
    )
    args = parser.parse_args(argv)
    configs = args.config
    if not configs:
        found = find_run_config(args.ckpt.resolve())
        if found is None:
            parser.error(f"no config.yaml next to {args.ckpt}; pass --config with the training configs")
        configs = [found]
    try:
        out = export(args.ckpt, args.out_dir, configs, dtype=args.dtype, lora=args.lora)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"{prog}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} → {out}")
    return 0
