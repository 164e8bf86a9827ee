"""A programmatic ToolWorld player: solves a task from its instruction text by stepping the real environment.

It reads only what a model would see — the user message and the observations the environment returns — and
never the task's hidden ``required`` effects or its template name: ids, amounts and attendees come from lookups
(``contacts_search``, ``notes_search``, ``calendar_list_events``) whose JSON results it parses. One call per
turn, in the text form the prompts show (``prompts.format_call``), then a short final answer. Whether an
episode counts is the verifier's verdict alone (``play`` → ``Trajectory.success``); ``tools/toolworld_demos.py``
keeps the verified ones as chat-message demonstrations for SFT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from epr_lightning.envs.base import Environment
from epr_lightning.envs.toolworld.prompts import format_call
from epr_lightning.envs.toolworld.verifier import verify
from epr_lightning.tasks.base import Example

FINAL_ANSWER = "Done."
Q = r"'([^']+)'"  # a quoted value
DATE, TIME, NUM, IDS = r"(\d{4}-\d{2}-\d{2})", r"(\d{2}:\d{2})", r"(\d+(?:\.\d+)?)", r"(\[[\d, ]*\])"


class Unsolved(Exception):
    """The player cannot go on (an error observation, an ambiguous lookup, an instruction it does not know)."""


def observation_results(text: str) -> list[dict[str, Any]]:
    """The JSON objects of an observation (one ``{"name", "result"|"error"}`` per call), wherever they sit in
    the text (a wrapper such as ``<tool_response>`` around them is skipped)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict) and "name" in obj:
            out.append(obj)
        i = end
    return out


@dataclass
class Player:
    """Acts in one episode through ``act`` (model text → observation text, or None when the episode ended).

    ``turns`` records every exchange as chat turns: the call text (assistant) and the observation (tool)."""

    act: Callable[[str], str | None]
    turns: list[tuple[str, str]] = field(default_factory=list)

    def call(self, tool: str, /, **arguments: Any) -> Any:
        """One call in its own turn; the result parsed from the observation."""
        text = format_call(tool, arguments)
        observation = self.act(text)
        if observation is None:
            raise Unsolved(f"the episode ended at the call {tool}")
        self.turns.append((text, observation))
        results = observation_results(observation)
        if len(results) != 1 or "error" in results[0] or results[0].get("name") != tool:
            raise Unsolved(f"{tool} answered {observation[:200]!r}")
        return results[0]["result"]

    # ------------------------------------------------------------------ lookups
    def contact_id(self, name: str) -> int:
        hits = [c["id"] for c in self.call("contacts_search", query=name) if c["name"] == name]
        if len(hits) != 1:
            raise Unsolved(f"{len(hits)} contacts named {name!r}")
        return int(hits[0])

    def note_body(self, title: str) -> str:
        hits = [n["body"] for n in self.call("notes_search", query=title) if n["title"] == title]
        if len(hits) != 1:
            raise Unsolved(f"{len(hits)} notes titled {title!r}")
        return str(hits[0])

    def event(self, title: str, date: str) -> dict[str, Any]:
        hits = [e for e in self.call("calendar_list_events", date=date) if e["title"] == title]
        if len(hits) != 1:
            raise Unsolved(f"{len(hits)} events {title!r} on {date}")
        return dict(hits[0])

    def pay_line(self, line: str, memo: str) -> int:
        """Pay what a note line says ("I owe Ada Lovelace $12.50" or "Ada Lovelace: $12.50"); the payee's id."""
        m = re.fullmatch(r"(?:I owe )?(.+?):? \$([\d.]+)", line.strip())
        if m is None:
            raise Unsolved(f"no debt in {line!r}")
        who = self.contact_id(m[1])
        self.call("payments_send", contact_id=who, amount=float(m[2]), memo=memo)
        return who

    # ------------------------------------------------------------------ the instructions it knows
    def solve(self, instruction: str) -> None:
        for pattern, handler in RULES:
            if m := re.fullmatch(pattern, instruction.strip()):
                handler(self, *m.groups())
                return
        raise Unsolved(f"no rule for {instruction!r}")


def _cancel(p: Player, title: str, date: str, text: str) -> None:
    event = p.event(title, date)
    p.call("calendar_delete_event", event_id=event["id"])
    for who in event["attendees"]:
        p.call("messages_send", contact_id=who, text=text)


def _reschedule(p: Player, title: str, old: str, date: str, time: str, text: str) -> None:
    event = p.event(title, old)
    p.call("calendar_delete_event", event_id=event["id"])
    p.call("calendar_create_event", title=title, date=date, time=time, attendees=event["attendees"])
    for who in event["attendees"]:
        p.call("messages_send", contact_id=who, text=text)


def _settle(p: Player, title: str, memo: str, text: str) -> None:
    lines = p.note_body(title).splitlines()
    for line in lines:
        p.call("messages_send", contact_id=p.pay_line(line, memo), text=text)


def _meeting(p: Player, title: str, date: str, time: str, a: str, b: str) -> None:
    attendees = sorted([p.contact_id(a), p.contact_id(b)])
    p.call("calendar_create_event", title=title, date=date, time=time, attendees=attendees)


