"""The warm-start SFT stage: a demonstration is tokenized exactly as the RL episode of the same trajectory (token
ids and loss mask), the loss is the NLL of the assistant tokens only, bad JSONL lines are one-line errors naming
file:line and the field, and `epr-lightning sft` writes a checkpoint that `fit --model.init_args.init_weights`
starts from, weight for weight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

from epr_lightning.cli import build_cli, build_sft_cli, main
from epr_lightning.envs import EnvironmentTask
from epr_lightning.logprobs import naive_logprobs_entropy
from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams
from epr_lightning.rollout.episodes import run_episodes
from epr_lightning.sft import SFTModule, assistant_nll
from epr_lightning.sft_data import ChatDataModule, ChatEncoder, Conversation, collate, read_conversations
from epr_lightning.testing.scripted_env import ScriptedEnvironment

ROOT = Path(__file__).resolve().parents[1]
SFT = ROOT / "configs" / "sft"
CALL_END = "</tool_call>"


class TextEngine(RolloutEngine):
    """Turn k of every episode is ``texts[k]``'s tokens, then EOS unless the text ends with a stop string (as an
    engine that stopped there returns it)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.calls = texts, 0

    def setup(self, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1) -> None:
        self.tokenizer = tokenizer

    def generate(self, prompt_ids, params: SamplingParams, num_samples: int, *, model=None) -> Rollout:
        text = self.texts[self.calls]
        self.calls += 1
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not any(text.endswith(s) for s in params.stop):
            ids.append(self.tokenizer.eos_token_id)
        n = len(prompt_ids) * num_samples
        return Rollout(
            prompt_ids=[list(p) for p in prompt_ids for _ in range(num_samples)],
            completion_ids=[list(ids) for _ in range(n)],
            sampler_logprobs=[[-0.5] * len(ids) for _ in range(n)],
            group_index=[i // num_samples for i in range(n)],
            finish_reason=["stop"] * n,
            completion_text=[text] * n,
            prompt_text=[""] * n,
        )


class StopAtCallEnd(ScriptedEnvironment):
    def stop_strings(self) -> list[str]:
        return [CALL_END]


def _rl_and_sft(tok, env, texts: list[str], stop_strings: list[str], **task_kw):
    """The RL episode of a scripted trajectory and the SFT sample of the same conversation: (ids, mask) each."""
    task = EnvironmentTask(env, max_turns=4, max_episode_tokens=600, **task_kw)
    engine = TextEngine(texts)
    engine.setup(None, tok)
    params = SamplingParams(max_new_tokens=200, stop_token_ids=[tok.eos_token_id])
    example = task.examples("train")[0]
    rollout = run_episodes(engine, None, tok, task, [example], params, 1)
    ep = rollout.episodes[0]
    assert ep.ended_by == "final_answer" and ep.num_turns == len(texts)
    batch = rollout.to_batch(tok.pad_token_id)
    n = int(batch.attention_mask[0].sum())
    rl = (batch.input_ids[0, :n].tolist(), batch.loss_mask[0, :n].int().tolist())
    role = task_kw.get("observation_role", "tool")
    wrapper = getattr(task, "observation_wrapper", "{observation}")
    messages = list(example.messages or []) + [
        {"role": "assistant", "content": t["content"]}
        if t["role"] == "assistant"
        else {"role": role, "content": wrapper.replace("{observation}", t["content"])}
        for t in ep.turns
    ]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == texts
    sample = ChatEncoder(tok, [tok.eos_token_id], stop_strings=stop_strings).encode(
        Conversation(messages, None, "x:1")
    )
    return rl, (sample.input_ids, sample.loss_mask)


def test_a_demonstration_gives_the_token_ids_and_mask_of_the_rl_episode(tiny_tokenizer) -> None:
    texts = ["look up Ada", "pay 5 to id 3", "Done, paid."]
    rl, sft = _rl_and_sft(tiny_tokenizer, ScriptedEnvironment([3], [14]), texts, [])
    assert sft == rl
    assert sum(sft[1]) == sum(len(t) + 1 for t in texts)  # the char tokenizer: each text and its <|im_end|>


def test_turns_that_a_stop_string_ends_match_too(tiny_tokenizer) -> None:
    # the episode stops a turn at </tool_call> without <|im_end|>: that token comes, masked, with the observation
    texts = ['<tool_call>{"name": "a"}</tool_call>', '<tool_call>{"name": "b"}</tool_call>', "Done."]
    rl, sft = _rl_and_sft(tiny_tokenizer, StopAtCallEnd([3], [9]), texts, [CALL_END])
    assert sft == rl
    assert sum(sft[1]) == sum(len(t) for t in texts) + 1  # only the final answer ends with <|im_end|>
    # without the stop strings the SFT sample would train on an end-of-turn token the episode never has
    _, wrong = _rl_and_sft(tiny_tokenizer, StopAtCallEnd([3], [9]), texts, [])
    assert wrong != rl


def test_observations_in_user_messages_match_too(tiny_tokenizer) -> None:
    texts = ["first", "second", "Done."]
    rl, sft = _rl_and_sft(
        tiny_tokenizer, ScriptedEnvironment([3], [11]), texts, [], observation_role="user",
        observation_wrapper="<tool_response>{observation}</tool_response>",
    )  # fmt: skip
    assert sft == rl


def test_the_loss_is_the_mean_nll_of_the_assistant_tokens_only(tiny_model, tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    conversations = read_conversations(ROOT / "configs" / "sft" / "example_demos.jsonl")[:3]
    encoder = ChatEncoder(tok, [tok.eos_token_id], stop_strings=[CALL_END])
    batch = collate([encoder.encode(c) for c in conversations], tok.pad_token_id)
    module = SFTModule(policy=None)
    module.policy, module.tokenizer = tiny_model, tok
    loss, count = module.nll(batch)
    with torch.no_grad():
        logp, _ = naive_logprobs_entropy(tiny_model, batch["input_ids"], batch["attention_mask"])
    mask = batch["loss_mask"]
    # position t's log-prob predicts token t; only assistant tokens count, each the same
    expected = -(logp * mask).sum() / mask.sum()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    assert int(count) == int(mask.sum()) < int(batch["attention_mask"].sum()) // 2
    # hand-computed: NLL of log-probs (−1, −3) on the masked tokens, the third ignored
    got, n = assistant_nll(torch.tensor([[-1.0, -3.0, -7.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert float(got) == 2.0 and int(n) == 2


# ------------------------------------------------------------------------------------------- bad input
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"bad\.jsonl:2: malformed JSON"),
        ("[1, 2]", r"bad\.jsonl:2: expected a JSON object with 'messages', got list"),
        ('{"prompt": "x"}', r"bad\.jsonl:2: 'messages' must be a non-empty list"),
        (
            '{"messages": [{"role": "bot", "content": "x"}]}',
            r"bad\.jsonl:2: messages\[0\]\.role must be one of",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]}',
            r"bad\.jsonl:2: messages\[1\]\.content must be a string, got int",
        ),
        ('{"messages": [{"role": "user", "content": "x"}]}', r"bad\.jsonl:2: no assistant message"),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}, '
            '{"role": "tool", "content": "t"}]}',
            r"bad\.jsonl:2: the last message must be an assistant turn, got 'tool'",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}, '
            '{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]}',
            r"bad\.jsonl:2: messages\[2\]: a system message after the first assistant turn",
        ),
    ],
)
def test_a_bad_line_is_one_error_naming_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_conversations(path)


