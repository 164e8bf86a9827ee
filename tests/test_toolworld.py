"""ToolWorld: tool-call parsing and safe dispatch, the state-based verifier on hand-written episodes for every
app, and the task generator's deterministic, disjoint, graded splits."""

from __future__ import annotations

import copy
import json
import re

import pytest

from epr_lightning.envs import EnvironmentTask, ToolWorld
from epr_lightning.envs.toolworld.api import ToolCall, dispatch, parse_tool_calls, registry
from epr_lightning.envs.toolworld.apps import build_apps
from epr_lightning.envs.toolworld.tasks import SPLITS, generate_tasks
from epr_lightning.envs.toolworld.verifier import effects, missing_and_extra, normalise, verify
from epr_lightning.tasks.base import Example

WORLD = {
    "contacts": [
        {"id": 1, "name": "Ada Lovelace", "phone": "555-1001", "email": "ada@example.com"},
        {"id": 2, "name": "Alan Turing", "phone": "555-1002", "email": "alan@example.com"},
        {"id": 3, "name": "Ada King", "phone": "555-1003", "email": "king@example.com"},
    ],
    "calendar": [{"id": 1, "title": "Yoga", "date": "2026-03-04", "time": "09:00", "attendees": [1, 2]}],
    "notes": [{"id": 1, "title": "IOU Alan", "body": "I owe Alan Turing $12.50"}],
    "payments": {"balance": 100.0, "transactions": []},
    "messages": [{"id": 1, "contact_id": 2, "direction": "in", "text": "Lunch?"}],
}


