"""The ToolWorld solver plays every task template (difficulties 0-5) through the real environment without ever
reading the hidden answer, and tools/toolworld_demos.py's JSONL replays through the environment (and through
the multi-turn rollout, token for token) to the verifier's success."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from epr_lightning.envs import EnvironmentTask, ToolWorld
from epr_lightning.envs.toolworld.api import parse_tool_calls
from epr_lightning.envs.toolworld.solver import FINAL_ANSWER, observation_results, play
from epr_lightning.envs.toolworld.tasks import TEMPLATES
from epr_lightning.rollout.base import Rollout, SamplingParams
from epr_lightning.rollout.episodes import run_episodes
from epr_lightning.tasks.base import Example

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import toolworld_demos  # noqa: E402

ALL_LEVELS = [0, 1, 2, 3, 4, 5]


class HiddenAnswerRead(AssertionError):
    pass


class Tripwire:
    """Stands in for a hidden field: any use of it (iterate, index, compare, print, len) raises."""

    def _trip(self, *args: Any, **kwargs: Any) -> Any:
        raise HiddenAnswerRead("the solver read the task's hidden answer")

    __iter__ = __getitem__ = __len__ = __eq__ = __bool__ = __repr__ = __str__ = __contains__ = _trip
    __hash__ = None  # type: ignore[assignment]


def poisoned(ex: Example) -> Example:
    """The example with its answer and template name replaced by tripwires (the world stays: it is the state)."""
    meta = {**ex.meta, "required": Tripwire(), "template": Tripwire()}
    return Example(ex.id, ex.prompt, None, meta, copy.deepcopy(ex.messages))


class GradedAfterwards(ToolWorld):
    """ToolWorld whose episodes hold a tripwire as the answer until the final reward: only the verifier's own
    grading swaps the real answer in (from a table the test keeps, never from the example)."""

    answers: dict[str, Any] = {}

    def reset(self, example: Example) -> list[dict[str, Any]]:
        self.example_id = example.id
        return super().reset(example)

    def final_reward(self) -> float:
        self.required = self.answers[self.example_id]
        return super().final_reward()


def all_examples(n_per_split: int) -> list[Example]:
    env = ToolWorld(difficulties=ALL_LEVELS, num_train=n_per_split, num_val=n_per_split // 4)
    return env.examples("train") + env.examples("val")


def test_the_solver_solves_every_template_without_reading_the_answer() -> None:
    examples = all_examples(240)  # 300 tasks, 50 per level, train and dev
    env = GradedAfterwards(difficulties=ALL_LEVELS, num_train=1, num_val=0)
    env.answers = {ex.id: ex.meta["required"] for ex in examples}
    solved: dict[int, int] = {}
    for ex in examples:
        trajectory = play(env, poisoned(ex))  # a read of the answer or template raises HiddenAnswerRead
        assert trajectory.success, (ex.prompt, trajectory.error)
        solved[ex.meta["difficulty"]] = solved.get(ex.meta["difficulty"], 0) + 1
    assert len(examples) >= 200 and sorted(solved) == ALL_LEVELS
    every = {name for level in TEMPLATES.values() for name, _, _ in level}
    assert {ex.meta["template"] for ex in examples} == every  # each template was played


def test_the_tripwire_trips_on_any_use() -> None:
    wire = poisoned(all_examples(4)[0]).meta["required"]
    for use in (list, len, str, bool, lambda w: w[0], lambda w: w == [], lambda w: "x" in w):
        with pytest.raises(HiddenAnswerRead):
            use(wire)


def test_the_solver_acts_from_the_observations() -> None:
    # the same instruction in a world where the contact's id differs: the solver's call follows the lookup
    env = ToolWorld(difficulties=[2], num_train=30, num_val=0)
    ex = next(e for e in env.examples("train") if e.meta["template"] == "message")
    name = ex.prompt.split(" a message")[0].removeprefix("Send ")
    world = copy.deepcopy(ex.meta["world"])
    (person,) = [c for c in world["contacts"] if c["name"] == name]
    person["id"] = 42  # the task's answer still names the old id, so it cannot be verified any more
    moved = Example(ex.id, ex.prompt, None, {**ex.meta, "world": world}, ex.messages)
    trajectory = play(env, moved)
    (call,) = parse_tool_calls(trajectory.messages[4]["content"])
    assert call.name == "messages_send" and call.arguments["contact_id"] == 42
    assert not trajectory.success  # success is the verifier's verdict, not the solver's opinion


def test_observation_results_reads_wrapped_and_multi_call_observations() -> None:
    text = '<tool_response>\n{"name": "a", "result": [{"id": 1}]}\n{"name": "b", "error": "no"}\n</tool_response>'
    assert observation_results(text) == [{"name": "a", "result": [{"id": 1}]}, {"name": "b", "error": "no"}]
    assert observation_results("no json {here") == []


def test_level_0_tasks_are_one_call_with_literal_arguments() -> None:
    env = ToolWorld(difficulties=[0], num_train=120, num_val=0)
    for ex in env.examples("train"):
        trajectory = play(env, ex)
        assert trajectory.success and trajectory.calls == 1 and len(ex.meta["required"]) == 1, ex.prompt
        (call,) = parse_tool_calls(trajectory.messages[2]["content"])
        assert not call.name.endswith(("search", "list_events", "inbox", "balance"))  # no lookup
        for key, value in call.arguments.items():
            written = f"{value:.2f}" if isinstance(value, float) else json.dumps(value).strip('"')
            assert written in ex.prompt, (key, value, ex.prompt)  # every argument is in the text


# --------------------------------------------------------------------------------------------- demonstrations
def replay(env: ToolWorld, ex: Example, record: dict[str, Any], to_message) -> float:
    """Feed a demonstration's assistant turns to a fresh episode; each observation must be the record's next
    message, exactly. The episode's reward."""
    episode = env.spawn()
    messages = record["messages"]
    assert episode.reset(ex) == messages[:2]
    for i, message in enumerate(messages[2:], start=2):
        if message["role"] != "assistant":
            continue
        result = episode.step(message["content"])
        if result.done:
            assert i == len(messages) - 1
            return float(result.reward)
        assert to_message(result.observation) == messages[i + 1]
    raise AssertionError("the demonstration has no final answer")


