"""Stop strings (``SamplingParams.stop``, e.g. ``</tool_call>``) keep token ids exact on every engine: a completion
ends at the first token whose text completes a string, and its tokens and log-probs are exactly the ones sampled
(the prefix of the same seed's completion without the stop). The HF engine stops natively; the SGLang server is
sent ``stop``; the in-process engine (``skip_tokenizer_init``, where SGLang refuses string stops) sends only the
strings that are one token, as stop token ids; every engine's output is cut the same way."""

from __future__ import annotations

import copy
import sys

import torch

from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.hf import HFEngine
from epr_lightning.rollout.sglang import SGLangEngine, build_requests
from epr_lightning.rollout.sglang_server import SGLangServerEngine
from epr_lightning.rollout.stops import cut_at_stop, single_token_stops, stop_string_length
from epr_lightning.testing.fake_sglang import FakeSGLangServer
from epr_lightning.testing.fake_sglang_module import fake_sglang_module
from epr_lightning.tiny import char_tokenizer

GREEDY_T = 1e-4  # see test_episodes_sglang: every engine picks the same tokens


def enc(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def first_fresh_pair(text: str) -> str:
    """Two characters of ``text`` that first occur at position k >= 1 with more text after them."""
    for k in range(1, len(text) - 3):
        if text.find(text[k : k + 2]) == k:
            return text[k : k + 2]
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_string_length_and_cut_hand_computed(tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    ids = enc(tok, "ab</x>cd</x>")
    assert stop_string_length(ids, ["</x>"], tok) == 6  # a, b, <, /, x, > — the first occurrence
    assert stop_string_length(ids, ["cd", "</x>"], tok) == 6 and stop_string_length(ids, ["b<"], tok) == 3
    assert stop_string_length(ids, ["zz"], tok) is None and stop_string_length(ids, [], tok) is None
    assert cut_at_stop(ids, [-1.0] * 12, ["d<"], tok) == (ids[:9], [-1.0] * 9, True)
    assert cut_at_stop(ids, [-1.0] * 12, ["q"], tok) == (ids, [-1.0] * 12, False)


def test_one_token_strings_go_as_stop_token_ids() -> None:
    tok = char_tokenizer()
    tok.add_tokens(["<tool_call>", "</tool_call>"])  # as in Qwen2.5's vocabulary
    end = tok.convert_tokens_to_ids("</tool_call>")
    assert single_token_stops(["</tool_call>", "ab"], tok) == ([end], ["ab"])
    params = SamplingParams(max_new_tokens=4, stop_token_ids=[7], stop=["</tool_call>", "ab"])
    for send, stop in ((True, ["ab"]), (False, None)):
        _, sps = build_requests([[1, 2]], 1, params, tok, 0, 0, True, send_stop_strings=send)
        assert sps[0]["stop_token_ids"] == [7, tok.eos_token_id, end] and sps[0].get("stop") == stop
    _, sps = build_requests([[1, 2]], 1, SamplingParams(max_new_tokens=4), tok, 0, 0, True)
    assert "stop" not in sps[0]  # no stop strings: the request is unchanged


def test_hf_engine_stops_at_a_string_with_the_sampled_tokens(tiny_model, tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    prompts = [enc(tok, "ab"), enc(tok, "xyz1")]

    def generate(stop: list[str]):
        engine = HFEngine()
        engine.setup(tiny_model, tok)
        params = SamplingParams(max_new_tokens=24, stop_token_ids=[tok.eos_token_id], stop=stop, seed=5)
        return engine.generate(prompts, params, 2, model=tiny_model)

    free = generate([])
    stop = first_fresh_pair(free.completion_text[0])
    cut = generate([stop])
    hits = 0
    for f_ids, f_lps, c_ids, c_lps, reason in zip(
        free.completion_ids, free.sampler_logprobs, cut.completion_ids, cut.sampler_logprobs, cut.finish_reason,
        strict=True,
    ):  # fmt: skip
        n = stop_string_length(f_ids, [stop], tok)
        expected = f_ids if n is None else f_ids[:n]
        assert c_ids == expected  # the same sampled tokens, up to the end of the string
        assert torch.allclose(torch.tensor(c_lps), torch.tensor(f_lps[: len(c_ids)]), atol=1e-6)
        if n is not None:
            hits += 1
            assert reason == "stop" and tok.decode(c_ids).endswith(stop)
            assert tok.decode(c_ids).find(stop) == len(tok.decode(c_ids)) - len(stop)
    assert hits >= 1


def test_both_sglang_engines_cut_at_stop_strings_like_hf(monkeypatch, tiny_model, tiny_tokenizer) -> None:
    tok = tiny_tokenizer
    prompts = [enc(tok, "ab"), enc(tok, "xyz1")]

    def params(stop: list[str]) -> SamplingParams:
        return SamplingParams(
            temperature=GREEDY_T, max_new_tokens=20, stop_token_ids=[tok.eos_token_id], stop=stop, seed=1
        )

    hf = HFEngine()
    hf.setup(tiny_model, tok)
    stop = first_fresh_pair(hf.generate(prompts, params([]), 1, model=tiny_model).completion_text[0])
    reference = hf.generate(prompts, params([stop]), 1, model=tiny_model)
    assert any(r == "stop" and tok.decode(c).endswith(stop) for r, c in zip(
        reference.finish_reason, reference.completion_ids, strict=True))  # fmt: skip
    with FakeSGLangServer(model=copy.deepcopy(tiny_model), tokenizer=tok) as server:
        engine = SGLangServerEngine(urls=[server.url])
        engine.setup(tiny_model, tok)
        served = engine.generate(prompts, params([stop]), 1)
        bodies = [b for _, p, b in server.requests if p == "/generate"]
    mod = fake_sglang_module(copy.deepcopy(tiny_model), tok)
    monkeypatch.setitem(sys.modules, "sglang", mod)
    local = SGLangEngine(model_path="/models/tiny", dtype="float32")
    local.setup(tiny_model, tok)
    in_process = local.generate(prompts, params([stop]), 1)
    (kw,) = [c[2] for c in mod.calls if c[0] == "generate"]
    for out in (served, in_process):
        assert out.completion_ids == reference.completion_ids and out.finish_reason == reference.finish_reason
        for a, b in zip(out.sampler_logprobs, reference.sampler_logprobs, strict=True):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)
    assert all(sp["stop"] == [stop] for body in bodies for sp in body["sampling_params"])  # the server stops
    assert all("stop" not in sp for sp in kw["sampling_params"])  # skip_tokenizer_init: cut after generation
