"""The rollout kind (completions or episodes) is built once per run, in ``setup``, and stays off the checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback

import epr_lightning.module as module_py
from epr_lightning.cli import build_cli
from epr_lightning.rollout.kinds import Completions

ROOT = Path(__file__).resolve().parents[1]


def test_the_sample_kind_is_built_once_per_run(tmp_path, monkeypatch) -> None:
    built: list[object] = []
    original = module_py.rollout_kind

    def counting_rollout_kind(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(module_py, "rollout_kind", counting_rollout_kind)
    cli = build_cli(
        ["--config", str(ROOT / "configs/tiny_cpu.yaml"), "--trainer.logger", "false",
         "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"],
        run=False,
    )  # fmt: skip
    seen: list[object] = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(pl_module.samples)

    cli.trainer.callbacks.append(Watch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.iteration == 2  # two iterations, each with validation around them
    assert len(built) == 1 and isinstance(built[0], Completions)
    assert seen == [built[0], built[0]]
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert not any("samples" in key for key in ckpt["state_dict"])
    assert "samples" not in ckpt["epr"]
