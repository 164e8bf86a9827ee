"""ToolWorld: tool-call parsing and safe dispatch, the state-based verifier on hand-written episodes for every
app, and the task generator's deterministic, disjoint, graded splits."""

from __future__ import annotations

import copy
import json

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


def test_model_text_is_never_executed(tools) -> None:
    result = dispatch(
        tools, ToolCall("contacts_search", {"query": "__import__('os').system('touch /tmp/x')"})
    )
    assert result.error is None and result.result == []


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


def _oracle_turns(required: list) -> list[str]:
    """Calls that produce exactly the required effects (ids known: no lookups needed by the oracle)."""
    turns = []
    for kind, *args in required:
        if kind == "notes.created":
            turns.append(call("notes_create", title=args[0], body=args[1]))
        elif kind == "contacts.added":
            turns.append(call("contacts_add", name=args[0], phone=args[1]))
        elif kind == "contacts.phone_changed":
            turns.append(call("contacts_update_phone", contact_id=args[0], phone=args[1]))
        elif kind == "calendar.created":
            ids = [int(i) for i in args[3].split(",") if i]
            turns.append(
                call("calendar_create_event", title=args[0], date=args[1], time=args[2], attendees=ids)
            )
        elif kind == "calendar.deleted":
            turns.append(call("calendar_delete_event", event_id=args[0]))
        elif kind == "payments.sent":
            turns.append(call("payments_send", contact_id=args[0], amount=float(args[1]), memo=args[2]))
        elif kind == "messages.sent":
            turns.append(call("messages_send", contact_id=args[0], text=args[1]))
    return turns + [DONE]


def test_every_generated_task_is_solvable_and_graded() -> None:
    env = ToolWorld(num_train=100, num_val=50)
    examples = env.examples("train") + env.examples("val")
    by_level: dict[int, list[int]] = {}
    for ex in examples:
        episode = env.spawn()
        episode.reset(ex)
        for turn in _oracle_turns(ex.meta["required"]):
            result = episode.step(turn)
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
