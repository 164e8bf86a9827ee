"""``epr-lightning export``: Lightning checkpoints (a .ckpt file, and the DCP directory of a 2-rank FSDP2 run) →
plain HF folders that ``from_pretrained`` loads and that score tokens like the trained policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from epr_lightning import export_cli as export_hf
from epr_lightning.logprobs import token_logprobs_and_entropy

REPO = Path(__file__).resolve().parents[1]

LORA_BONUS = """
model:
  init_args:
    lora: {{r: 4, alpha: 8}}
    optimizer:
      class_path: torch.optim.AdamW
      init_args: {{lr: 0.05}}
    objective:
      terms:
        - class_path: epr_lightning.objectives.entropy_terms.EntropyBonus
          init_args: {{coef: 0.1}}
trainer:
  limit_val_batches: 0
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {root}, name: run}}
data:
  init_args: {{batches_per_epoch: 2}}
"""


def scores(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(ids.shape, dtype=torch.float32)
    mask[:, :4] = 0
    with torch.no_grad():
        return token_logprobs_and_entropy(model, ids, torch.ones_like(ids), mask)[0]


def load_hf(folder: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_export_of_a_lora_ckpt_scores_like_the_trained_policy(tmp_path: Path) -> None:
    from epr_lightning.cli import build_cli

    extra = tmp_path / "lora.yaml"
    extra.write_text(LORA_BONUS.format(root=tmp_path))
    cli = build_cli(["fit", "--config", str(REPO / "configs/tiny_cpu.yaml"), "--config", str(extra)])
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (Path(cli.trainer.log_dir) / "config.yaml").is_file()
    out = tmp_path / "hf"
    assert export_hf.main([str(ckpt), str(out)]) == 0  # finds the run's config.yaml itself
    model, tok = load_hf(out)
    assert not any("lora" in k for k in model.state_dict())
    policy = cli.model.policy.eval()
    texts = ["What is 3 + 4? Answer: 7", "Tell me 12 + 30. Answer: 42"]
    ids = torch.tensor([tok(t)["input_ids"][:24] for t in texts])
    exported, trained = scores(model, ids), scores(policy, ids)
    assert (exported - trained).abs().max() <= 1e-5
    # the adapters mattered: the exported model is not the untrained base
    from epr_lightning.models import TinyModel

    base = TinyModel(hidden_size=64, num_layers=2).build()[0].eval()
    assert (scores(base, ids) - trained).abs().max() > 1e-3
    assert tok.eos_token == cli.model.tokenizer.eos_token and len(tok) == len(cli.model.tokenizer)

    # the installed command, adapters only: the base model + the exported adapters score like the trained policy
    from peft import PeftModel

    from epr_lightning.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["export", str(ckpt), str(tmp_path / "adapter"), "--lora", "adapter"])
    assert exit_.value.code == 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not list((tmp_path / "adapter").glob("model*.safetensors"))  # no full weights
    fresh = TinyModel(hidden_size=64, num_layers=2).build()[0]
    adapted = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    assert (scores(adapted, ids) - trained).abs().max() <= 1e-5


@pytest.mark.distributed
def test_export_of_an_fsdp2_dcp_directory(tmp_path: Path) -> None:
    extra = tmp_path / "lora.yaml"
    extra.write_text(LORA_BONUS.format(root=tmp_path))
    weights_dir = tmp_path / "final"
    cmd = [
        sys.executable, "-m", "epr_lightning", "fit",
        "--config", str(REPO / "configs/tiny_cpu.yaml"), "--config", str(extra),
        "--trainer.devices=2", "--trainer.use_distributed_sampler=false",
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1",
        "--data.init_args.prompts_per_step=2",
        "--trainer.callbacks+=epr_lightning.testing.step_log.StepMetricsLog",
        f"--trainer.callbacks.dirpath={weights_dir}", "--trainer.callbacks.save_weights=true",
    ]  # fmt: skip
    env = {**os.environ, "EPR_DEBUG": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "run").iterdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / ".metadata").is_file()  # a DCP directory, not a file
    out = tmp_path / "hf"
    assert export_hf.main([str(ckpt), str(out), "--config", str(run / "config.yaml")]) == 0
    model, _ = load_hf(out)
    final = torch.load(weights_dir / "final_weights.pt")
    exported = model.state_dict()
    assert set(final) <= set(exported)
    for name, tensor in final.items():  # what the sharded ranks held at the end of training
        assert torch.equal(exported[name], tensor), name


def test_export_errors_name_the_problem(tmp_path: Path) -> None:
    from epr_lightning.export import build_module, read_checkpoint_state

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint_state(tmp_path / "nope.ckpt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(FileNotFoundError, match="not a distributed checkpoint"):
        read_checkpoint_state(tmp_path / "dir")
    torch.save({"weights": 1}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        read_checkpoint_state(tmp_path / "x.ckpt")
    (tmp_path / "c.yaml").write_text("trainer: {}\n")
    with pytest.raises(ValueError, match="model:"):
        build_module([tmp_path / "c.yaml"])
    assert (
        export_hf.main([str(tmp_path / "x.ckpt"), str(tmp_path / "o"), "--config", str(tmp_path / "c.yaml")])
        == 2
    )
