"""Multi-turn episodes on the HF engine: observation tokens (the template's tool message), token-exact batched
turns with masks checked position by position, every end cause, broken environments, and a 2-iteration
end-to-end run of the tiny model that logs episode metrics and a sample episode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from epr_lightning.envs import EnvironmentTask
from epr_lightning.logprobs import score_tokens
from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.episodes import EpisodeRollout, run_episodes
from epr_lightning.rollout.hf import HFEngine
from epr_lightning.rollout.stops import stop_string_length
from epr_lightning.rollout.turn_tokens import TurnTokens
from epr_lightning.testing.scripted_env import BadEnvironment, ScriptedEnvironment

ROOT = Path(__file__).resolve().parents[1]


def params(tok, max_new_tokens: int = 12) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=[tok.eos_token_id], seed=3)


def episodes(tiny_model, tok, env, n_examples: int, samples: int = 2, **task_kw) -> EpisodeRollout:
    task = EnvironmentTask(env, **{"max_turns": 3, "max_episode_tokens": 200, **task_kw})
    engine = HFEngine()
    engine.setup(tiny_model, tok)
    return run_episodes(
        engine, tiny_model, tok, task, task.examples("train")[:n_examples], params(tok), samples
    )


def check_positions(rollout: EpisodeRollout, tok, loss_mask, sampler_logp, input_ids) -> None:
    """Every position of every row against the episode's turns: prompt 0, model tokens 1 with their sampler
    log-prob, observation tokens 0 and exactly the template's tool message for that turn's text, padding 0."""
    turn_tokens = TurnTokens(tok, [tok.eos_token_id])
    for i, ep in enumerate(rollout.episodes):
        p = len(ep.prompt_ids)
        assert input_ids[i, :p].tolist() == ep.prompt_ids and not loss_mask[i, :p].any()
        roles = [t["role"] for t in ep.turns]
        assert [s[0] for s in ep.spans] == roles and roles[0] == "assistant"
        assert ep.spans[0][1] == 0 and all(a[2] == b[1] for a, b in zip(ep.spans, ep.spans[1:], strict=False))
        for (role, start, end), turn in zip(ep.spans, ep.turns, strict=True):
            ids = input_ids[i, p + start : p + end].tolist()
            mask, lp = loss_mask[i, p + start : p + end], sampler_logp[i, p + start : p + end]
            if role == "assistant":
                assert mask.eq(1).all() and (lp < 0).all() and end > start
                assert tok.decode(ids, skip_special_tokens=True) == turn["content"]
            else:
                stopped = input_ids[i, p + start - 1].item() == tok.eos_token_id
                assert ids == turn_tokens.observation(turn["content"], stopped)
                assert mask.eq(0).all() and lp.eq(0).all()
        total = p + ep.spans[-1][2]
        assert not loss_mask[i, total:].any()
        assert int(loss_mask[i].sum()) == sum(e - s for r, s, e in ep.spans if r == "assistant")


# --------------------------------------------------------------------------- observation tokens
def test_observation_tokens_are_the_templates_tool_message(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    tt = TurnTokens(tok, [tok.eos_token_id])
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    after = enc("\n<|im_start|>tool\nok: 1<|im_end|>\n<|im_start|>assistant\n")
    assert tt.observation("ok: 1", model_stopped=True) == after
    assert tt.observation("ok: 1", model_stopped=False) == [tok.eos_token_id] + after  # a cut turn is closed
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert tt.prompt(messages) == enc(
        "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tools_go_to_templates_that_take_them(tiny_tokenizer) -> None:
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{% if tools %}T{{ tools | length }}|{% endif %}" + tok.chat_template
    tt = TurnTokens(tok, [tok.eos_token_id])
    spec = [{"type": "function", "function": {"name": "f", "description": "", "parameters": {}}}]
    ids = tt.prompt([{"role": "user", "content": "u"}], tools=spec)
    assert tok.decode(ids).startswith("T1|<|im_start|>user")
    assert not tok.decode(
        TurnTokens(tiny_tokenizer, [tok.eos_token_id]).prompt([{"role": "user", "content": "u"}], tools=spec)
    ).startswith("T")


def test_template_without_stop_token_is_one_clear_error(tiny_tokenizer) -> None:
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="does not end an assistant message with a stop token"):
        TurnTokens(tok, [tok.eos_token_id])


# --------------------------------------------------------------------------- token-exact batched turns
def test_turns_are_token_exact_and_masked_position_by_position(tiny_model, tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    rollout = episodes(tiny_model, tok, ScriptedEnvironment([2, 3], [10, 25]), 2, samples=2)
    assert rollout.group_index == [0, 0, 1, 1]
    assert all(ep.num_turns >= 2 for ep in rollout.episodes)
    tokens = rollout.to_batch(tok.pad_token_id)
    check_positions(rollout, tok, tokens.loss_mask, tokens.sampler_logprobs, tokens.input_ids)
    # the sampler log-probs are the policy's own (fp32, T=1) at every model token: a ratio of exactly ~1
    with torch.no_grad():
        own = score_tokens(
            tiny_model, tokens.input_ids, tokens.attention_mask, tokens.loss_mask, temperature=1.0
        )
    m = tokens.loss_mask.bool()
    assert torch.allclose(own.logp[m], tokens.sampler_logprobs[m], atol=1e-4)
    # the diversity metrics read the model's turns only
    assert "obs1" not in "".join(rollout.completion_text)


class StopAt(ScriptedEnvironment):
    """A scripted environment whose model turns end at ``stop`` (like ToolWorld's ``</tool_call>``)."""

    def __init__(self, stop: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop = stop

    def stop_strings(self) -> list[str]:
        return [self.stop]


def first_fresh_pair(text: str) -> str:
    """Two characters of ``text`` that first occur at position k >= 1 with more text after them."""
    for k in range(1, len(text) - 3):
        if text.find(text[k : k + 2]) == k:
            return text[k : k + 2]
    raise AssertionError(f"no usable stop string in {text!r}")


def test_a_stop_string_ends_a_turn_with_the_sampled_tokens(tiny_model, tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    free = episodes(tiny_model, tok, ScriptedEnvironment([3], [10]), 2, samples=2)
    stop = first_fresh_pair(free.episodes[0].turns[0]["content"])
    rollout = episodes(tiny_model, tok, StopAt(stop, [3], [10]), 2, samples=2)
    # the first turns come from the same generate call: each is the free turn up to the end of the string
    by_string = 0
    for ep, ref in zip(rollout.episodes, free.episodes, strict=True):
        first = ref.completion_ids[: ref.spans[0][2]]
        n = stop_string_length(first, [stop], tok)
        assert ep.completion_ids[: ep.spans[0][2]] == (first if n is None else first[:n])
        for role, start, end in ep.spans:
            ids = ep.completion_ids[start:end]
            text = tok.decode(ids, skip_special_tokens=True)
            if role == "assistant" and ids[-1] != tok.eos_token_id and text.endswith(stop):
                by_string += 1
                assert text.find(stop) == len(text) - len(stop)  # it ended at the string's first occurrence
                assert ep.completion_ids[end] == tok.eos_token_id  # closed by the observation (mask 0)
    assert by_string >= 1
    tokens = rollout.to_batch(tok.pad_token_id)
    check_positions(rollout, tok, tokens.loss_mask, tokens.sampler_logprobs, tokens.input_ids)
    with torch.no_grad():
        own = score_tokens(
            tiny_model, tokens.input_ids, tokens.attention_mask, tokens.loss_mask, temperature=1.0
        )
    m = tokens.loss_mask.bool()
    assert torch.allclose(own.logp[m], tokens.sampler_logprobs[m], atol=1e-4)  # exactly the sampled tokens


def test_each_end_cause(tiny_model, tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    # example 0: done after 2 turns; example 1: never done in 3 turns; example 2: an observation past the budget
    rollout = episodes(tiny_model, tok, ScriptedEnvironment([2, 9, 2], [10, 10, 400]), 3, samples=2)
    ended = [ep.ended_by for ep in rollout.episodes]
    assert ended == ["final_answer"] * 2 + ["turn_limit"] * 2 + ["token_budget"] * 2
    assert [ep.num_turns for ep in rollout.episodes] == [2, 2, 3, 3, 1, 1]
    assert [ep.reward for ep in rollout.episodes][2:] == [
        0.5
    ] * 4  # final_reward() for episodes the rollout ends
    assert rollout.finish_reason[4:] == ["length", "length"]
    # a budget the model's own tokens reach: the turn is cut at the budget, and the environment is not stepped
    cut = episodes(tiny_model, tok, ScriptedEnvironment([9], [10]), 1, samples=2, max_episode_tokens=5)
    assert [ep.ended_by for ep in cut.episodes] == ["token_budget"] * 2
    assert [len(ep.completion_ids) for ep in cut.episodes] == [5, 5] and all(
        ep.counters == {} for ep in cut.episodes
    )
    from epr_lightning.envs.metrics import episode_metrics

    metrics = episode_metrics(rollout, 1.0)
    assert metrics["episode/ended_by/final_answer"] == 2 and metrics["episode/ended_by/turn_limit"] == 2
    assert metrics["episode/ended_by/token_budget"] == 2 and metrics["episode/ended_by/env_error"] == 0
    assert metrics["episode/turns"] == pytest.approx(12 / 6)
    # one per step that answered an observation (the last turn before the turn limit is stepped too)
    assert metrics["episode/tool_calls"] == pytest.approx((1 + 1 + 3 + 3 + 1 + 1) / 6)


@pytest.mark.parametrize("mode", ["raise", "hang", "non_string", "bad_reward", "not_a_result"])
def test_broken_environment_ends_that_episode_with_reward_zero(tiny_model, tiny_tokenizer, mode: str) -> None:
    tok = tiny_tokenizer
    rollout = episodes(tiny_model, tok, BadEnvironment(mode, hang_s=5.0), 2, samples=2, step_timeout_s=0.3)
    good, bad = rollout.episodes[:2], rollout.episodes[2:]
    assert all(ep.ended_by == "env_error" and ep.reward == 0.0 and ep.error for ep in bad)
    assert all(ep.ended_by == "final_answer" and ep.num_turns == 2 for ep in good)  # the others go on
    scores = rollout.scores(1.0)
    assert scores.failures == 2 and scores.rewards[2:].tolist() == [0.0, 0.0]
    tokens = rollout.to_batch(tok.pad_token_id)
    assert tokens.loss_mask[2:].sum() > 0  # the broken episode's model turn is still a trainable sample
    if mode == "hang":
        assert "timed out after 0.3s" in bad[0].error


# --------------------------------------------------------------------------- end to end, 2 iterations
def _fit(tmp_path: Path, env: dict, **model_kw) -> tuple[list, list, object]:
    from lightning.pytorch import Callback

    from epr_lightning.cli import build_cli

    cfg = {
        "data": {
            "init_args": {
                "task": {
                    "class_path": "epr_lightning.envs.EnvironmentTask",
                    "init_args": {
                        "environment": env,
                        "max_turns": 3,
                        "max_episode_tokens": 160,
                        "step_timeout_s": 0.5,
                    },
                }
            }
        }
    }
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = build_cli(
        ["--config", str(ROOT / "configs/tiny_cpu.yaml"), "--config", str(path),
         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
         "--trainer.callbacks", "[]", "--data.init_args.prompts_per_step", "2", "--data.init_args.val_prompts", "2",
         "--data.init_args.val_batch_size", "2", "--trainer.limit_val_batches", "1"],
        run=False,
    )  # fmt: skip
    records, rollouts = [], []

    class Keep(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            records.append(outputs["record"])

    module = cli.model
    original = module.rollout

    def spy(examples, num_samples):
        out = original(examples, num_samples)
        if module.trainer.training:
            rollouts.append(out)
        return out

    module.rollout = spy
    cli.trainer.callbacks.append(Keep())
    cli.trainer.fit(module, datamodule=cli.datamodule)
    return records, rollouts, cli.trainer


def test_two_iterations_end_to_end_with_masks_logs_and_a_sample_episode(tmp_path, tiny_tokenizer) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {
        "class_path": "epr_lightning.testing.scripted_env.ScriptedEnvironment",
        "init_args": {"finish_after": [2, 3], "observation_chars": [10, 30], "num_examples": 8},
    }
    records, rollouts, trainer = _fit(tmp_path, env)
    assert len(records) == 2 and len(rollouts) == 2
    for record, rollout in zip(records, rollouts, strict=True):
        assert isinstance(rollout, EpisodeRollout) and all(ep.num_turns >= 2 for ep in rollout.episodes)
        check_positions(rollout, tiny_tokenizer, record.loss_mask, record.sampler_logp, record.input_ids)
        obs = (record.loss_mask == 0) & (record.input_ids != tiny_tokenizer.pad_token_id)
        assert obs.any()
        assert not record.token_advantages[obs].any()  # observations carry no advantage …
        # … and are out of the entropy statistics: the token mean equals one over model tokens only
        m = record.loss_mask.bool()
        assert record.token_mean_entropy() == pytest.approx(float(record.entropy[m].mean()), rel=1e-5)
        assert record.rewards.tolist() == [ep.reward for ep in rollout.episodes]
    metrics = trainer.callback_metrics
    for key in (
        "episode/turns",
        "episode/tool_calls",
        "episode/tool_errors",
        "episode/ended_by/final_answer",
        "episode/ended_by/turn_limit",
        "episode/ended_by/token_budget",
        "episode/ended_by/env_error",
        "episode/success/d1",
        "episode/success/d2",
        "val/success_d1",
        "val/reward_mean",
    ):
        assert key in metrics and math.isfinite(float(metrics[key])), key
    # validation says how its episodes went: every episode takes >= 2 turns, and the end causes are shares
    assert float(metrics["val/episode/turns"]) >= 2
    shares = [float(v) for k, v in metrics.items() if k.startswith("val/episode/ended_by/")]
    assert len(shares) == 4 and sum(shares) == pytest.approx(1.0)
    files = sorted((tmp_path / "runs").rglob("events.out.tfevents*"))
    acc = EventAccumulator(str(files[-1]), size_guidance={"tensors": 0})
    acc.Reload()
    assert "episodes/sample/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("episodes/sample/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "**assistant** (turn 1)" in text and "**tool** (turn 2)" in text and "**ended by**" in text


def test_a_broken_environment_does_not_stop_training(tmp_path) -> None:
    env = {
        "class_path": "epr_lightning.testing.scripted_env.BadEnvironment",
        "init_args": {"mode": "hang", "hang_s": 3.0},
    }
    records, rollouts, trainer = _fit(tmp_path, env)
    assert len(records) == 2  # both iterations ran
    errors = sum(float(r.reward_errors) for r in records)
    assert errors == sum(ep.ended_by == "env_error" for ro in rollouts for ep in ro.episodes) > 0
    assert float(trainer.callback_metrics["episode/ended_by/env_error"]) > 0


def test_a_rank_without_active_episodes_keeps_joining_the_turns(tiny_model, tiny_tokenizer) -> None:
    # this rank's episodes all end on turn 1 while another rank (simulated) stays active for two more turns
    tok = tiny_tokenizer
    task = EnvironmentTask(ScriptedEnvironment([1], [10]), max_turns=5, max_episode_tokens=200)
    calls: list[tuple[int, int]] = []

    class Counting(HFEngine):
        def generate(self, prompt_ids, params, num_samples, *, model=None):
            calls.append((len(prompt_ids), params.max_new_tokens))
            return super().generate(prompt_ids, params, num_samples, model=model)

    engine = Counting()
    engine.setup(tiny_model, tok)
    others = iter([True, True, False])
    flags: list[bool] = []

    def any_rank_active(local: bool) -> bool:
        flags.append(local)
        return local or next(others)

    rollout = run_episodes(
        engine,
        tiny_model,
        tok,
        task,
        task.examples("train")[:1],
        params(tok),
        2,
        any_rank_active=any_rank_active,
    )
    assert [ep.ended_by for ep in rollout.episodes] == ["final_answer"] * 2
    assert flags == [True, False, False, False]
    assert calls == [(2, 12), (1, 1), (1, 1)]  # the real turn, then two 1-token dummy turns
    alone = run_episodes(engine, tiny_model, tok, task, task.examples("train")[:1], params(tok), 2)
    assert len(alone.episodes) == 2 and len(calls) == 4  # single process: no dummy turns


def test_an_episode_that_cannot_start_is_one_clear_error(tiny_model, tiny_tokenizer) -> None:
    class NoStart(ScriptedEnvironment):
        def reset(self, example):
            raise KeyError("world")

    with pytest.raises(
        RuntimeError,
        match=r"example 'train/0': the environment could not start an episode: "
        r".*NoStart.reset raised KeyError: 'world'",
    ):
        episodes(tiny_model, tiny_tokenizer, NoStart(), 1)
