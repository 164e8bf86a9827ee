"""``epr-lightning fit|validate --config a.yaml --config b.yaml``: LightningCLI over typed constructors.

Model (``RLModule``), data (``PromptDataModule``), the policy source, rollout engine, task/reward, objective
pieces and callbacks are all chosen by ``class_path`` in YAML; later ``--config`` files override earlier ones.
"""

from __future__ import annotations

import os
import sys
import warnings
from argparse import ArgumentError

# Lightning 2.6 uses deprecated jsonargparse calls
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningCLI

from epr_lightning.checkpointing import RolloutCheckpoint, install_atomic_checkpoint_io
from epr_lightning.cli_errors import summarize_parse_error
from epr_lightning.data import PromptDataModule
from epr_lightning.module import RLModule

# Errors that come from user input (config values, files, missing packages): one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ModuleNotFoundError)


class EPRLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults (seeded, configs saved next to the logs).

    Reliability defaults, each switchable in YAML or on the command line:

    * no ``ModelCheckpoint`` in ``trainer.callbacks`` (and ``trainer.enable_checkpointing`` not false) →
      a ``RolloutCheckpoint()`` (``last.ckpt`` after every rollout iteration) is added;
    * ``graceful_stop: true`` → a ``GracefulStop()`` is added unless one is configured;
    * ``atomic_checkpoints: true`` → checkpoints are written to a temp file and renamed into place.
    """

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.set_defaults(
            {
                "trainer.log_every_n_steps": 1,
                "trainer.num_sanity_val_steps": 0,
                # prompts are split across ranks by our own resumable sampler (data.ResumableBatchSampler)
                "trainer.use_distributed_sampler": False,
            }
        )
        parser.add_argument(
            "--graceful_stop",
            type=bool,
            default=True,
            help="On SIGTERM/SIGINT finish the iteration, checkpoint and exit 0 (adds callbacks.GracefulStop).",
        )
        parser.add_argument(
            "--atomic_checkpoints",
            type=bool,
            default=True,
            help="Write checkpoints to a temp file, fsync, then rename (a kill never leaves a torn file).",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        from epr_lightning.callbacks import GracefulStop

        trainer_cfg = self._get(self.config_init, "trainer", default={}) or {}
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer_cfg.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            callbacks.append(RolloutCheckpoint())
        if self._get(self.config_init, "graceful_stop", default=True) and not any(
            isinstance(c, GracefulStop) for c in callbacks
        ):
            callbacks.append(GracefulStop())
        trainer = super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})
        if self._get(self.config_init, "atomic_checkpoints", default=True):
            install_atomic_checkpoint_io(trainer)
        return trainer


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


def build_cli(args: ArgsType = None, run: bool = True, exit_on_error: bool = True) -> EPRLightningCLI:
    """The CLI; ``exit_on_error=False`` makes parse errors raise ``ArgumentError`` instead of printing usage."""
    return EPRLightningCLI(
        RLModule,
        PromptDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": exit_on_error},  # subcommand parsers inherit it at parse time
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Console entry point. Set ``EPR_DEBUG=1`` to see full tracebacks and jsonargparse's full parse reports."""
    _quiet_libraries()
    debug = bool(os.environ.get("EPR_DEBUG"))
    try:
        build_cli(args, exit_on_error=debug)  # with EPR_DEBUG, jsonargparse prints usage + report, exits 2
    except ArgumentError as err:  # a bad config file, key, type or class_path: caught while parsing
        print(f"epr-lightning: error: {summarize_parse_error(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"epr-lightning: error: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
