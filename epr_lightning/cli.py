"""``epr-lightning fit|validate --config a.yaml --config b.yaml``: LightningCLI over typed constructors.

Model (``RLModule``), data (``PromptDataModule``), the policy source, rollout engine, task/reward, objective
pieces and callbacks are all chosen by ``class_path`` in YAML; later ``--config`` files override earlier ones.
"""

from __future__ import annotations

import os
import sys
import warnings

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")  # Lightning 2.6 uses deprecated jsonargparse calls

from lightning.pytorch.cli import ArgsType, LightningCLI

from epr_lightning.data import PromptDataModule
from epr_lightning.module import RLModule

# Errors that come from user input (config values, files, missing packages): one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ModuleNotFoundError)


class EPRLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults (seeded, configs saved next to the logs)."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.set_defaults(
            {
                "trainer.log_every_n_steps": 1,
                "trainer.num_sanity_val_steps": 0,
            }
        )


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def build_cli(args: ArgsType = None, run: bool = True) -> EPRLightningCLI:
    return EPRLightningCLI(
        RLModule,
        PromptDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Console entry point. Set ``EPR_DEBUG=1`` to see full tracebacks of input errors."""
    _quiet_libraries()
    try:
        build_cli(args)
    except USER_ERRORS as err:
        if os.environ.get("EPR_DEBUG"):
            raise
        print(f"epr-lightning: error: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
