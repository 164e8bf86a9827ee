"""GracefulStop: SIGTERM/SIGINT during a real CLI run → checkpoint at the end of the iteration, one line, exit 0."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from epr_lightning.callbacks import GracefulStop

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = re.compile(
    r"^stopped by (SIG\w+) at iteration (\d+); checkpoint: (\S+); "
    r"resume with: epr-lightning fit --config (\S+) --ckpt_path (\S+)$",
    re.MULTILINE,
)


def start_run(tmp: Path) -> tuple[subprocess.Popen, Path]:
    log = tmp / "output.txt"
    cmd = [
        sys.executable, "-m", "epr_lightning", "fit",
        "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.batches_per_epoch", "500",  # far more than the test waits for
    ]  # fmt: skip
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=handle, stderr=subprocess.STDOUT)
    return proc, log


def stop_with(tmp: Path, sig: signal.Signals) -> tuple[int, str, re.Match]:
    proc, log = start_run(tmp)
    last = tmp / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 90
        while not last.exists():  # the first iteration's checkpoint: training is running
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(sig)
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    match = MESSAGE.search(output)
    assert match is not None, output[-3000:]
    return code, output, match


def test_sigterm_saves_checkpoint_exits_zero_and_resume_command_works(tmp_path: Path) -> None:
    code, output, match = stop_with(tmp_path, signal.SIGTERM)
    assert code == 0, output[-3000:]
    name, iteration, ckpt, config, resume_ckpt = match.groups()
    assert name == "SIGTERM" and ckpt == resume_ckpt
    assert len(MESSAGE.findall(output)) == 1
    iteration = int(iteration)
    assert 1 <= iteration < 500
    state = torch.load(ckpt, weights_only=False)
    assert state["epr"]["iteration"] == iteration  # the checkpoint is the stopped iteration, complete
    assert state["global_step"] == iteration  # one optimizer step per iteration in tiny_cpu.yaml
    assert Path(config).is_file() and Path(config).name == "config.yaml"
    assert "Traceback" not in output

    # the printed command resumes (one more iteration, then stop)
    resume = [*shlex.split(match.group(0).split("resume with: ", 1)[1])[1:]]
    cmd = [sys.executable, "-m", "epr_lightning", *resume, "--trainer.max_steps", str(iteration + 1)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {ckpt}" in done.stderr + done.stdout
    after = torch.load(tmp_path / "runs/tiny/version_1/checkpoints/last.ckpt", weights_only=False)
    assert after["epr"]["iteration"] == iteration + 1


def test_sigint_is_graceful_too(tmp_path: Path) -> None:
    code, output, match = stop_with(tmp_path, signal.SIGINT)
    assert code == 0, output[-3000:]
    assert match.group(1) == "SIGINT"
    assert "KeyboardInterrupt" not in output
    assert torch.load(match.group(3), weights_only=False)["epr"]["iteration"] == int(match.group(2))


def test_second_signal_interrupts_and_bad_names_are_rejected() -> None:
    stop = GracefulStop()
    stop._handle(signal.SIGTERM, None)
    assert stop.received == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGTERM, None)
    with pytest.raises(ValueError, match="SIGKILL"):
        GracefulStop(signals=["SIGKILL"])
    with pytest.raises(ValueError, match="SIGNOPE"):
        GracefulStop(signals=["SIGNOPE"])


def test_handlers_are_restored_after_training(tmp_path: Path) -> None:
    """In-process run: our handler is active only while training, Python's defaults come back after."""
    from epr_lightning.cli import build_cli

    seen: list[object] = []

    class Probe(GracefulStop):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append(signal.getsignal(signal.SIGTERM))
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    args = [
        "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.batches_per_epoch", "1",
        "--graceful_stop", "false",  # no default instance: the probe is the only GracefulStop
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    probe = Probe()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert seen and all(getattr(h, "__self__", None) is probe for h in seen)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert os.path.exists(tmp_path / "runs/tiny/version_0/checkpoints/last.ckpt")
