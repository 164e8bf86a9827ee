#!/usr/bin/env python
"""Export a trained policy as a plain Hugging Face folder.

    python tools/export_hf.py runs/tiny/version_0/checkpoints/last.ckpt exported/ [--config config.yaml]

CKPT is a Lightning ``.ckpt`` file or the DCP directory ModelParallelStrategy writes. The policy is rebuilt
from the run's config (default: the ``config.yaml`` LightningCLI saved in the run folder above the checkpoint;
pass the same ``--config`` files as the training command otherwise). LoRA adapters are merged (fp32
arithmetic, never in place). The result loads with ``AutoModelForCausalLM.from_pretrained(OUT_DIR)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def find_run_config(ckpt: Path) -> Path | None:
    """``<run>/checkpoints/<name>`` → ``<run>/config.yaml`` when it exists."""
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ckpt", type=Path, help="Lightning .ckpt file or ModelParallelStrategy DCP directory")
    parser.add_argument("out_dir", type=Path, help="output folder (created)")
    parser.add_argument(
        "--config", action="append", default=None, help="run config YAML (repeatable; later files override)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)

    from epr_lightning.export import export_checkpoint

    configs = args.config
    if not configs:
        found = find_run_config(args.ckpt.resolve())
        if found is None:
            parser.error(f"no config.yaml next to {args.ckpt}; pass --config with the training configs")
        configs = [found]
    try:
        out = export_checkpoint(args.ckpt, args.out_dir, configs, dtype=args.dtype)
    except (ValueError, FileNotFoundError) as err:
        print(f"export_hf: error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
