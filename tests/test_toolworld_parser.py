"""ToolWorld's parser and observations for the formats small models emit: a JSON list of calls in one block (the
SmolLM2 family) equals one block per call, malformed lists answer errors, an unclosed block ends at the next
opening, a deeply nested argument string is an error (not a RecursionError), observations are capped, and the
parser fuzzed with generated text answers calls or error observations, never an exception."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from epr_lightning.envs import ToolWorld
from epr_lightning.envs.toolworld.api import EXPECTED, ToolCall, parse_tool_calls, truncate
from epr_lightning.envs.toolworld.env import MIN_OBSERVATION_CHARS
from epr_lightning.tasks.base import Example

WORLD = {
    "contacts": [
        {"id": 1, "name": "Ada Lovelace", "phone": "555-1001", "email": "ada@example.com"},
        {"id": 2, "name": "Alan Turing", "phone": "555-1002", "email": "alan@example.com"},
    ],
    "calendar": [{"id": 1, "title": "Yoga", "date": "2026-03-04", "time": "09:00", "attendees": [1, 2]}],
    "notes": [],
    "payments": {"balance": 100.0, "transactions": []},
    "messages": [{"id": 1, "contact_id": 2, "direction": "in", "text": "Lunch?"}],
}
A = {"name": "contacts_search", "arguments": {"query": "Ada"}}
B = {"name": "calendar_list_events", "arguments": {"date": "2026-03-04"}}
C = {"name": "notes_create", "arguments": {"title": "T", "body": "b"}}
PROTO = ToolWorld(num_train=1, num_val=0)


def block(obj: object) -> str:
    return f"<tool_call>\n{json.dumps(obj)}\n</tool_call>"


def episode(**kw) -> ToolWorld:
    env = (ToolWorld(num_train=1, num_val=0, **kw) if kw else PROTO).spawn()
    env.reset(Example("hand", "task", None, {"world": copy.deepcopy(WORLD), "required": []}, None))
    assert isinstance(env, ToolWorld)
    return env


def lines(observation: str) -> list[dict]:
    return [json.loads(line) for line in observation.splitlines()]


# --------------------------------------------------------------------------- list form
def test_a_list_of_calls_parses_like_one_block_per_call() -> None:
    as_list = parse_tool_calls(f"I will look both up.\n<tool_call>\n{json.dumps([A, B])}\n</tool_call>")
    as_blocks = parse_tool_calls(block(A) + "\n" + block(B))
    assert (
        as_list
        == as_blocks
        == [
            ToolCall("contacts_search", {"query": "Ada"}),
            ToolCall("calendar_list_events", {"date": "2026-03-04"}),
        ]
    )
    assert parse_tool_calls(block([A])) == parse_tool_calls(block(A))
    # and through the environment: the same observation, line for line
    assert episode().step(block([A, B])).observation == episode().step(block(A) + block(B)).observation


@pytest.mark.parametrize(
    "body, errors",
    [
        ("[]", ["an empty list of calls"]),
        ('[1, "contacts_search"]', [EXPECTED, EXPECTED]),
        ('[{"name": "payments_balance", "arguments": [1]}]', ["'arguments' must be a JSON object"]),
        ('[{"name": "payments_balance"}, {"arguments": {}}]', [None, EXPECTED]),  # the good call still runs
        ('[{"name": "payments_balance", "arguments": {}},', ["not JSON"]),  # an unfinished list
    ],
)
def test_a_malformed_list_is_an_error_observation(body: str, errors: list[str | None]) -> None:
    result = episode().step(f"<tool_call>{body}</tool_call>")
    assert not result.done
    got = lines(result.observation)
    assert len(got) == len(errors)
    for line, error in zip(got, errors, strict=True):
        if error is None:
            assert line == {"name": "payments_balance", "result": 100.0}
        else:
            assert error in line["error"]
    assert result.info == {
        "tool_calls": float(len(errors)),
        "tool_errors": float(sum(e is not None for e in errors)),
    }


def test_max_calls_per_turn_counts_list_elements() -> None:
    env = episode(max_calls_per_turn=2)
    calls = [{"name": "notes_create", "arguments": {"title": f"T{i}", "body": "b"}} for i in range(3)]
    result = env.step(block(calls))
    got = lines(result.observation)
    assert [o.get("error") for o in got] == [None, None, "more than 2 calls in one turn"]
    assert [n["title"] for n in env.state["notes"]] == ["T0", "T1"]  # the third call did not run
    assert result.info == {"tool_calls": 3.0, "tool_errors": 1.0}
    # blocks and list elements count together
    got = lines(episode(max_calls_per_turn=2).step(block(A) + block([A, A])).observation)
    assert [o.get("error") is None for o in got] == [True, True, False]


# --------------------------------------------------------------------------- the two known bugs
NESTED = '<tool_call>{"name": "payments_balance", "arguments": "' + "[" * 1000 + '"}</tool_call>'
UNCLOSED_THEN_CLOSED = block(A).removesuffix("</tool_call>") + block(B)


def test_a_deeply_nested_argument_string_is_an_error_not_a_recursion_error() -> None:
    (call,) = parse_tool_calls(NESTED)
    assert call.name == "payments_balance" and "'arguments' must be a JSON object" in call.error
    assert "must be a JSON object" in lines(episode().step(NESTED).observation)[0]["error"]


def test_an_unclosed_block_ends_at_the_next_opening() -> None:
    assert parse_tool_calls(UNCLOSED_THEN_CLOSED) == [
        ToolCall("contacts_search", {"query": "Ada"}),
        ToolCall("calendar_list_events", {"date": "2026-03-04"}),
    ]
    # an unclosed last block still counts, and text between blocks is ignored
    assert parse_tool_calls(block(A) + " then " + block(B).removesuffix("</tool_call>")) == parse_tool_calls(
        UNCLOSED_THEN_CLOSED
    )


# --------------------------------------------------------------------------- the observation cap
def test_truncate_marks_what_it_dropped() -> None:
    assert truncate("x" * 40, 40) == "x" * 40
    assert truncate("x" * 100, 40) == "x" * 18 + "… [truncated 82 chars]"  # 18 + 22 = 40 characters
    assert truncate("y" * 1000, 40) == "y" * 17 + "… [truncated 983 chars]"  # a longer N: one x fewer
    assert truncate("z" * 100, 10) == "… [truncat"  # a cap shorter than the marker still holds


def test_a_long_observation_is_capped_in_characters() -> None:
    env = episode(max_observation_chars=120)
    observation = env.step(block({"name": "no_such_tool", "arguments": {}})).observation
    full = episode().step(block({"name": "no_such_tool", "arguments": {}})).observation  # lists every tool
    assert len(full) > 300 and len(observation) == 120
    assert 100 <= len(full) - 97 < 1000  # a 3-digit N: the marker is 23 characters, 97 of the text are kept
    assert observation == full[:97] + f"… [truncated {len(full) - 97} chars]"
    with pytest.raises(ValueError, match="max_observation_chars must be >= 64"):
        ToolWorld(num_train=1, num_val=0, max_observation_chars=MIN_OBSERVATION_CHARS - 1)


# --------------------------------------------------------------------------- fuzzing
FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<tool_call>\n", "\n</tool_call>", "[", "]", "{", "}", ",", ":", '"', "\\",
    '"name"', '"arguments"', '"parameters"', '"contacts_search"', '"notes_create"', '"payments_send"',
    '"calendar_list_events"', '"messages_inbox"', '{"query": "a"}', '{"contact_id": 2}', '"{}"', "null",
    "1e999", "-0", "NaN", "9" * 5000, "[" * 1000, "]" * 50, '"' + "[" * 1000 + '"', json.dumps(A),
    json.dumps([A, B, C]), json.dumps({"name": "payments_send", "arguments": {"contact_id": 2, "amount": 1}}),
]  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
CALL_LIKE = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["contacts_search", "notes_create", "messages_inbox", "x"])
        | st.text(max_size=6)
    },
    optional={"arguments": JSON_VALUES | st.text(max_size=10)},
)
PIECES = st.one_of(
    st.sampled_from(FRAGMENTS),
    st.text(max_size=12),
    JSON_VALUES.map(json.dumps),
    st.lists(CALL_LIKE, max_size=4).map(json.dumps),
    CALL_LIKE.map(json.dumps),
)
CAP = 200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PIECES, max_size=14).map("".join))
@example(NESTED)
@example(UNCLOSED_THEN_CLOSED)
@example("<tool_call>" + json.dumps([A] * 40) + "</tool_call>")
@example("<tool_call>" * 300)
def test_fuzzed_text_gives_calls_or_capped_error_observations(text: str) -> None:
    calls = parse_tool_calls(text)
    for call in calls:
        assert isinstance(call.name, str) and isinstance(call.arguments, dict)
        assert call.error is None or call.error.startswith("malformed tool call")
    result = episode(max_observation_chars=CAP).step(text)
    if calls:
        assert not result.done and isinstance(result.observation, str)
        assert 0 < len(result.observation) <= CAP
        assert result.info["tool_calls"] == len(calls)
    else:
        assert result.done and result.reward in (0.0, 1.0)