#: (the instruction's pattern, what to do with its groups); level-0 instructions carry every argument
RULES: list[tuple[str, Callable[..., None]]] = [
    # difficulty 0: one call, every value literal
    (rf"Create a note titled {Q} with body {Q}\.", lambda p, t, b: p.call("notes_create", title=t, body=b)),
    (rf"Append the text {Q} to the note with note_id (\d+)\.",
     lambda p, t, n: p.call("notes_append", note_id=int(n), text=t)),
    (rf"Add a contact named {Q} with phone {Q}\.", lambda p, n, ph: p.call("contacts_add", name=n, phone=ph)),
    (rf"Change the phone of contact_id (\d+) to {Q}\.",
     lambda p, c, ph: p.call("contacts_update_phone", contact_id=int(c), phone=ph)),
    (rf"Create an event titled {Q} on {DATE} at {TIME} with attendees {IDS}\.",
     lambda p, t, d, tm, ids: p.call("calendar_create_event", title=t, date=d, time=tm, attendees=json.loads(ids))),
    (r"Delete the event with event_id (\d+)\.", lambda p, e: p.call("calendar_delete_event", event_id=int(e))),
    (rf"Send the message {Q} to contact_id (\d+)\.",
     lambda p, t, c: p.call("messages_send", contact_id=int(c), text=t)),
    (rf"Pay contact_id (\d+) the amount {NUM} with memo {Q}\.",
     lambda p, c, a, m: p.call("payments_send", contact_id=int(c), amount=float(a), memo=m)),
    # difficulty 1
    (rf"Create a note titled {Q} with the text {Q}\.", lambda p, t, b: p.call("notes_create", title=t, body=b)),
    (r"Add a new contact (.+) with phone number (555-\d+)\.",
     lambda p, n, ph: p.call("contacts_add", name=n, phone=ph)),
    (rf"Put {Q} on my calendar on {DATE} at {TIME}, with no attendees\.",
     lambda p, t, d, tm: p.call("calendar_create_event", title=t, date=d, time=tm, attendees=[])),
    # difficulty 2
    (rf"Send (.+) a message saying {Q}\.",
     lambda p, n, t: p.call("messages_send", contact_id=p.contact_id(n), text=t)),
    (rf"Send (.+ \$[\d.]+) with the memo {Q}\.", lambda p, line, m: p.pay_line(line, m)),
    (r"(.+) has a new phone number, (555-\d+)\. Update their contact\.",
     lambda p, n, ph: p.call("contacts_update_phone", contact_id=p.contact_id(n), phone=ph)),
    # difficulty 3
    (rf"Schedule {Q} on {DATE} at {TIME} with (.+) and (.+)\.", _meeting),
    (rf"Pay back what my note {Q} says I owe, with the memo {Q}\.",
     lambda p, t, m: p.pay_line(p.note_body(t), m)),
    # difficulty 4
    (rf"Pay back what my note {Q} says I owe with the memo {Q}, then message that person {Q}\.",
     lambda p, t, m, x: p.call("messages_send", contact_id=p.pay_line(p.note_body(t), m), text=x)),
    (rf"Cancel {Q} on {DATE} and send each attendee the message {Q}\.", _cancel),
    # difficulty 5
    (rf"Settle my note {Q}: pay each person listed their amount with the memo {Q}, and message each of them "
     rf"{Q}\.", _settle),
    (rf"Move {Q} from {DATE} to {DATE} at {TIME} with the same attendees, and message each attendee {Q}\.",
     _reschedule),
]  # fmt: skip


@dataclass
class Trajectory:
    """One played episode: its chat messages (opening, then call / observation pairs, then the final answer),
    whether the verifier accepted the final state, and why the player stopped when it did not finish."""

    messages: list[dict[str, str]]
    success: bool
    error: str | None = None

    @property
    def calls(self) -> int:
        return sum(m["role"] == "assistant" for m in self.messages) - 1


def instruction_of(messages: list[dict[str, Any]]) -> str:
    """The task as the model sees it: the last user message of the opening."""
    return next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")


def play(
    env: Environment,
    example: Example,
    observation_message: Callable[[str], dict[str, str]] = lambda text: {"role": "tool", "content": text},
    final_answer: str = FINAL_ANSWER,
) -> Trajectory:
    """Play ``example`` on a fresh episode of ``env``; success is ``verify`` on the final state.

    ``observation_message`` turns the environment's text into the chat message an RL episode shows the model
    (``EnvironmentTask.observation_message`` where the task defines one; a ``tool`` message otherwise).
    """
    episode: Any = env.spawn()
    opening = episode.reset(example)

    def act(text: str) -> str | None:
        result = episode.step(text)
        return None if result.done else result.observation

    player, error = Player(act), None
    try:
        player.solve(instruction_of(opening))
    except Unsolved as err:
        error = str(err)
    messages = [dict(m) for m in opening]
    for call, observation in player.turns:
        messages += [{"role": "assistant", "content": call}, observation_message(observation)]
    if error is None:
        result = episode.step(final_answer)
        if not result.done:
            error = "the final answer did not end the episode"
        messages.append({"role": "assistant", "content": final_answer})
    success = error is None and verify(episode.start, episode.state, episode.required)
    return Trajectory(messages, success, error)