def test_the_cli_reports_a_bad_line_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"messages": [{"role": "bot", "content": "x"}]}\n')
    with pytest.raises(SystemExit) as exit_:
        main(["sft", "--config", "sft/tiny", "--data.init_args.path", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}:2: messages[0].role must be one of" in err


@pytest.mark.parametrize("name", sorted(p.stem for p in SFT.glob("*.yaml")))
def test_shipped_sft_configs_compose(name: str) -> None:
    cli = build_sft_cli(["--config", str(SFT / f"{name}.yaml"), "--trainer.logger", "false"], run=False)
    assert isinstance(cli.model, SFTModule) and isinstance(cli.datamodule, ChatDataModule)
    cli.datamodule.setup("fit")
    assert len(cli.datamodule.train_conversations) == 8 - len(cli.datamodule.val_conversations) > 0


# ------------------------------------------------------------------------------------------- SFT → RL
class FirstWeights(Callback):
    """The policy's weights when training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}


def test_sft_writes_a_checkpoint_that_fit_starts_from(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    main(
        ["sft", "--config", "sft/tiny", "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false"]
    )
    printed = capsys.readouterr().out
    ckpt = next(tmp_path.rglob("last.ckpt"))
    assert f"wrote {ckpt.relative_to(tmp_path)}" in printed
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    sft = {k.removeprefix("policy."): v for k, v in state["state_dict"].items()}
    assert state["global_step"] == 3

    # fit from it: a 2-iteration RL run of the tiny model (configs/tiny_cpu.yaml) with model.init_weights
    cli = build_cli(
        ["--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "--model.init_args.init_weights", str(ckpt),
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"],
        run=False,
    )  # fmt: skip
    first = FirstWeights()
    cli.trainer.callbacks.append(first)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.model.iteration == 2
    fresh = build_cli(["--config", str(ROOT / "configs" / "tiny_cpu.yaml")], run=False).model
    fresh.configure_model()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(sft[name], fresh.policy.state_dict()[name])  # SFT moved the weights ...
    for key, value in sft.items():  # ... and RL started from exactly them
        assert torch.equal(first.weights[key], value), key
    assert not torch.equal(cli.model.policy.state_dict()[name], sft[name])  # and trained on from there


def test_val_loss_is_logged_on_the_held_out_share(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the saved config.yaml goes there
    cli = build_sft_cli(
        ["--config", str(SFT / "tiny.yaml"), "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
         "--trainer.max_steps", "6", "--trainer.enable_progress_bar", "false"],
        run=False,
    )  # fmt: skip
    cli.trainer.validate(cli.model, cli.datamodule)
    before = float(cli.trainer.callback_metrics["val/loss"])
    cli.trainer.fit(cli.model, cli.datamodule)
    after = float(cli.trainer.callback_metrics["val/loss"])
    assert len(cli.datamodule.val_conversations) == 2  # 25% of the 8 example conversations
    assert after < before  # the held-out demonstrations got likelier


def test_a_lora_sft_checkpoint_loads_into_fit_with_the_same_lora(tmp_path: Path, monkeypatch) -> None:
    from lightning.pytorch import Trainer

    from epr_lightning.lora import LoRAConfig
    from epr_lightning.models import TinyModel
    from epr_lightning.module import RLModule

    monkeypatch.chdir(tmp_path)
    lora = LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    module = SFTModule(
        policy=TinyModel(hidden_size=64, num_layers=2), lora=lora,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
    )  # fmt: skip
    data = ChatDataModule(str(SFT / "example_demos.jsonl"), val_fraction=0.25, batch_size=2)
    trainer = Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "sft.ckpt")
    rl = RLModule(
        policy=TinyModel(hidden_size=64, num_layers=2), lora=lora, init_weights=str(tmp_path / "sft.ckpt")
    )
    rl.configure_model()
    sft, loaded = module.policy.state_dict(), rl.policy.state_dict()
    assert sft.keys() == loaded.keys() and all(torch.equal(sft[k], loaded[k]) for k in sft)
    trained = [k for k in sft if "lora_B" in k]
    assert trained and all(sft[k].abs().sum() > 0 for k in trained)  # peft starts B at 0: SFT trained them
