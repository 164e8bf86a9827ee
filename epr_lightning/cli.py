"""``epr-lightning fit|validate --config a.yaml --config b.yaml``: LightningCLI over typed constructors.

Model (``RLModule``), data (``PromptDataModule``), the policy source, rollout engine, task/reward, objective
pieces and callbacks are all chosen by ``class_path`` in YAML; later ``--config`` files override earlier ones.
``epr-lightning export CKPT OUT_DIR`` writes a checkpoint as a Hugging Face folder (``export_cli.py``);
``epr-lightning configs`` lists the shipped configs, which ``--config`` takes by short name (``config_hub.py``).
``epr-lightning sft --config configs/sft/<x>.yaml`` runs the warm-start SFT stage (``SFTCLI``, ``sft.py``).
"""

from __future__ import annotations

import os
import sys
import warnings
from argparse import ArgumentError

# Lightning 2.6 uses deprecated jsonargparse calls
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningCLI

from epr_lightning.checkpointing import RolloutCheckpoint, install_atomic_checkpoint_io
from epr_lightning.cli_errors import summarize_parse_error
from epr_lightning.config_hub import configs_main, resolve_config_args
from epr_lightning.data import PromptDataModule
from epr_lightning.module import RLModule
from epr_lightning.reward_failures import RewardFailureError

# Errors that come from user input (config values, files, missing packages, a reward that always fails): one
# line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ModuleNotFoundError, RewardFailureError)

#: the monitoring callbacks every run gets (``monitors:``; ``--monitors '[]'`` turns them off).
DEFAULT_MONITORS = [
    {"class_path": "epr_lightning.callbacks.EntropyTracker"},
    {"class_path": "epr_lightning.callbacks.DiversityMonitor"},
    {"class_path": "epr_lightning.callbacks.PrecisionAudit"},
    {"class_path": "epr_lightning.callbacks.SampleLogger", "init_args": {"every_n": 5}},
    {"class_path": "epr_lightning.callbacks.ValidationRecords"},
]


class EPRLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults (seeded, configs saved next to the logs).

    Reliability defaults, each switchable in YAML or on the command line:

    * no ``ModelCheckpoint`` in ``trainer.callbacks`` (and ``trainer.enable_checkpointing`` not false) →
      a ``RolloutCheckpoint()`` (``last.ckpt`` after every rollout iteration) is added;
    * ``graceful_stop: true`` → a ``GracefulStop()`` is added unless one is configured;
    * ``atomic_checkpoints: true`` → checkpoints are written to a temp file and renamed into place;
    * ``monitors`` (default: ``DEFAULT_MONITORS``) are added to the trainer's callbacks, except a type that
      ``trainer.callbacks`` already lists. They are a key of their own because a later ``--config`` file
      replaces a list such as ``trainer.callbacks`` entirely: a scale config that sets its own checkpoint
      callback cannot drop the monitoring.

    Subcommands: ``fit`` and ``validate`` (``test``/``predict`` are not offered: tasks have no test split).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def add_arguments_to_parser(self, parser) -> None:
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
        parser.add_argument(
            "--monitors",
            type=list[Callback] | None,
            default=None,
            help="Monitoring callbacks added to trainer.callbacks (default: entropy, diversity, precision, "
            "samples); '[]' turns them off.",
        )
        parser.set_defaults({"monitors": DEFAULT_MONITORS})

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        from epr_lightning.callbacks import GracefulStop

        trainer_cfg = self._get(self.config_init, "trainer", default={}) or {}
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        configured = {type(c) for c in callbacks}
        monitors = self._get(self.config_init, "monitors", default=None) or []
        callbacks += [m for m in monitors if type(m) not in configured]
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


class SFTCLI(LightningCLI):
    """``epr-lightning sft``: supervised fine-tuning on demonstrations (``sft.SFTModule`` +
    ``sft_data.ChatDataModule``), whose checkpoint ``fit`` starts from via ``model.init_args.init_weights``.

    Defaults as ``fit``'s where they apply: seeded, atomic checkpoints, and — without a ``ModelCheckpoint`` in
    ``trainer.callbacks`` — a ``RolloutCheckpoint(every_n_iterations=100)`` counting optimizer steps, which
    always writes ``last.ckpt`` when training ends (its path is printed).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.log_every_n_steps": 1, "trainer.num_sanity_val_steps": 0})
        parser.add_argument(
            "--atomic_checkpoints",
            type=bool,
            default=True,
            help="Write checkpoints to a temp file, fsync, then rename (a kill never leaves a torn file).",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={}) or {}
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer_cfg.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            callbacks.append(RolloutCheckpoint(every_n_iterations=100))
        trainer = super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})
        if self._get(self.config_init, "atomic_checkpoints", default=True):
            install_atomic_checkpoint_io(trainer)
        return trainer

    def after_fit(self) -> None:
        saved = [
            c.last_model_path for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)
        ]
        last = next((p for p in saved if p), None)
        if last and self.trainer.is_global_zero:
            print(f"epr-lightning sft: wrote {last} (fit from it: --model.init_args.init_weights {last})")


def build_sft_cli(args: list[str], run: bool = True, exit_on_error: bool = True) -> SFTCLI:
    """The ``sft`` CLI over ``args``, the command line after ``sft`` (``--config x.yaml ...``)."""
    from epr_lightning.sft import SFTModule
    from epr_lightning.sft_data import ChatDataModule

    return SFTCLI(
        SFTModule,
        ChatDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": exit_on_error, "prog": "epr-lightning sft"},
        args=["fit", *args] if run else list(args),
        run=run,
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
    # main() hands LightningCLI the command line with the --config short names resolved
    warnings.filterwarnings("ignore", message=".*args parameter is intended.*")


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
        parser_kwargs={  # subcommand parsers inherit exit_on_error at parse time
            "exit_on_error": exit_on_error,
            "epilog": "--config takes a file or a shipped config's short name (`epr-lightning configs` lists "
            "them: demo, method/repo_r, ...). epr-lightning export CKPT OUT_DIR writes a checkpoint as a "
            "Hugging Face folder (epr-lightning export --help); epr-lightning sft --config configs/sft/<x>.yaml "
            "fine-tunes on demonstrations first (a checkpoint for --model.init_args.init_weights).",
        },
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Console entry point. Set ``EPR_DEBUG=1`` to see full tracebacks and jsonargparse's full parse reports.

    The working directory is importable (as with ``python -m``), so ``class_path: my_rewards.MyReward`` finds
    ``./my_rewards.py``; it comes after the installed packages on ``sys.path``.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["export"]:
        from epr_lightning.export_cli import main as export_main

        raise SystemExit(export_main([str(a) for a in argv[1:]]))
    if isinstance(argv, list) and argv[:1] == ["configs"]:
        raise SystemExit(configs_main([str(a) for a in argv[1:]]))
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    _quiet_libraries()
    debug = bool(os.environ.get("EPR_DEBUG"))
    try:
        if isinstance(argv, list):  # --config demo / method/repo_r: the shipped configs by short name
            args = resolve_config_args([str(a) for a in argv])
        if isinstance(args, list) and args[:1] == ["sft"]:
            build_sft_cli(args[1:], exit_on_error=debug)
        else:
            build_cli(
                args, exit_on_error=debug
            )  # with EPR_DEBUG, jsonargparse prints usage + report, exits 2
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
