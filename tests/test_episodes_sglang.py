"""Multi-turn episodes on both SGLang engines (in-process and HTTP servers), against the fakes: every turn is an
``input_ids`` continuation of the last (previous input + output_ids + observation tokens, never re-encoded),
and with decoding the fake makes deterministic the episode's token ids equal the HF engine's."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from epr_lightning.envs import EnvironmentTask
from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.episodes import run_episodes
from epr_lightning.rollout.hf import HFEngine
from epr_lightning.rollout.sglang import SGLangEngine
from epr_lightning.rollout.sglang_server import SGLangServerEngine
from epr_lightning.testing.fake_sglang import FakeSGLangServer
from epr_lightning.testing.fake_sglang_module import fake_sglang_module
from epr_lightning.testing.scripted_env import ScriptedEnvironment

# near-greedy: the top token has probability 1 in fp32 unless two logits tie within ~1e-3 (random tiny model:
# never at this seed), so both engines' samplers, whatever their RNG, pick the same tokens
GREEDY_T = 1e-4


class StopAt(ScriptedEnvironment):
    """Model turns end at ``stop`` (like ToolWorld's ``</tool_call>``)."""

    def __init__(self, stop: str) -> None:
        super().__init__([2, 9], [10, 20])
        self.stop = stop

    def stop_strings(self) -> list[str]:
        return [self.stop]


def task(stop: str | None = None) -> EnvironmentTask:
    env = ScriptedEnvironment([2, 9], [10, 20]) if stop is None else StopAt(stop)
    return EnvironmentTask(env, max_turns=3, max_episode_tokens=200)


def roll(engine, model, tok, temperature: float, seed: int = 5, stop: str | None = None):
    t = task(stop)
    params = SamplingParams(
        temperature=temperature, max_new_tokens=10, stop_token_ids=[tok.eos_token_id], seed=seed
    )
    return run_episodes(engine, model, tok, t, t.examples("train")[:2], params, 2)


def continuations(requests: list[list[int]], rollout) -> None:
    """Each episode's request of turn k+1 is its request of turn k + the model's tokens + the observation's."""
    for ep in rollout.episodes:
        p = ep.prompt_ids
        expected = [p] + [p + ep.completion_ids[: s[1]] for s in ep.spans if s[0] == "assistant"][1:]
        sent = [
            r for r in requests if r[: len(p)] == p and ep.completion_ids[: len(r) - len(p)] == r[len(p) :]
        ]
        assert [r for r in expected if r in sent] == expected


@pytest.fixture()
def hf_reference(tiny_model, tiny_tokenizer):
    engine = HFEngine()
    engine.setup(tiny_model, tiny_tokenizer)
    return roll(engine, tiny_model, tiny_tokenizer, GREEDY_T)


def test_server_engine_episodes_match_hf_and_continue_input_ids(
    tiny_model, tiny_tokenizer, hf_reference
) -> None:
    tok = tiny_tokenizer
    with FakeSGLangServer(model=copy.deepcopy(tiny_model), tokenizer=tok) as server:
        engine = SGLangServerEngine(urls=[server.url])
        engine.setup(tiny_model, tok)
        rollout = roll(engine, None, tok, GREEDY_T)
        requests = [
            ids for method, path, body in server.requests if path == "/generate" for ids in body["input_ids"]
        ]
    assert rollout.completion_ids == hf_reference.completion_ids
    assert [ep.token_mask for ep in rollout.episodes] == [ep.token_mask for ep in hf_reference.episodes]
    assert [ep.ended_by for ep in rollout.episodes] == [ep.ended_by for ep in hf_reference.episodes]
    assert all(ep.num_turns >= 2 for ep in rollout.episodes)
    continuations(requests, rollout)
    # batched per turn: one /generate per turn with every active episode
    sizes = [len(body["input_ids"]) for _, path, body in server.requests if path == "/generate"]
    assert sizes == [4, 4, 2]


def test_in_process_engine_episodes_match_hf(monkeypatch, tiny_model, tiny_tokenizer, hf_reference) -> None:
    tok = tiny_tokenizer
    mod = fake_sglang_module(copy.deepcopy(tiny_model), tok)
    monkeypatch.setitem(sys.modules, "sglang", mod)
    engine = SGLangEngine(model_path="/models/tiny", dtype="float32")
    engine.setup(tiny_model, tok)
    rollout = roll(engine, None, tok, GREEDY_T)
    assert rollout.completion_ids == hf_reference.completion_ids
    requests = [ids for name, _, kw in mod.calls if name == "generate" for ids in kw["input_ids"]]
    continuations(requests, rollout)


def test_sampled_server_episodes_are_reproducible_and_logprobs_are_the_policys(
    tiny_model, tiny_tokenizer
) -> None:
    tok = tiny_tokenizer
    runs = []
    for _ in range(2):
        with FakeSGLangServer(model=copy.deepcopy(tiny_model), tokenizer=tok) as server:
            engine = SGLangServerEngine(urls=[server.url])
            engine.setup(tiny_model, tok)
            runs.append(roll(engine, None, tok, 1.0, seed=11))
    assert runs[0].completion_ids == runs[1].completion_ids  # the fake honours sampling_seed
    tokens = runs[0].to_batch(tok.pad_token_id)
    from epr_lightning.logprobs import score_tokens

    with torch.no_grad():
        own = score_tokens(
            tiny_model, tokens.input_ids, tokens.attention_mask, tokens.loss_mask, temperature=1.0
        )
    m = tokens.loss_mask.bool()
    assert torch.allclose(own.logp[m], tokens.sampler_logprobs[m], atol=1e-4)
    assert (tokens.sampler_logprobs[~m] == 0).all()


def test_stop_strings_give_the_same_episodes_on_every_engine(
    monkeypatch, tiny_model, tiny_tokenizer, hf_reference
) -> None:
    # a string that ends some turns early: HF stops there, the server is sent it, the in-process engine cuts there
    tok = tiny_tokenizer
    text = hf_reference.episodes[0].turns[0]["content"]
    stop = next(text[k : k + 2] for k in range(1, len(text) - 3) if text.find(text[k : k + 2]) == k)
    hf = HFEngine()
    hf.setup(tiny_model, tok)
    reference = roll(hf, tiny_model, tok, GREEDY_T, stop=stop)
    assert reference.completion_ids != hf_reference.completion_ids
    assert any(t["content"].endswith(stop) for ep in reference.episodes for t in ep.turns)
    with FakeSGLangServer(model=copy.deepcopy(tiny_model), tokenizer=tok) as server:
        engine = SGLangServerEngine(urls=[server.url])
        engine.setup(tiny_model, tok)
        served = roll(engine, None, tok, GREEDY_T, stop=stop)
        sent = [
            sp.get("stop") for _, p, b in server.requests if p == "/generate" for sp in b["sampling_params"]
        ]
    mod = fake_sglang_module(copy.deepcopy(tiny_model), tok)
    monkeypatch.setitem(sys.modules, "sglang", mod)
    local = SGLangEngine(model_path="/models/tiny", dtype="float32")
    local.setup(tiny_model, tok)
    in_process = roll(local, None, tok, GREEDY_T, stop=stop)
    for rollout in (served, in_process):
        assert rollout.completion_ids == reference.completion_ids
        assert [ep.token_mask for ep in rollout.episodes] == [ep.token_mask for ep in reference.episodes]
        assert [ep.ended_by for ep in rollout.episodes] == [ep.ended_by for ep in reference.episodes]
    assert sent and all(s == [stop] for s in sent)
