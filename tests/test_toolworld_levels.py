"""ToolWorld's easy level and its prompt: difficulty 0 and level mixing (repeats weigh), the short system prompt
with one worked example, the optional shaped reward (hand-computed, always below success) and success that stays
the verifier's verdict with it on, and configs/task/toolworld_easy.yaml composed with every method."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest

from epr_lightning.cli import build_cli
from epr_lightning.envs import EnvironmentTask, ToolWorld
from epr_lightning.envs.metrics import episode_metrics, success_by_difficulty
from epr_lightning.envs.toolworld.api import parse_tool_calls
from epr_lightning.envs.toolworld.prompts import WORKED_EXAMPLES, format_call
from epr_lightning.envs.toolworld.tasks import generate_tasks
from epr_lightning.envs.toolworld.verifier import episode_reward, progress
from epr_lightning.rollout.base import Rollout, SamplingParams
from epr_lightning.rollout.episodes import run_episodes
from epr_lightning.tasks.base import Example

ROOT = Path(__file__).resolve().parents[1]
C = ROOT / "configs"
APPS = ["contacts", "calendar", "notes", "payments", "messages"]
WORLD = {
    "contacts": [
        {"id": 1, "name": "Ada Lovelace", "phone": "555-1001", "email": ""},
        {"id": 2, "name": "Alan Turing", "phone": "555-1002", "email": ""},
        {"id": 3, "name": "Grace Hopper", "phone": "555-1003", "email": ""},
    ],
    "calendar": [{"id": 1, "title": "Yoga", "date": "2026-03-04", "time": "09:00", "attendees": [1, 2]}],
    "notes": [],
    "payments": {"balance": 100.0, "transactions": []},
    "messages": [],
}
CANCEL = [["calendar.deleted", 1], ["messages.sent", 1, "Bye"], ["messages.sent", 2, "Bye"]]


# ------------------------------------------------------------------------------------------- levels and mixing
def test_a_repeated_level_weighs_the_mix() -> None:
    tasks = generate_tasks("train", 300, [0, 0, 1], 0, APPS)
    assert [t.difficulty for t in tasks[:6]] == [0, 0, 1, 0, 0, 1]
    assert Counter(t.difficulty for t in tasks) == {0: 200, 1: 100}
    env = ToolWorld(difficulties=[0, 0, 1], num_train=90, num_val=30)
    for split in ("train", "val"):
        assert Counter(ex.meta["difficulty"] for ex in env.examples(split)) == {
            0: 2 * len(env.examples(split)) // 3,
            1: len(env.examples(split)) // 3,
        }
    assert Counter(t.difficulty for t in generate_tasks("dev", 40, [0, 1], 0, APPS)) == {0: 20, 1: 20}


def test_level_0_is_opt_in_and_uses_only_the_apps_it_names() -> None:
    assert ToolWorld(num_train=1, num_val=0).difficulties == [1, 2, 3, 4, 5]  # the default mix is unchanged
    env = ToolWorld(difficulties=[0], apps=["messages"], num_train=20, num_val=0)
    assert {ex.meta["template"] for ex in env.examples("train")} == {"message_literal"}
    names = {t.template for t in generate_tasks("train", 200, [0], 0, APPS)}
    assert len(names) == 8 and all(n.endswith("_literal") for n in names)


# ---------------------------------------------------------------------------------------------- the short prompt
def tools_listed(system: str) -> list[str]:
    block = system.split("Tools:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split("(", 1)[0] for line in block.splitlines()]


@pytest.mark.parametrize("levels", [[0], [1], [2], [3], [4], [5]])
def test_the_short_prompt_lists_the_tasks_apps_and_one_worked_example(levels: list[int]) -> None:
    short = ToolWorld(difficulties=levels, num_train=12, num_val=0, prompt_style="short")
    full = ToolWorld(difficulties=levels, num_train=12, num_val=0)
    for ex_short, ex_full in zip(short.examples("train"), full.examples("train"), strict=True):
        assert ex_short.messages[1] == ex_full.messages[1]  # the same task
        system = ex_short.messages[0]["content"]
        uses = {name.split("_")[0] for name in tools_listed(system)}
        assert system.count("<tool_call>") == 2 and system.count("Example.") == 1  # the format + one example
        (example_call,) = parse_tool_calls(system.split("Example.", 1)[1])
        assert example_call.error is None and example_call.name.split("_")[0] in uses
        assert len(system) < len(ex_full.messages[0]["content"]) or len(uses) == len(APPS)
        assert "Example." not in ex_full.messages[0]["content"]
        assert len(tools_listed(ex_full.messages[0]["content"])) == 13  # every tool


def test_short_prompt_tools_are_exactly_the_templates_apps() -> None:
    env = ToolWorld(difficulties=[0, 1, 2, 3, 4, 5], num_train=60, num_val=0, prompt_style="short")
    specs = generate_tasks("train", 60, env.difficulties, 0, APPS)
    for ex, spec in zip(env.examples("train"), specs, strict=True):
        assert {t.split("_")[0] for t in tools_listed(ex.messages[0]["content"])} == set(spec.apps)


@pytest.mark.parametrize("app", list(WORKED_EXAMPLES))
def test_each_worked_example_is_a_call_that_runs(app: str) -> None:
    task, name, arguments = WORKED_EXAMPLES[app]
    world = copy.deepcopy(WORLD)
    world["contacts"].append({"id": 4, "name": "Ken Thompson", "phone": "555-1004", "email": ""})
    world["calendar"].append(
        {"id": 2, "title": "Demo", "date": "2026-03-05", "time": "10:00", "attendees": []}
    )
    episode = ToolWorld(num_train=1, num_val=0).spawn()
    episode.reset(Example("w", task, None, {"world": world, "required": []}, []))
    result = json.loads(episode.step(format_call(name, arguments)).observation)
    assert "error" not in result and result["name"] == name


def test_prompt_style_and_shaped_reward_are_checked_at_config_time() -> None:
    with pytest.raises(ValueError, match="prompt_style"):
        ToolWorld(num_train=1, num_val=0, prompt_style="tiny")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shaped_reward must be in \[0, 0.5\]"):
        ToolWorld(num_train=1, num_val=0, shaped_reward=0.6)
    # a success threshold at or below the shaped reward would count unverified episodes as successes
    from epr_lightning.envs import EnvironmentTask

    shaped = ToolWorld(num_train=1, num_val=0, shaped_reward=0.5)
    with pytest.raises(ValueError, match="success_threshold"):
        EnvironmentTask(shaped, success_threshold=0.5)
    assert EnvironmentTask(shaped, success_threshold=0.51).reward.success_threshold == 0.51
    unshaped = ToolWorld(num_train=1, num_val=0)
    assert EnvironmentTask(unshaped, success_threshold=0.3).reward.success_threshold == 0.3  # any threshold


# ------------------------------------------------------------------------------------------- the shaped reward
def call(name: str, **arguments) -> str:
    return format_call(name, arguments)


def episode_reward_of(turns: list[str], shaped: float, required=CANCEL) -> float:
    episode = ToolWorld(num_train=1, num_val=0, shaped_reward=shaped).spawn()
    episode.reset(Example("h", "t", None, {"world": copy.deepcopy(WORLD), "required": required}, []))
    for turn in turns:
        assert not episode.step(turn).done
    result = episode.step("Done.")
    assert result.done
    return float(result.reward)


DELETE, BYE1, BYE2, BYE3 = (
    call("calendar_delete_event", event_id=1),
    call("messages_send", contact_id=1, text="Bye"),
    call("messages_send", contact_id=2, text="Bye"),
    call("messages_send", contact_id=3, text="Bye"),
)


@pytest.mark.parametrize(
    "turns, shaped, reward",
    [
        ([], 0.4, 0.0),  # nothing done
        (['<tool_call>{"name": oops}</tool_call>'], 0.4, 0.0),  # no well-formed call
        ([call("calendar_list_events", date="2026-03-04")], 0.4, 0.2),  # 0.4·(½·1 + ½·0)
        ([DELETE, BYE1], 0.4, 0.4 * (0.5 + 0.5 * 2 / 3)),  # two of three effects
        ([DELETE, BYE1, BYE2, BYE3], 0.4, 0.4 * (0.5 + 0.5 * 2 / 3)),  # three, less one side effect
        ([BYE3], 0.4, 0.2),  # only a side effect: progress floors at 0
        ([DELETE, BYE1, BYE2], 0.4, 1.0),  # verified
        ([DELETE, BYE1], 0.0, 0.0),  # shaping off (the default): the verdict alone
        ([DELETE, BYE1, BYE2], 0.0, 1.0),
        ([DELETE, BYE1, BYE2, BYE3], 0.5, 0.5 * (0.5 + 0.5 * 2 / 3)),
    ],
)
def test_shaped_reward_values(turns: list[str], shaped: float, reward: float) -> None:
    assert episode_reward_of(turns, shaped) == pytest.approx(reward)


def test_shaped_reward_stays_below_success() -> None:
    before, after = copy.deepcopy(WORLD), copy.deepcopy(WORLD)
    after["calendar"] = []
    after["messages"] = [{"id": 1, "contact_id": 1, "direction": "out", "text": "Bye"}]
    assert progress(before, after, CANCEL) == pytest.approx(2 / 3) and progress(before, before, CANCEL) == 0.0
    # an unverified episode at the largest weight, with any number of good calls: 0.5·(½ + ½·⅔) < 0.5 < 1
    best_failure = max(episode_reward(before, after, CANCEL, good_calls=k, shaped=0.5) for k in (0, 1, 10))
    assert best_failure == pytest.approx(0.5 * (0.5 + 1 / 3)) and best_failure < 0.5
    assert episode_reward(before, after, CANCEL[:2], good_calls=0, shaped=0.5) == 1.0  # verified: 1
    with pytest.raises(ValueError):
        episode_reward(before, after, CANCEL, 1, 0.75)


class ScriptEngine:
    """Answers example ``k`` (found by its prompt) with ``texts[k]`` then a final answer."""

    weight_version = 0

    def __init__(self, tok, prompts: list[list[int]], texts: list[str]) -> None:
        self.tok, self.prompts, self.texts, self.turn = tok, prompts, texts, [0] * len(texts)

    def generate(self, prompt_ids, params, num_samples, *, model=None) -> Rollout:
        out = []
        for context in prompt_ids:
            (k,) = [k for k, p in enumerate(self.prompts) if context[: len(p)] == p]
            text = self.texts[k] if self.turn[k] == 0 else "Done."
            self.turn[k] += 1
            out.append(self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id])
        n = len(out)
        logprobs = [[-1.0] * len(c) for c in out]
        return Rollout(prompt_ids, out, logprobs, list(range(n)), ["stop"] * n, [""] * n, [""] * n)


@pytest.mark.parametrize("shaped", [0.0, 0.5])
def test_success_stays_the_verifiers_verdict_with_the_shaped_reward_on(tiny_tokenizer, shaped: float) -> None:
    tok = tiny_tokenizer
    env = ToolWorld(difficulties=[0], apps=["messages"], num_train=1, num_val=3, shaped_reward=shaped)
    task = EnvironmentTask(env, max_turns=2, max_episode_tokens=2000)
    examples = env.examples("val")
    texts = []
    for i, ex in enumerate(examples):
        (cid,) = [int(w) for w in ex.prompt.rstrip(".").split() if w.isdigit()]
        text = ex.prompt.split("'")[1]
        wrong = call(
            "messages_send", contact_id=cid, text=text + " later"
        )  # a well-formed call, wrong effect
        texts.append([call("messages_send", contact_id=cid, text=text), wrong, "I cannot do that."][i])
    prompts = [
        tok.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=True) for ex in examples
    ]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    params = SamplingParams(max_new_tokens=300, stop_token_ids=[tok.eos_token_id])
    rollout = run_episodes(ScriptEngine(tok, prompts, texts), None, tok, task, examples, params, 1)
    threshold = task.reward.success_threshold
    scores = rollout.scores(threshold)
    assert scores.rewards.tolist() == [1.0, shaped * 0.5, 0.0]  # the wrong call: w·(½·1 + ½·0)
    assert scores.correct.tolist() == [True, False, False]  # success, pass@k: verified episodes only
    assert success_by_difficulty(rollout.episodes, threshold) == {
        0: (pytest.approx(1 / 3), 3)
    }  # val/success_d0
    assert episode_metrics(rollout, threshold)["episode/success/d0"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------------------------- the easy config
@pytest.mark.parametrize("method", sorted((C / "method").glob("*.yaml")), ids=lambda p: p.stem)
def test_easy_config_composes_with_every_method(method: Path) -> None:
    args = ["--config", str(C / "demo.yaml"), "--config", str(C / "task/toolworld_easy.yaml")]
    cli = build_cli([*args, "--config", str(method), "--trainer.logger", "false"], run=False)
    task = cli.datamodule.task
    env = task.environment
    assert isinstance(task, EnvironmentTask) and isinstance(env, ToolWorld)
    assert env.difficulties == [0, 0, 1] and env.prompt_style == "short" and env.shaped_reward == 0.0
    assert task.max_turns == 2 and task.max_episode_tokens == 200 and cli.model.sampling.max_new_tokens == 72
    assert cli.datamodule.prompts_per_step == 2 and cli.model.num_generations == 4
    assert Counter(ex.meta["difficulty"] for ex in env.examples("val")) == {0: 67, 1: 33}
