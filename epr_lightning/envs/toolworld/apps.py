"""The tool world's apps: small stateful services with typed, documented APIs (pure Python, offline).

All apps share one world state, a JSON-serialisable dict (so a task stores its starting world in
``Example.meta`` and the verifier compares plain dicts)::

    {"contacts": [{"id", "name", "phone", "email"}],
     "calendar": [{"id", "title", "date", "time", "attendees": [contact ids]}],
     "notes": [{"id", "title", "body"}],
     "payments": {"balance": float, "transactions": [{"id", "contact_id", "amount", "memo"}]},
     "messages": [{"id", "contact_id", "direction": "in" | "out", "text"}]}

Each public method marked ``@tool`` is one function the model may call, named ``<app>_<method>``. Its type
hints and docstring are the API documentation shown to the model. To add an app: write a class like these
(take the shared ``state`` dict, mark methods with ``@tool``, raise ``ToolError`` for bad requests), add it
to ``APPS``, and teach ``verifier.effects`` what a change of its part of the state means.
"""

from __future__ import annotations

import re
from typing import Any

from epr_lightning.envs.toolworld.api import ToolError, tool

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIME_RE = re.compile(r"^\d{2}:\d{2}$")
MAX_TEXT = 500  # longest text a tool stores (model output is untrusted)


def _next_id(items: list[dict[str, Any]], state: dict[str, Any], kind: str) -> int:
    """A new id, never one used before in this episode (a deleted event's id is not reused)."""
    issued = state.setdefault("_last_ids", {})
    new = max([int(i["id"]) for i in items] + [issued.get(kind, 0)], default=0) + 1
    issued[kind] = new
    return new


def _add_record(
    items: list[dict[str, Any]], state: dict[str, Any], kind: str, **fields: Any
) -> dict[str, Any]:
    """Append ``{"id": <new id>, **fields}`` to ``items``; a copy of the record is the tool's result."""
    record = {"id": _next_id(items, state, kind), **fields}
    items.append(record)
    return dict(record)


def _remember_ids(items: list[dict[str, Any]], state: dict[str, Any], kind: str) -> None:
    """Record the ids in use before a deletion, so ``_next_id`` never hands a deleted id out again."""
    issued = state.setdefault("_last_ids", {})
    issued[kind] = max([int(i["id"]) for i in items] + [issued.get(kind, 0)])


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ToolError(f"{what} must not be empty")
    if len(value) > MAX_TEXT:
        raise ToolError(f"{what} is longer than {MAX_TEXT} characters")
    return value


class App:
    """Base: an app reads and writes its own key of the shared world state."""

    key: str = ""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def contact(self, contact_id: int) -> dict[str, Any]:
        for c in self.state["contacts"]:
            if c["id"] == contact_id:
                return c
        raise ToolError(f"no contact with id {contact_id}")


class Contacts(App):
    key = "contacts"

    @tool
    def search(self, query: str) -> list[dict[str, Any]]:
        """Find contacts whose name contains the query (case-insensitive).

        Args:
            query: part of a name, e.g. "Ada".
        """
        q = query.strip().lower()
        return [dict(c) for c in self.state["contacts"] if q and q in c["name"].lower()]

    @tool
    def add(self, name: str, phone: str, email: str = "") -> dict[str, Any]:
        """Add a new contact and return it (with its id).

        Args:
            name: full name.
            phone: phone number, e.g. "555-0142".
            email: email address (optional).
        """
        return _add_record(
            self.state["contacts"], self.state, "contacts",
            name=_text(name, "name"), phone=_text(phone, "phone"), email=email.strip(),
        )  # fmt: skip

    @tool
    def update_phone(self, contact_id: int, phone: str) -> dict[str, Any]:
        """Change a contact's phone number.

        Args:
            contact_id: the contact's id (from contacts_search).
            phone: the new phone number.
        """
        c = self.contact(contact_id)
        c["phone"] = _text(phone, "phone")
        return dict(c)


