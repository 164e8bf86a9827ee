"""Your own model: a hub id resolved offline from a (temporary) Hugging Face cache, stop ids from the
tokenizer and the model's generation_config, chat-template options and chat-message prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from epr_lightning.cli import main
from epr_lightning.models import HFModel, encode_prompts
from epr_lightning.tiny import char_tokenizer, save_tiny

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root: Path, repo_id: str = "tiny-org/tiny-chat", **model_kwargs) -> Path:
    """``<root>/hub/models--org--name/{refs/main, snapshots/<hash>/...}``: the layout huggingface_hub writes."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    save_tiny(repo / "snapshots" / COMMIT, hidden_size=16, intermediate_size=32, num_layers=1, **model_kwargs)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return root / "hub"


@pytest.fixture()
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = fake_hub_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_is_loaded_from_the_local_cache(offline_cache: Path) -> None:
    model, tok = HFModel("tiny-org/tiny-chat").build()
    snapshot = offline_cache / "models--tiny-org--tiny-chat" / "snapshots" / COMMIT
    reference, _ = HFModel(str(snapshot)).build()
    assert model.config.hidden_size == 16 and tok.eos_token == "<|im_end|>"
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert HFModel("tiny-org/tiny-chat", revision=COMMIT).local_folder() == snapshot


def test_hub_id_trains_through_the_cli(offline_cache: Path, tmp_path: Path) -> None:
    main([
        "fit", "--config", str(ROOT / "configs/tiny_cpu.yaml"),
        "--model.init_args.policy", "epr_lightning.models.HFModel",
        "--model.init_args.policy.init_args.path", "tiny-org/tiny-chat",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.limit_val_batches", "0", "--data.init_args.batches_per_epoch", "1",
    ])  # fmt: skip
    state = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert state["epr"]["iteration"] == 1
    assert state["state_dict"]["policy.model.embed_tokens.weight"].shape[1] == 16  # the cached model's shape


def test_missing_hub_id_is_one_line_naming_the_id_and_the_cache(
    offline_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([
            "fit", "--config", str(ROOT / "configs/tiny_cpu.yaml"),
            "--model.init_args.policy", "epr_lightning.models.HFModel",
            "--model.init_args.policy.init_args.path", "tiny-org/not-downloaded",
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
        ])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epr-lightning: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "'tiny-org/not-downloaded'" in lines[0] and str(offline_cache) in lines[0]
    with pytest.raises(FileNotFoundError, match="revision 'v2'"):
        HFModel("tiny-org/tiny-chat", revision="v2").build()


def test_stop_ids_are_the_union_of_tokenizer_and_generation_config_eos(tmp_path: Path) -> None:
    # generation_config lists a second EOS ('#'); a head that always emits it must end every completion at once
    tok = char_tokenizer()
    extra = tok.convert_tokens_to_ids("#")
    folder = save_tiny(tmp_path / "m", hidden_size=16, intermediate_size=32, num_layers=1)
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=[tok.eos_token_id, extra]).save_pretrained(folder)
    from epr_lightning.module import RLModule
    from epr_lightning.rollout.base import SamplingParams

    module = RLModule(
        policy=HFModel(str(folder)), sampling=SamplingParams(max_new_tokens=10, stop_token_ids=[5])
    )
    module.configure_model()
    assert module.sampling.stop_token_ids == [5, tok.eos_token_id, extra]
    head = torch.nn.Linear(16, len(tok), bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.fill_(-30.0)
        head.bias[extra] = 30.0
    module.policy.lm_head = head
    module.engine.setup(module.policy, module.tokenizer)
    prompt = encode_prompts(module.tokenizer, ["hi"])
    rollout = module.engine.generate(prompt, module.sampling, 3, model=module.policy)
    assert rollout.completion_ids == [[extra]] * 3 and rollout.finish_reason == ["stop"] * 3


THINKING_TEMPLATE = (
    "{% if enable_thinking is defined and not enable_thinking %}[no-think]{% endif %}"
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_chat_template_kwargs_and_message_prompts_reach_the_template(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "m", hidden_size=16, intermediate_size=32, num_layers=1)
    tok = char_tokenizer()
    tok.chat_template = THINKING_TEMPLATE
    tok.save_pretrained(folder)
    from epr_lightning.module import RLModule
    from epr_lightning.tasks.base import Example

    module = RLModule(policy=HFModel(str(folder), chat_template_kwargs={"enable_thinking": False}))
    module.configure_model()
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}]  # fmt: skip
    examples = [Example(id="1", prompt="x"), Example(id="2", prompt="c", messages=chat)]
    kept = module.admit_prompts(examples)
    texts = [module.tokenizer.decode(ids) for ids in kept.ids]
    assert texts == [
        "[no-think]<user>x<assistant>",
        "[no-think]<system>S<user>a<assistant>b<user>c<assistant>",
    ]
    # a system prompt is put first unless the messages bring their own
    ids = encode_prompts(module.tokenizer, ["x", chat[1:], chat], system_prompt="T")
    assert [module.tokenizer.decode(i) for i in ids] == [
        "<system>T<user>x<assistant>",
        "<system>T<user>a<assistant>b<user>c<assistant>",
        "<system>S<user>a<assistant>b<user>c<assistant>",
    ]