def call(tool_name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': tool_name, 'arguments': arguments})}\n</tool_call>"


def play(required: list, turns: list[str]) -> tuple[float, list[str]]:
    """Run an episode of hand-written turns (the last one is the final answer); reward and observations."""
    env = ToolWorld(num_train=1, num_val=0).spawn()
    ex = Example(
        "hand",
        "task",
        None,
        {"world": copy.deepcopy(WORLD), "required": required},
        [{"role": "user", "content": "task"}],
    )
    env.reset(ex)
    observations = []
    for i, turn in enumerate(turns):
        result = env.step(turn)
        if result.done:
            assert i == len(turns) - 1, "the episode ended before the last hand-written turn"
            return float(result.reward), observations
        observations.append(result.observation)
    return env.final_reward(), observations


# --------------------------------------------------------------------------- parsing and dispatch
def test_parse_tool_calls_formats() -> None:
    text = (
        'Let me look.\n<tool_call>\n{"name": "contacts_search", "arguments": {"query": "Ada"}}\n</tool_call>'
    )
    assert parse_tool_calls(text) == [ToolCall("contacts_search", {"query": "Ada"})]
    two = call("notes_search", query="IOU") + call("payments_balance")
    assert [c.name for c in parse_tool_calls(two)] == ["notes_search", "payments_balance"]
    as_string = '<tool_call>{"name": "payments_balance", "arguments": "{}"}</tool_call>'
    assert parse_tool_calls(as_string) == [ToolCall("payments_balance", {})]
    unclosed = '<tool_call>{"name": "payments_balance", "arguments": {}}'
    assert parse_tool_calls(unclosed) == [ToolCall("payments_balance", {})]
    assert parse_tool_calls("All done, I sent the message.") == []


@pytest.mark.parametrize(
    "text, error",
    [
        ("<tool_call>{name: contacts_search}</tool_call>", "not JSON"),
        ('<tool_call>["contacts_search"]</tool_call>', "expected"),
        ('<tool_call>{"arguments": {}}</tool_call>', "expected"),
        ('<tool_call>{"name": "x", "arguments": [1]}</tool_call>', "must be a JSON object"),
    ],
)
def test_malformed_calls_are_error_results(text: str, error: str) -> None:
    (parsed,) = parse_tool_calls(text)
    result = dispatch({}, parsed)
    assert result.error is not None and error in result.error


@pytest.fixture()
def tools():
    return registry(build_apps(copy.deepcopy(WORLD)))


@pytest.mark.parametrize(
    "name, args, error",
    [
        ("os_system", {"cmd": "ls"}, "unknown tool 'os_system'"),
        ("__import__", {"name": "os"}, "unknown tool"),
        ("contacts_search", {"query": "Ada", "extra": 1}, "unknown argument(s) ['extra']"),
        ("contacts_search", {}, "missing argument 'query'"),
        ("payments_send", {"contact_id": "2", "amount": 5, "memo": "x"}, "'contact_id' must be int"),
        ("payments_send", {"contact_id": True, "amount": 5, "memo": "x"}, "'contact_id' must be int"),
        ("payments_send", {"contact_id": 9, "amount": 5, "memo": "x"}, "no contact with id 9"),
        ("payments_send", {"contact_id": 2, "amount": 500, "memo": "x"}, "at most the balance"),
        ("payments_send", {"contact_id": 2, "amount": float("nan"), "memo": "x"}, "at most the balance"),
        (
            "calendar_create_event",
            {"title": "x", "date": "tomorrow", "time": "9", "attendees": []},
            "YYYY-MM-DD",
        ),
        (
            "calendar_create_event",
            {"title": "x", "date": "2026-01-01", "time": "09:00", "attendees": ["1"]},
            "'attendees' must be list[int]",
        ),
        ("notes_create", {"title": "  ", "body": "b"}, "must not be empty"),
    ],
)
def test_bad_calls_become_errors_and_change_nothing(tools, name: str, args: dict, error: str) -> None:
    state = tools["contacts_search"].fn.__self__.state
    before = copy.deepcopy(state)
    result = dispatch(tools, ToolCall(name, args))
    assert result.error is not None and error in result.error, result.error
    assert state == before
    assert json.loads(result.to_json()) == {"name": name, "error": result.error}


def test_model_text_is_never_executed(tmp_path, monkeypatch) -> None:
    # Code in a tool name, in arguments and around the call, through the episode's parse + dispatch path: were any
    # of it eval'd / exec'd / compiled / run in a shell, the sentinel file would exist or a recorder would have a call.
    import builtins
    import os
    import subprocess

    calls: list[str] = []  # calls that were handed the model's text (the dispatcher evals type hints itself)

    def recorder(name: str, real):
        def record(*args, **kwargs):
            if "pwned-sentinel" in repr((args, kwargs)):
                calls.append(name)
            return real(*args, **kwargs)

        return record

    for module, name in ((builtins, "eval"), (builtins, "exec"), (builtins, "compile"), (os, "system")):
        monkeypatch.setattr(module, name, recorder(name, getattr(module, name)))
    monkeypatch.setattr(subprocess, "Popen", recorder("Popen", subprocess.Popen))
    sentinel = tmp_path / "pwned-sentinel"
    code = f"__import__('pathlib').Path({str(sentinel)!r}).touch()"
    env = ToolWorld(num_train=1, num_val=0).spawn()
    env.reset(Example("x", "task", None, {"world": copy.deepcopy(WORLD), "required": []}, None))
    turn = (
        f"{code}\n"
        + call("contacts_search", query=code)
        + call("notes_create", title=code, body=code)
        + f'<tool_call>{{"name": {json.dumps(code)}, "arguments": {{}}}}</tool_call>'
        + f'<tool_call>{{"name": "payments_balance", "arguments": {json.dumps(code)}}}</tool_call>'
    )
    results = [json.loads(line) for line in env.step(turn).observation.splitlines()]
    assert results[0] == {
        "name": "contacts_search",
        "result": [],
    }  # searched as text: no contact is named that
    assert results[1]["result"]["title"] == code and results[1]["result"]["body"] == code  # stored verbatim
    assert "unknown tool" in results[2]["error"] and "error" in results[3]
    assert calls == [] and not sentinel.exists()


def test_tool_specs_are_typed_and_documented(tools) -> None:
    spec = {t.name: t for t in tools.values()}["payments_send"].schema()["function"]
    assert spec["parameters"]["properties"]["amount"]["type"] == "number"
    assert spec["parameters"]["properties"]["contact_id"]["type"] == "integer"
    assert spec["parameters"]["required"] == ["contact_id", "amount", "memo"]
    assert spec["parameters"]["properties"]["memo"]["description"] == "what the payment is for."
    schema = tools["calendar_create_event"].schema()["function"]["parameters"]["properties"]["attendees"]
    assert schema == {"type": "array", "items": {"type": "integer"}, "description": schema["description"]}
    assert (
        tools["contacts_add"]
        .signature_line()
        .startswith("contacts_add(name: str, phone: str, email: str = '')")
    )


# --------------------------------------------------------------------------- the verifier, app by app
DONE = "Done."
EPISODES = {
    # app: (required effects, solved turns, unsolved turns, side-effect turns)
    "contacts": (
        [["contacts.phone_changed", 2, "555-2002"]],
        [
            call("contacts_search", query="Alan"),
            call("contacts_update_phone", contact_id=2, phone="555-2002"),
            DONE,
        ],
        [
            call("contacts_search", query="Alan"),
            call("contacts_update_phone", contact_id=2, phone="555-0000"),
            DONE,
        ],
        [
            call("contacts_update_phone", contact_id=2, phone="555-2002")
            + call("contacts_add", name="Alan T", phone="555-2002"),
            DONE,
        ],
    ),
    "calendar": (
        [["calendar.created", "Demo", "2026-03-05", "10:00", "1,2"]],
        [
            call("calendar_create_event", title="demo", date="2026-03-05", time="10:00", attendees=[2, 1]),
            DONE,
        ],
        [call("calendar_create_event", title="Demo", date="2026-03-05", time="10:00", attendees=[1]), DONE],
        [
            call("calendar_create_event", title="Demo", date="2026-03-05", time="10:00", attendees=[1, 2]),
            call("calendar_delete_event", event_id=1),
            DONE,
        ],
    ),
    "notes": (
        [["notes.created", "Garden", "tulips and basil"]],
        [call("notes_create", title="Garden", body="Tulips and basil."), DONE],
        [DONE],
        [
            call("notes_create", title="Garden", body="tulips and basil"),
            call("notes_append", note_id=1, text="paid"),
            DONE,
        ],
    ),
    "payments": (
        [["payments.sent", 2, "12.50", "lunch"]],
        [
            call("notes_search", query="IOU"),
            call("contacts_search", query="Alan Turing"),
            call("payments_send", contact_id=2, amount=12.5, memo="Lunch"),
            DONE,
        ],
        [call("payments_send", contact_id=2, amount=12.0, memo="lunch"), DONE],
        [
            call("payments_send", contact_id=2, amount=12.5, memo="lunch"),
            call("payments_send", contact_id=2, amount=12.5, memo="lunch"),
            DONE,
        ],
    ),
    "messages": (
        [["messages.sent", 1, "On my way"]],
        [call("contacts_search", query="Ada"), call("messages_send", contact_id=1, text="on my way!"), DONE],
        [call("messages_send", contact_id=3, text="On my way"), DONE],  # the other Ada
        [
            call("messages_send", contact_id=1, text="On my way")
            + call("messages_send", contact_id=3, text="hi"),
            DONE,
        ],
    ),
}


@pytest.mark.parametrize("app", sorted(EPISODES))
def test_verifier_solved_unsolved_and_side_effect_episodes(app: str) -> None:
    required, solved, unsolved, side_effect = EPISODES[app]
    assert play(required, solved)[0] == 1.0
    assert play(required, unsolved)[0] == 0.0
    assert play(required, side_effect)[0] == 0.0


def test_side_effects_and_missing_effects_are_named() -> None:
    before = copy.deepcopy(WORLD)
    after = copy.deepcopy(WORLD)
    after["messages"].append({"id": 2, "contact_id": 3, "direction": "out", "text": "Hi "})
    after["calendar"] = []
    missing, extra = missing_and_extra(before, after, [["messages.sent", 1, "hi"]])
    assert missing == [("messages.sent", 1, "hi")]
    assert extra == [("calendar.deleted", 1), ("messages.sent", 3, "hi")]
    assert effects(before, before) == [] and verify(before, before, [])


def test_read_only_calls_are_not_side_effects_and_errors_are_counted() -> None:
    reward, observations = play(
        [["notes.created", "X", "y"]],
        [
            call("contacts_search", query="Ada") + call("payments_balance") + call("nope"),
            call("notes_create", title="X", body="y"),
            DONE,
        ],
    )
    assert reward == 1.0
    first = [json.loads(line) for line in observations[0].splitlines()]
    assert [o.get("error") is None for o in first] == [True, True, False]
    assert first[1] == {"name": "payments_balance", "result": 100.0}


def test_normalise() -> None:
    assert normalise("  'On  my way!'  ") == "on my way"
    assert normalise("Tulips and basil.") == "tulips and basil"


# --------------------------------------------------------------------------- the generator
def test_splits_are_deterministic_and_disjoint() -> None:
    kw = dict(
        difficulties=[1, 2, 3, 4, 5], seed=0, apps=["contacts", "calendar", "notes", "payments", "messages"]
    )
    splits = {s: generate_tasks(s, n, **kw) for s, n in (("train", 300), ("dev", 60), ("test", 60))}
    again = {s: generate_tasks(s, len(v), **kw) for s, v in splits.items()}
    assert {s: [t.key() for t in v] for s, v in splits.items()} == {
        s: [t.key() for t in v] for s, v in again.items()
    }
    keys = {s: {t.key() for t in v} for s, v in splits.items()}
    assert len(keys["train"]) == 300 and len(keys["dev"]) == 60 and len(keys["test"]) == 60
    assert (
        not keys["train"] & keys["dev"]
        and not keys["train"] & keys["test"]
        and not keys["dev"] & keys["test"]
    )
    # disjoint by construction: each task lies in the hash bucket of its own split
    assert all(t.bucket() in SPLITS[s] for s, v in splits.items() for t in v)
    assert sorted(b for r in SPLITS.values() for b in r) == list(range(10))
    other_seed = generate_tasks("dev", 60, **{**kw, "seed": 1})
    assert {t.key() for t in other_seed} != keys["dev"]
    # a larger train split starts with the smaller one (sizes do not reshuffle a split)
    assert [t.key() for t in generate_tasks("train", 30, **kw)] == [t.key() for t in splits["train"][:30]]


class _Oracle:
    """Solves a generated task from its instruction text alone, looking up ids and amounts through the tools.

    It never reads the task's hidden ``required`` effects, so an instruction that does not say what its effects
    are (a wrong name, amount, memo or date) makes the verifier fail it. One regex per instruction template."""

    Q = r"'([^']+)'"  # a quoted value
    DATE, TIME = r"(\d{4}-\d{2}-\d{2})", r"(\d{2}:\d{2})"

    def __init__(self, episode) -> None:
        self.episode = episode

    def ask(self, tool_name: str, **arguments):
        result = self.episode.step(call(tool_name, **arguments))
        assert not result.done, f"{tool_name} ended the episode"
        body = json.loads(result.observation)
        assert "error" not in body, body
        return body["result"]

    def contact_id(self, name: str) -> int:
        (hit,) = [c for c in self.ask("contacts_search", query=name) if c["name"] == name]
        return hit["id"]

    def note_body(self, title: str) -> str:
        (hit,) = [n for n in self.ask("notes_search", query=title) if n["title"] == title]
        return hit["body"]

    def event(self, title: str, date: str) -> dict:
        (hit,) = [e for e in self.ask("calendar_list_events", date=date) if e["title"] == title]
        return hit

    def pay(self, owed_line: str, memo: str) -> int:
        name, amount = re.fullmatch(r"(?:I owe )?(.+?):? \$([\d.]+)", owed_line.strip()).groups()
        who = self.contact_id(name)
        self.ask("payments_send", contact_id=who, amount=float(amount), memo=memo)
        return who

    def solve(self, instruction: str) -> None:
        Q, DATE, TIME = self.Q, self.DATE, self.TIME

        def match(pattern: str):
            return re.fullmatch(pattern, instruction)

        if m := match(rf"Create a note titled {Q} with the text {Q}\."):
            self.ask("notes_create", title=m[1], body=m[2])
        elif m := match(r"Add a new contact (.+) with phone number (555-\d+)\."):
            self.ask("contacts_add", name=m[1], phone=m[2])
        elif m := match(rf"Put {Q} on my calendar on {DATE} at {TIME}, with no attendees\."):
            self.ask("calendar_create_event", title=m[1], date=m[2], time=m[3], attendees=[])
        elif m := match(rf"Send (.+) a message saying {Q}\."):
            self.ask("messages_send", contact_id=self.contact_id(m[1]), text=m[2])
        elif m := match(rf"Send (.+ \$[\d.]+) with the memo {Q}\."):
            self.pay(m[1], m[2])
        elif m := match(r"(.+) has a new phone number, (555-\d+)\. Update their contact\."):
            self.ask("contacts_update_phone", contact_id=self.contact_id(m[1]), phone=m[2])
        elif m := match(rf"Schedule {Q} on {DATE} at {TIME} with (.+) and (.+)\."):
            ids = [self.contact_id(m[4]), self.contact_id(m[5])]
            self.ask("calendar_create_event", title=m[1], date=m[2], time=m[3], attendees=ids)
        elif m := match(rf"Pay back what my note {Q} says I owe, with the memo {Q}\."):
            self.pay(self.note_body(m[1]), m[2])
        elif m := match(
            rf"Pay back what my note {Q} says I owe with the memo {Q}, then message that person {Q}\."
        ):
            self.ask("messages_send", contact_id=self.pay(self.note_body(m[1]), m[2]), text=m[3])
        elif m := match(rf"Cancel {Q} on {DATE} and send each attendee the message {Q}\."):
            event = self.event(m[1], m[2])
            self.ask("calendar_delete_event", event_id=event["id"])
            for who in event["attendees"]:
                self.ask("messages_send", contact_id=who, text=m[3])
        elif m := match(
            rf"Settle my note {Q}: pay each person listed their amount with the memo {Q}, and message each "
            rf"of them {Q}\."
        ):
            for line in self.note_body(m[1]).splitlines():
                self.ask("messages_send", contact_id=self.pay(line, m[2]), text=m[3])
        elif m := match(
            rf"Move {Q} from {DATE} to {DATE} at {TIME} with the same attendees, and message each attendee {Q}\."
        ):
            event = self.event(m[1], m[2])
            self.ask("calendar_delete_event", event_id=event["id"])
            self.ask("calendar_create_event", title=m[1], date=m[3], time=m[4], attendees=event["attendees"])
            for who in event["attendees"]:
                self.ask("messages_send", contact_id=who, text=m[5])
        else:
            raise AssertionError(f"the oracle knows no template for {instruction!r}")


def test_oracle_fails_an_instruction_that_does_not_match_its_effects() -> None:
    # the same task with the instruction naming one dollar more: the oracle follows the text, the verifier fails it
    (ex,) = [
        e for e in ToolWorld(difficulties=[2], num_train=12, num_val=0).examples("train") if "$" in e.prompt
    ][:1]
    wrong = re.sub(r"\$([\d.]+)", lambda m: f"${float(m[1]) + 1:.2f}", ex.prompt)
    assert wrong != ex.prompt
    for instruction, reward in ((ex.prompt, 1.0), (wrong, 0.0)):
        episode = ToolWorld(num_train=1, num_val=0).spawn()
        episode.reset(ex)
        _Oracle(episode).solve(instruction)
        assert episode.step(DONE).reward == reward, instruction


def test_every_generated_task_is_solvable_and_graded() -> None:
    env = ToolWorld(num_train=100, num_val=50)
    examples = env.examples("train") + env.examples("val")
    by_level: dict[int, list[int]] = {}
    for ex in examples:
        episode = env.spawn()
        episode.reset(ex)
        _Oracle(episode).solve(ex.prompt)  # from the instruction alone, never ex.meta["required"]
        result = episode.step(DONE)
        assert result.done and result.reward == 1.0, (ex.prompt, ex.meta["required"])
        fresh = env.spawn()
        fresh.reset(ex)
        assert fresh.step(DONE).reward == 0.0  # doing nothing never succeeds
        by_level.setdefault(ex.meta["difficulty"], []).append(len(ex.meta["required"]))
    assert sorted(by_level) == [1, 2, 3, 4, 5]
    assert (
        max(by_level[1]) == 1 and min(by_level[4]) >= 2 and min(by_level[5]) >= 3
    )  # more writes when harder
    assert [ex.meta["difficulty"] for ex in examples[:5]] == [1, 2, 3, 4, 5]
    assert (
        examples[0].messages[0]["role"] == "system" and "payments_send(" in examples[0].messages[0]["content"]
    )


def test_apps_subset_and_config_errors() -> None:
    env = ToolWorld(difficulties=[1], apps=["notes"], num_train=5, num_val=2)
    assert {ex.meta["template"] for ex in env.examples("train")} == {"note_create"}
    assert [t["function"]["name"] for t in env.tools()] == ["notes_append", "notes_create", "notes_search"]
    with pytest.raises(ValueError, match="no tool-world task of difficulty 4 uses only the apps"):
        ToolWorld(difficulties=[4], apps=["notes"])
    with pytest.raises(ValueError, match="unknown tool-world app"):
        ToolWorld(apps=["shell"])
    with pytest.raises(ValueError, match="task.max_turns must be >= 1"):
        EnvironmentTask(env, max_turns=0)
    with pytest.raises(ValueError, match="toolworld.val_split"):
        ToolWorld(val_split="train")  # type: ignore[arg-type]