class Calendar(App):
    key = "calendar"

    @tool
    def list_events(self, date: str) -> list[dict[str, Any]]:
        """List the events on a date.

        Args:
            date: the day as YYYY-MM-DD.
        """
        return [dict(e) for e in self.state["calendar"] if e["date"] == date.strip()]

    @tool
    def create_event(self, title: str, date: str, time: str, attendees: list[int]) -> dict[str, Any]:
        """Create an event and return it (with its id).

        Args:
            title: the event's title.
            date: the day as YYYY-MM-DD.
            time: the start time as HH:MM (24h).
            attendees: contact ids of the people invited ([] for none).
        """
        if not DATE_RE.match(date.strip()) or not TIME_RE.match(time.strip()):
            raise ToolError("date must be YYYY-MM-DD and time HH:MM")
        for cid in attendees:
            self.contact(cid)
        return _add_record(
            self.state["calendar"], self.state, "calendar",
            title=_text(title, "title"), date=date.strip(), time=time.strip(), attendees=sorted(set(attendees)),
        )  # fmt: skip

    @tool
    def delete_event(self, event_id: int) -> str:
        """Delete an event.

        Args:
            event_id: the event's id (from calendar_list_events).
        """
        before = len(self.state["calendar"])
        _remember_ids(self.state["calendar"], self.state, "calendar")
        self.state["calendar"] = [e for e in self.state["calendar"] if e["id"] != event_id]
        if len(self.state["calendar"]) == before:
            raise ToolError(f"no event with id {event_id}")
        return "deleted"


class Notes(App):
    key = "notes"

    def note(self, note_id: int) -> dict[str, Any]:
        for n in self.state["notes"]:
            if n["id"] == note_id:
                return n
        raise ToolError(f"no note with id {note_id}")

    @tool
    def search(self, query: str) -> list[dict[str, Any]]:
        """Find notes whose title contains the query (case-insensitive); returns them with their text.

        Args:
            query: part of a title.
        """
        q = query.strip().lower()
        return [dict(n) for n in self.state["notes"] if q and q in n["title"].lower()]

    @tool
    def create(self, title: str, body: str) -> dict[str, Any]:
        """Create a note and return it (with its id).

        Args:
            title: the note's title.
            body: the note's text.
        """
        return _add_record(
            self.state["notes"], self.state, "notes", title=_text(title, "title"), body=_text(body, "body")
        )

    @tool
    def append(self, note_id: int, text: str) -> dict[str, Any]:
        """Add a line of text at the end of a note.

        Args:
            note_id: the note's id (from notes_search).
            text: the line to add.
        """
        n = self.note(note_id)
        n["body"] = f"{n['body']}\n{_text(text, 'text')}"
        return dict(n)


class Payments(App):
    key = "payments"

    @tool
    def balance(self) -> float:
        """The account balance in dollars."""
        return round(self.state["payments"]["balance"], 2)

    @tool
    def send(self, contact_id: int, amount: float, memo: str) -> dict[str, Any]:
        """Send money to a contact and return the transaction.

        Args:
            contact_id: the recipient's contact id (from contacts_search).
            amount: dollars, > 0 and at most the balance.
            memo: what the payment is for.
        """
        self.contact(contact_id)
        amount = round(float(amount), 2)
        pay = self.state["payments"]
        if not 0 < amount <= pay["balance"]:
            raise ToolError(f"amount must be > 0 and at most the balance {pay['balance']:.2f}")
        tx = _add_record(
            pay["transactions"], self.state, "transactions", contact_id=contact_id, amount=amount,
            memo=_text(memo, "memo"),
        )  # fmt: skip
        pay["balance"] = round(pay["balance"] - amount, 2)
        return tx


class Messages(App):
    key = "messages"

    @tool
    def send(self, contact_id: int, text: str) -> dict[str, Any]:
        """Send a text message to a contact.

        Args:
            contact_id: the recipient's contact id (from contacts_search).
            text: the message.
        """
        self.contact(contact_id)
        return _add_record(
            self.state["messages"], self.state, "messages", contact_id=contact_id, direction="out",
            text=_text(text, "text"),
        )  # fmt: skip

    @tool
    def inbox(self, contact_id: int) -> list[dict[str, Any]]:
        """The messages exchanged with a contact, oldest first.

        Args:
            contact_id: the contact's id.
        """
        self.contact(contact_id)
        return [dict(m) for m in self.state["messages"] if m["contact_id"] == contact_id]


APPS: dict[str, type[App]] = {
    "contacts": Contacts,
    "calendar": Calendar,
    "notes": Notes,
    "payments": Payments,
    "messages": Messages,
}


def build_apps(state: dict[str, Any], names: list[str] | None = None) -> dict[str, App]:
    """App objects over ``state`` (all of ``APPS``, or the named ones)."""
    names = list(APPS) if names is None else names
    unknown = [n for n in names if n not in APPS]
    if unknown:
        raise ValueError(f"unknown tool-world app(s) {unknown}; choose from {list(APPS)}")
    return {n: APPS[n](state) for n in names}
