"""SGLangServerEngine against the fake SGLang HTTP server (a real tiny model behind the JSON)."""

from __future__ import annotations

import copy

import pytest
import torch

from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.sglang_server import SGLangServerEngine
from epr_lightning.testing.fake_sglang import FakeSGLangServer
from epr_lightning.tiny import char_tokenizer, tiny_causal_lm


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture
def policy(tok) -> torch.nn.Module:
    return tiny_causal_lm(
        len(tok), hidden_size=32, intermediate_size=64, num_layers=2, eos_token_id=tok.eos_token_id
    )


@pytest.fixture
def server(policy, tok):
    with FakeSGLangServer(model=copy.deepcopy(policy), tokenizer=tok) as srv:
        yield srv


def make_engine(urls: list[str], tok, policy=None, **kw) -> SGLangServerEngine:
    kw.setdefault("backoff_s", 0.0)
    engine = SGLangServerEngine(urls=urls, **kw)
    engine.sleeps = []  # type: ignore[attr-defined]
    engine._sleep = engine.sleeps.append  # type: ignore[attr-defined]  # count retries without waiting
    engine.setup(policy, tok)
    return engine


def prompts(tok) -> list[list[int]]:
    return [tok.encode("ab"), tok.encode("xyz1")]


def ref_logprobs(
    model: torch.nn.Module, prompt: list[int], completion: list[int], temperature: float
) -> torch.Tensor:
    """The trainer's recomputation: log_softmax(logits / T) of each completion token in one forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, -1)
    return logp.gather(1, torch.tensor(completion)[:, None])[:, 0]


def perturb(model: torch.nn.Module) -> None:
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))


def test_generate_payload_is_sglang_batch_json(server, tok) -> None:
    engine = make_engine([server.url], tok)
    assert server.requests[0][:2] == ("GET", "/health_generate")
    params = SamplingParams(temperature=0.7, max_new_tokens=5, stop_token_ids=[7], seed=3)
    engine.generate(prompts(tok), params, num_samples=3)
    (body,) = [b for _, p, b in server.requests if p == "/generate"]
    assert set(body) == {"input_ids", "sampling_params", "return_logprob"} and body["return_logprob"] is True
    p0, p1 = prompts(tok)
    assert body["input_ids"] == [p0, p0, p0, p1, p1, p1]  # prompt-major repetition
    sps = body["sampling_params"]
    assert len(sps) == 6
    for sp in sps:
        assert (
            sp["max_new_tokens"] == 5
            and sp["temperature"] == 0.7
            and sp["top_p"] == 1.0
            and sp["top_k"] == -1
        )
        assert sp["stop_token_ids"] == [7, tok.eos_token_id]
    assert len({sp["sampling_seed"] for sp in sps}) == 6  # repeated prompts must not share a seed


def test_rollout_is_prompt_major_and_logprobs_match_a_forward_pass(server, tok, policy) -> None:
    engine = make_engine([server.url], tok)
    stops = list(range(10, 40))  # ~30% of the vocab: both endings occur within 4 tokens
    params = SamplingParams(temperature=0.8, max_new_tokens=4, stop_token_ids=stops, seed=0)
    ro = engine.generate(prompts(tok) * 3, params, num_samples=2)
    assert ro.group_index == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert ro.prompt_ids[::2] == prompts(tok) * 3 and ro.prompt_ids[1::2] == prompts(tok) * 3
    assert {"stop", "length"} == set(ro.finish_reason)
    for p, c, lp, why, text in zip(
        ro.prompt_ids,
        ro.completion_ids,
        ro.sampler_logprobs,
        ro.finish_reason,
        ro.completion_text,
        strict=False,
    ):
        assert len(c) == len(lp) > 0
        if why == "stop":
            assert c[-1] in stops + [tok.eos_token_id]  # the stop token is kept, with its log-prob
        else:
            assert len(c) == 4
        assert text == tok.decode(c, skip_special_tokens=True)
        torch.testing.assert_close(torch.tensor(lp), ref_logprobs(policy, p, c, 0.8), atol=1e-5, rtol=0)


def test_prompts_are_spread_over_servers_in_order(policy, tok) -> None:
    with (
        FakeSGLangServer(model=policy, tokenizer=tok) as a,
        FakeSGLangServer(model=policy, tokenizer=tok) as b,
    ):
        engine = make_engine([a.url, b.url], tok)
        three = [tok.encode("a"), tok.encode("bb"), tok.encode("ccc")]
        ro = engine.generate(three, SamplingParams(max_new_tokens=3), num_samples=2)
        sent = [body["input_ids"] for s in (a, b) for _, p, body in s.requests if p == "/generate"]
        assert sent == [[three[0]] * 2 + [three[1]], [three[1]] + [three[2]] * 2]  # contiguous halves
        assert ro.prompt_ids == [q for q in three for _ in range(2)]


def test_disk_sync_pauses_flushes_and_changes_generations(server, tok, policy, tmp_path) -> None:
    engine = make_engine(
        [server.url], tok, weight_sync="disk", sync_dir=str(tmp_path / "sync"), dtype="float32"
    )
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=5)
    before = engine.generate(prompts(tok), params, num_samples=1)
    perturb(policy)
    server.requests.clear()
    engine.push_weights(policy)
    assert server.paths() == [
        "/pause_generation",
        "/flush_cache",
        "/update_weights_from_disk",
        "/continue_generation",
    ]
    assert server.requests[0][2] == {"mode": "retract"}
    assert server.requests[2][2] == {
        "model_path": str(tmp_path / "sync" / "weights_v1"),
        "weight_version": "1",
    }
    after = engine.generate(prompts(tok), params, num_samples=1)
    assert after.weight_version == 1 and before.weight_version == 0
    assert after.completion_ids != before.completion_ids or after.sampler_logprobs != before.sampler_logprobs
    for p, c, lp in zip(after.prompt_ids, after.completion_ids, after.sampler_logprobs, strict=True):
        torch.testing.assert_close(torch.tensor(lp), ref_logprobs(policy, p, c, 1.0), atol=1e-5, rtol=0)
    engine.push_weights(policy)  # the previous folder is replaced, not accumulated
    assert sorted(d.name for d in (tmp_path / "sync").iterdir()) == ["weights_v2"]


class RecordingBroadcaster:
    """Stands in for the NCCL group: records the join and hands each tensor to the fake servers."""

    def __init__(self, servers: list[FakeSGLangServer]) -> None:
        self.servers, self.joins, self.sent = servers, [], []

    def join(self, *args: object) -> None:
        self.joins.append(args)

    def broadcast(self, tensor: torch.Tensor) -> None:
        self.sent.append(tensor)
        for s in self.servers:
            s.broadcast_sink(tensor)


def test_distributed_sync_call_order_payloads_and_weights(server, tok, policy) -> None:
    engine = make_engine(
        [server.url], tok, weight_sync="distributed", weight_bucket_mb=0.01, nccl_master_port=29611
    )
    engine.broadcaster = bc = RecordingBroadcaster([server])
    perturb(policy)
    server.requests.clear()
    engine.push_weights(policy)
    paths = server.paths()
    n_chunks = paths.count("/update_weights_from_distributed")
    assert n_chunks > 1
    assert paths == (
        ["/init_weights_update_group", "/pause_generation", "/flush_cache", "/begin_weight_update"]
        + ["/update_weights_from_distributed"] * n_chunks
        + ["/end_weight_update", "/flush_cache", "/continue_generation"]
    )
    init = server.requests[0][2]
    assert init == {
        "master_address": "127.0.0.1",
        "master_port": 29611,
        "rank_offset": 1,
        "world_size": 2,
        "group_name": engine.group_name,
        "backend": "nccl",
    }
    assert bc.joins == [("127.0.0.1", 29611, 2, engine.group_name, "nccl")]
    chunks = [b for _, p, b in server.requests if p == "/update_weights_from_distributed"]
    names = [n for b in chunks for n in b["names"]]
    assert names == list(policy.state_dict())  # HF names, model order, nothing twice
    assert all(set(b["dtypes"]) == {"bfloat16"} and b["flush_cache"] is False for b in chunks)
    assert all(b["shapes"] == [list(policy.state_dict()[n].shape) for n in b["names"]] for b in chunks)
    assert [t.dtype for t in bc.sent] == [torch.bfloat16] * len(names)
    w = "model.layers.1.mlp.down_proj.weight"
    got = torch.tensor(engine.request(server.url, "/get_weights_by_name", {"name": w, "truncate_size": 3}))
    torch.testing.assert_close(got, policy.state_dict()[w][:3].bfloat16().float(), atol=0, rtol=0)
    server.requests.clear()
    engine.push_weights(policy)
    assert "/init_weights_update_group" not in server.paths() and engine.weight_version == 2


def test_begin_rejected_fails_closed(server, tok, policy) -> None:
    engine = make_engine([server.url], tok, weight_sync="distributed")
    engine.broadcaster = RecordingBroadcaster([server])
    server.fail_next(1, status=400, path="/begin_weight_update")
    with pytest.raises(RuntimeError, match="begin_weight_update"):
        engine.push_weights(policy)
    assert "/update_weights_from_distributed" not in server.paths()
    assert server.paths()[-1] == "/continue_generation"  # servers are not left paused
    assert engine.weight_version == 0


def test_server_without_transactions_skips_begin_end(policy, tok) -> None:
    with FakeSGLangServer(model=copy.deepcopy(policy), tokenizer=tok, transactional=False) as old:
        engine = make_engine([old.url], tok, weight_sync="distributed")
        engine.broadcaster = RecordingBroadcaster([old])
        engine.push_weights(policy)
        assert "/end_weight_update" not in old.paths() and "/update_weights_from_distributed" in old.paths()


def test_retries_on_5xx_with_exponential_backoff(server, tok) -> None:
    engine = make_engine([server.url], tok, max_retries=3, backoff_s=0.5)
    server.fail_next(2, status=503, path="/generate")
    ro = engine.generate(prompts(tok), SamplingParams(max_new_tokens=2), num_samples=1)
    assert len(ro) == 2 and server.paths().count("/generate") == 3
    assert engine.sleeps == [0.5, 1.0]


def test_flush_cache_400_is_retried(server, tok, policy, tmp_path) -> None:
    engine = make_engine([server.url], tok, sync_dir=str(tmp_path))
    server.fail_next(2, status=400, path="/flush_cache")
    engine.push_weights(policy)
    assert server.paths().count("/flush_cache") == 3 and engine.weight_version == 1


def test_server_down_raises_after_counted_retries_and_leaves_checkpoint(
    server, tok, policy, tmp_path
) -> None:
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"trainer state \x00\x01")
    engine = make_engine([server.url], tok, sync_dir=str(tmp_path / "sync"), max_retries=2, backoff_s=0.25)
    url = server.url
    server.stop()
    with pytest.raises(RuntimeError, match=rf"{url}.*failed 3 times") as info:
        engine.push_weights(policy)
    assert "pause_generation" in str(info.value)
    assert engine.sleeps == [0.25, 0.5] * 2  # 2 retries of pause, then of the best-effort continue
    assert ckpt.read_bytes() == b"trainer state \x00\x01" and engine.weight_version == 0
    with pytest.raises(RuntimeError, match=rf"{url}.*health_generate.*failed 3 times"):
        make_engine([url], tok, max_retries=2)


def test_down_server_503_everywhere(server, tok) -> None:
    engine = make_engine([server.url], tok, max_retries=1)
    server.down = True
    with pytest.raises(RuntimeError, match="HTTP 503"):
        engine.generate(prompts(tok), SamplingParams(max_new_tokens=2), num_samples=1)
    assert server.paths().count("/generate") == 2


def test_abort_is_resubmitted_once_then_fails(server, tok) -> None:
    engine = make_engine([server.url], tok)
    server.abort_next(1)
    ro = engine.generate(prompts(tok), SamplingParams(max_new_tokens=3), num_samples=2)
    assert set(ro.finish_reason) <= {"stop", "length"}
    bodies = [b for _, p, b in server.requests if p == "/generate"]
    assert [len(b["input_ids"]) for b in bodies] == [4, 1]
    server.abort_next(2)
    with pytest.raises(RuntimeError, match="aborted sample 0 twice"):
        engine.generate(prompts(tok)[:1], SamplingParams(max_new_tokens=3), num_samples=1)


def test_admin_api_key_header(policy, tok, tmp_path) -> None:
    with FakeSGLangServer(model=copy.deepcopy(policy), tokenizer=tok, admin_api_key="s3cret") as srv:
        bare = make_engine([srv.url], tok, sync_dir=str(tmp_path))
        with pytest.raises(RuntimeError, match="HTTP 401"):
            bare.push_weights(policy)
        assert srv.paths().count("/pause_generation") == 1  # a 4xx is not retried
        keyed = make_engine([srv.url], tok, sync_dir=str(tmp_path), admin_api_key="s3cret")
        keyed.push_weights(policy)
        assert keyed.weight_version == 1


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="weight_sync"):
        SGLangServerEngine(weight_sync="nfs")
    with pytest.raises(ValueError, match="urls"):
        SGLangServerEngine(urls=[])
    assert SGLangServerEngine().urls == ["http://127.0.0.1:30000"]


def test_torch_broadcaster_reaches_a_peer_process_over_gloo(tmp_path) -> None:
    """The default broadcaster's group and broadcast, with a peer process playing the server's rank 1."""
    import socket
    import subprocess
    import sys

    from epr_lightning.rollout.sglang_sync import TorchBroadcaster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    peer = (
        "import torch, sys\n"
        "from epr_lightning.rollout.sglang_sync import init_custom_process_group\n"
        f"pg = init_custom_process_group('gloo', 'tcp://127.0.0.1:{port}', 2, 1, 'g', timeout_s=60)\n"
        "t = torch.empty(2, 3, dtype=torch.bfloat16)\n"
        "torch.distributed.broadcast(t, src=0, group=pg)\n"
        f"torch.save(t, {str(tmp_path / 'got.pt')!r})\n"
        # leave the group before exiting: gloo's threads abort the process ("terminate called without an
        # active exception", SIGABRT) when torch tears down a live group at interpreter exit
        "torch.distributed.destroy_process_group(pg)\n"
        "import os, sys; sys.stdout.flush(); os._exit(0)\n"  # and skip the C++ static teardown
    )
    proc = subprocess.Popen([sys.executable, "-c", peer])
    bc = TorchBroadcaster(timeout_s=60)  # a peer that dies on start fails the test in a minute, not ten
    try:
        bc.join("127.0.0.1", port, 2, "g", "gloo")
        sent = torch.tensor([[1.5, -2, 3], [0.25, 8, -1]], dtype=torch.bfloat16)
        bc.broadcast(sent)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        bc.close()
    assert torch.equal(torch.load(tmp_path / "got.pt"), sent)