@pytest.mark.parametrize(
    "configs, levels", [(["task/toolworld_easy.yaml"], None), (["task/toolworld.yaml"], ALL_LEVELS)]
)
def test_demos_jsonl_round_trip(tmp_path, capsys, configs, levels) -> None:
    out = tmp_path / "demos.jsonl"
    args = [a for c in configs for a in ("--config", str(ROOT / "configs" / c))]
    args += ["--split", "dev", "--num", "24", "--out", str(out)]
    if levels:
        args += ["--difficulties", *map(str, levels)]
    assert toolworld_demos.main(args) == 0
    assert capsys.readouterr().out.startswith("solved 24/24 (")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    task = toolworld_demos.load_task([ROOT / "configs" / c for c in configs], levels)
    examples = task.environment.split_examples("dev", 24)
    assert len(records) == 24
    to_message = toolworld_demos.observation_message(task)
    for ex, record in zip(examples, records, strict=True):
        roles = [m["role"] for m in record["messages"]]
        assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
        assert record["messages"][-1]["content"] == FINAL_ANSWER
        assert replay(task.environment, ex, record, to_message) == 1.0


class ReplayEngine:
    """Answers each episode's turns with a demonstration's assistant messages, as token ids (call turns end at
    ``</tool_call>`` like a stop string; the final answer with the end-of-turn token)."""

    weight_version = 0

    def __init__(self, tok, scripts: list[tuple[list[int], list[str]]]) -> None:
        self.tok, self.scripts, self.served = tok, scripts, [0] * len(scripts)

    def generate(self, prompt_ids, params, num_samples, *, model=None) -> Rollout:
        out = []
        for context in prompt_ids:
            (k,) = [k for k, (p, _) in enumerate(self.scripts) if context[: len(p)] == p]
            text = self.scripts[k][1][self.served[k]]
            self.served[k] += 1
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            out.append(ids if "</tool_call>" in text else ids + [self.tok.eos_token_id])
        n = len(out)
        return Rollout(
            prompt_ids, out, [[-1.0] * len(c) for c in out], list(range(n)), ["stop"] * n,
            self.tok.batch_decode(out, skip_special_tokens=True), [""] * n,
        )  # fmt: skip


@pytest.mark.parametrize("role", ["tool", "user"])
def test_a_demo_and_its_rl_episode_are_the_same_tokens(tiny_tokenizer, role: str) -> None:
    # the RL rollout of the demonstration's turns reaches success, and its token ids are the chat template's
    # rendering of the demonstration (the SFT sample), up to the template's newline after the last turn; with
    # the observation as a tool message, or as a user message in the <tool_response> wrapper
    tok = tiny_tokenizer
    env = ToolWorld(difficulties=ALL_LEVELS, num_train=1, num_val=12)
    task = EnvironmentTask(env, max_turns=8, max_episode_tokens=4000, observation_role=role)
    examples = env.examples("val")
    to_message = toolworld_demos.observation_message(task)
    records = [play(env, ex, to_message).messages for ex in examples]
    scripts = [
        (tok.apply_chat_template(m[:2], add_generation_prompt=True, tokenize=True), [
            t["content"] for t in m[2:] if t["role"] == "assistant"
        ]) for m in records
    ]  # fmt: skip
    scripts = [(list(p["input_ids"] if hasattr(p, "keys") else p), turns) for p, turns in scripts]
    params = SamplingParams(max_new_tokens=400, stop_token_ids=[tok.eos_token_id])
    rollout = run_episodes(ReplayEngine(tok, scripts), None, tok, task, examples, params, 1)
    for ep, messages in zip(rollout.episodes, records, strict=True):
        assert ep.ended_by == "final_answer" and ep.reward == 1.0, ep.turns
        sft = tok.apply_chat_template(messages, tokenize=True)
        sft = list(sft["input_ids"] if hasattr(sft, "keys") else sft)
        rl = ep.prompt_ids + ep.completion_ids
        assert sft[: len(rl)] == rl and tok.decode(sft[len(rl) :]) == "\n"
