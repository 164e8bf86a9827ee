"""Tool-world task generator: a random starting world plus an instruction and its required end state.

Difficulty is the number of tool calls a correct solution needs, with lookups:

    0  one write, every argument      ("Create a note titled 'Garden' with body 'tulips'.",
       literally in the text           "Send the message 'On my way' to contact_id 3.")
    1  one write                       ("Create a note titled 'Garden' with the text 'tulips'.")
    2  a lookup then a write           ("Send Ada Lovelace a message saying 'On my way'.")
    3  lookups feeding one write       ("Schedule 'Demo' on 2026-03-04 at 10:00 with Ada and Alan.")
    4  four calls over three apps      ("Cancel 'Yoga' on … and send each attendee …")
    5  five to seven calls             ("Settle my note 'Split: dinner': pay each person listed …")

Splits are deterministic and disjoint by construction: candidates come from a seeded stream per split, and a
candidate belongs to the split that the SHA-256 of its content (instruction + world) assigns it (80% train,
10% dev, 10% test), so the same task can never be in two splits, whatever the sizes asked for.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FIRST = "Ada Alan Grace Linus Barbara Donald Edsger Frances Ken Margaret John Radia Tim Hedy Claude Katherine".split()
LAST = (
    "Lovelace Turing Hopper Torvalds Liskov Knuth Dijkstra Allen Thompson Hamilton Backus Perlman Lee Lamarr "
    "Shannon Johnson"
).split()
NOTE_TITLES = (
    "Groceries|Book ideas|Trip plan|Gift list|Garden|Recipes|Movie night|Packing|Chores|Podcasts".split("|")
)
EVENT_TITLES = (
    "Standup|Dentist|Lunch|Yoga|Review|Coffee chat|Planning|Piano lesson|Book club|Demo|Haircut|Retro"
).split("|")
WORDS = (
    "tulips basil milk eggs maps tickets socks charger lemons stamps candles rice paint tea batteries gloves"
).split()
MEMOS = "lunch tickets rent coffee groceries books taxi dinner concert gift".split()
MESSAGES = (
    "See you soon|Thanks a lot|Running late|Call me back|Happy birthday|On my way|Meeting moved|All paid"
).split("|")
LEVELS = [1, 2, 3, 4, 5]  # the default mix (difficulty 0 is opt-in)
SPLITS = {"train": range(0, 8), "dev": range(8, 9), "test": range(9, 10)}


@dataclass
class TaskSpec:
    """One generated task: instruction, starting world, required effects, difficulty, template name."""

    instruction: str
    world: dict[str, Any]
    required: list[list[Any]]
    difficulty: int
    template: str
    apps: list[str] = field(default_factory=list)  # the apps a solution uses

    def key(self) -> str:
        return json.dumps([self.instruction, self.world], sort_keys=True)

    def bucket(self) -> int:
        return int(hashlib.sha256(self.key().encode()).hexdigest()[:8], 16) % 10


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(8, 18):02d}:{rng.choice(['00', '15', '30', '45'])}"


def _amount(rng: random.Random) -> float:
    return round(rng.randint(5, 120) + rng.choice([0, 0.5, 0.25, 0.99]), 2)


def make_world(rng: random.Random) -> dict[str, Any]:
    """A small random world: 6 contacts (two may share a first name), 3 notes, 3 events, a balance."""
    names: list[str] = []
    while len(names) < 6:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if name not in names:
            names.append(name)
    contacts = [
        {
            "id": i + 1,
            "name": n,
            "phone": f"555-{rng.randint(100, 999):03d}{i}",
            "email": f"{n.split()[0].lower()}.{n.split()[1].lower()}@example.com",
        }
        for i, n in enumerate(names)
    ]
    notes = [
        {"id": i + 1, "title": t, "body": ", ".join(rng.sample(WORDS, 3))}
        for i, t in enumerate(rng.sample(NOTE_TITLES, 3))
    ]
    events = [
        {
            "id": i + 1,
            "title": t,
            "date": _date(rng),
            "time": _time(rng),
            "attendees": sorted(rng.sample(range(1, 7), rng.randint(0, 2))),
        }
        for i, t in enumerate(rng.sample(EVENT_TITLES, 3))
    ]
    return {
        "contacts": contacts,
        "calendar": events,
        "notes": notes,
        "payments": {"balance": float(rng.randint(300, 900)), "transactions": []},
        "messages": [
            {"id": 1, "contact_id": rng.randint(1, 6), "direction": "in", "text": rng.choice(MESSAGES)}
        ],
    }


def _new_title(rng: random.Random, pool: list[str], taken: list[dict[str, Any]]) -> str:
    used = {t["title"] for t in taken}
    return rng.choice([t for t in pool if t not in used])


def _two_people_event(rng: random.Random, w: dict[str, Any]) -> dict[str, Any]:
    """Give a random event exactly two attendees (and a title no other event has on its date)."""
    event = rng.choice(w["calendar"])
    event["attendees"] = sorted(rng.sample(range(1, 7), 2))
    return event


def _iou_note(rng: random.Random, w: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], float]:
    person, amount = rng.choice(w["contacts"]), _amount(rng)
    note = {
        "id": len(w["notes"]) + 1,
        "title": f"IOU {person['name'].split()[0]}",
        "body": f"I owe {person['name']} ${amount:.2f}",
    }
    w["notes"].append(note)
    return note, person, amount


# Difficulty 0: one write whose every argument is written in the instruction (ids included): no lookup.
def t0_note(rng, w):
    title, body = _new_title(rng, NOTE_TITLES, w["notes"]), rng.choice(WORDS)
    return f"Create a note titled '{title}' with body '{body}'.", [["notes.created", title, body]]


def t0_append(rng, w):
    n, text = rng.choice(w["notes"]), rng.choice(WORDS)
    return (
        f"Append the text '{text}' to the note with note_id {n['id']}.",
        [["notes.changed", n["id"], n["title"], f"{n['body']}\n{text}"]],
    )


def _new_contact(rng, w):
    """A name no contact of the world has, and a phone number (drawn in that order)."""
    taken = {c["name"] for c in w["contacts"]}
    name = rng.choice([f"{f} {last}" for f in FIRST for last in LAST if f"{f} {last}" not in taken])
    return name, f"555-{rng.randint(1000, 9999)}"


def t0_contact(rng, w):
    name, phone = _new_contact(rng, w)
    return f"Add a contact named '{name}' with phone '{phone}'.", [["contacts.added", name, phone, ""]]


def t0_phone(rng, w):
    cid, phone = rng.randint(1, 6), f"555-{rng.randint(1000, 9999)}"
    return f"Change the phone of contact_id {cid} to '{phone}'.", [["contacts.phone_changed", cid, phone]]


def t0_event(rng, w):
    title, date, time = _new_title(rng, EVENT_TITLES, w["calendar"]), _date(rng), _time(rng)
    ids = sorted(rng.sample(range(1, 7), rng.randint(1, 2)))
    return (
        f"Create an event titled '{title}' on {date} at {time} with attendees {json.dumps(ids)}.",
        [["calendar.created", title, date, time, ",".join(map(str, ids))]],
    )


def t0_delete(rng, w):
    e = rng.choice(w["calendar"])
    return f"Delete the event with event_id {e['id']}.", [["calendar.deleted", e["id"]]]


def t0_message(rng, w):
    cid, text = rng.randint(1, 6), rng.choice(MESSAGES)
    return f"Send the message '{text}' to contact_id {cid}.", [["messages.sent", cid, text]]


def t0_pay(rng, w):
    cid, amount, memo = rng.randint(1, 6), _amount(rng), rng.choice(MEMOS)
    return (
        f"Pay contact_id {cid} the amount {amount:.2f} with memo '{memo}'.",
        [["payments.sent", cid, f"{amount:.2f}", memo]],
    )


# Each template: (rng, world) -> (instruction, required effects); it may add what it needs to the world.
def t_note_create(rng, w):
    title, body = _new_title(rng, NOTE_TITLES, w["notes"]), " and ".join(rng.sample(WORDS, 2))
    return f"Create a note titled '{title}' with the text '{body}'.", [["notes.created", title, body]]


def t_contact_add(rng, w):
    name, phone = _new_contact(rng, w)
    return f"Add a new contact {name} with phone number {phone}.", [["contacts.added", name, phone, ""]]


def t_event_create(rng, w):
    title, date, time = _new_title(rng, EVENT_TITLES, w["calendar"]), _date(rng), _time(rng)
    return (
        f"Put '{title}' on my calendar on {date} at {time}, with no attendees.",
        [["calendar.created", title, date, time, ""]],
    )


def t_message(rng, w):
    c, text = rng.choice(w["contacts"]), rng.choice(MESSAGES)
    return f"Send {c['name']} a message saying '{text}'.", [["messages.sent", c["id"], text]]


def t_pay(rng, w):
    c, amount, memo = rng.choice(w["contacts"]), _amount(rng), rng.choice(MEMOS)
    return (
        f"Send {c['name']} ${amount:.2f} with the memo '{memo}'.",
        [["payments.sent", c["id"], f"{amount:.2f}", memo]],
    )


def t_update_phone(rng, w):
    c, phone = rng.choice(w["contacts"]), f"555-{rng.randint(1000, 9999)}"
    return (
        f"{c['name']} has a new phone number, {phone}. Update their contact.",
        [["contacts.phone_changed", c["id"], phone]],
    )


def t_meeting(rng, w):
    a, b = rng.sample(w["contacts"], 2)
    title, date, time = _new_title(rng, EVENT_TITLES, w["calendar"]), _date(rng), _time(rng)
    ids = ",".join(str(i) for i in sorted([a["id"], b["id"]]))
    return (
        f"Schedule '{title}' on {date} at {time} with {a['name']} and {b['name']}.",
        [["calendar.created", title, date, time, ids]],
    )


def t_pay_from_note(rng, w):
    note, person, amount = _iou_note(rng, w)
    memo = rng.choice(MEMOS)
    return (
        f"Pay back what my note '{note['title']}' says I owe, with the memo '{memo}'.",
        [["payments.sent", person["id"], f"{amount:.2f}", memo]],
    )


def t_cancel_event(rng, w):
    e, text = _two_people_event(rng, w), rng.choice(MESSAGES)
    return (
        f"Cancel '{e['title']}' on {e['date']} and send each attendee the message '{text}'.",
        [["calendar.deleted", e["id"]]] + [["messages.sent", a, text] for a in e["attendees"]],
    )


def t_pay_and_tell(rng, w):
    note, person, amount = _iou_note(rng, w)
    memo, text = rng.choice(MEMOS), rng.choice(MESSAGES)
    return (
        f"Pay back what my note '{note['title']}' says I owe with the memo '{memo}', then message "
        f"that person '{text}'.",
        [["payments.sent", person["id"], f"{amount:.2f}", memo], ["messages.sent", person["id"], text]],
    )


def t_settle_split(rng, w):
    people = rng.sample(w["contacts"], 2)
    amounts = [_amount(rng) for _ in people]
    title = f"Split {rng.choice(MEMOS)}"
    body = "\n".join(f"{p['name']}: ${a:.2f}" for p, a in zip(people, amounts, strict=True))
    w["notes"].append({"id": len(w["notes"]) + 1, "title": title, "body": body})
    memo, text = rng.choice(MEMOS), rng.choice(MESSAGES)
    required = [["payments.sent", p["id"], f"{a:.2f}", memo] for p, a in zip(people, amounts, strict=True)]
    required += [["messages.sent", p["id"], text] for p in people]
    return (
        f"Settle my note '{title}': pay each person listed their amount with the memo '{memo}', and "
        f"message each of them '{text}'.",
        required,
    )


def t_reschedule(rng, w):
    e, text = _two_people_event(rng, w), rng.choice(MESSAGES)
    date, time = _date(rng), _time(rng)
    ids = ",".join(str(a) for a in e["attendees"])
    return (
        f"Move '{e['title']}' from {e['date']} to {date} at {time} with the same attendees, and message "
        f"each attendee '{text}'.",
        [["calendar.deleted", e["id"]], ["calendar.created", e["title"], date, time, ids]]
        + [["messages.sent", a, text] for a in e["attendees"]],
    )


Template = Callable[[random.Random, dict[str, Any]], tuple[str, list[list[Any]]]]
#: difficulty -> [(name, apps the solution uses, template)]; levels 1-5 by default, 0 when asked for
TEMPLATES: dict[int, list[tuple[str, set[str], Template]]] = {
    0: [
        ("note_create_literal", {"notes"}, t0_note),
        ("note_append_literal", {"notes"}, t0_append),
        ("contact_add_literal", {"contacts"}, t0_contact),
        ("update_phone_literal", {"contacts"}, t0_phone),
        ("event_create_literal", {"calendar"}, t0_event),
        ("event_delete_literal", {"calendar"}, t0_delete),
        ("message_literal", {"messages"}, t0_message),
        ("pay_literal", {"payments"}, t0_pay),
    ],
    1: [
        ("note_create", {"notes"}, t_note_create),
        ("contact_add", {"contacts"}, t_contact_add),
        ("event_create", {"calendar"}, t_event_create),
    ],
    2: [
        ("message", {"contacts", "messages"}, t_message),
        ("pay", {"contacts", "payments"}, t_pay),
        ("update_phone", {"contacts"}, t_update_phone),
    ],
    3: [
        ("meeting", {"contacts", "calendar"}, t_meeting),
        ("pay_from_note", {"notes", "contacts", "payments"}, t_pay_from_note),
    ],
    4: [
        ("cancel_event", {"calendar", "messages"}, t_cancel_event),
        ("pay_and_tell", {"notes", "contacts", "payments", "messages"}, t_pay_and_tell),
    ],
    5: [
        ("settle_split", {"notes", "contacts", "payments", "messages"}, t_settle_split),
        ("reschedule", {"calendar", "messages"}, t_reschedule),
    ],
}


def templates_for(difficulty: int, apps: list[str]) -> list[tuple[str, set[str], Template]]:
    if difficulty not in TEMPLATES:
        raise ValueError(f"tool-world difficulty must be one of {sorted(TEMPLATES)}, got {difficulty}")
    return [t for t in TEMPLATES[difficulty] if t[1] <= set(apps)]


def generate_tasks(split: str, n: int, difficulties: list[int], seed: int, apps: list[str]) -> list[TaskSpec]:
    """``n`` tasks of ``split`` ("train" | "dev" | "test"), difficulties in turn (d₁, d₂, …, d₁, …).

    The list is cycled as given, so a repeated level weighs the mix: ``[0, 0, 1]`` gives two level-0 tasks for
    every level-1 task (task ``i`` has level ``difficulties[i % len(difficulties)]``).
    """
    if split not in SPLITS:
        raise ValueError(f"tool-world split must be one of {list(SPLITS)}, got {split!r}")
    for d in difficulties:
        if not templates_for(d, apps):
            raise ValueError(f"no tool-world task of difficulty {d} uses only the apps {apps}")
    rng = random.Random(f"toolworld:{seed}:{split}")
    out: list[TaskSpec] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * max(n, 1) + 1000:
            raise RuntimeError(f"could not generate {n} distinct {split} tasks")
        d = difficulties[len(out) % len(difficulties)]
        name, uses, make = rng.choice(templates_for(d, apps))
        world = make_world(rng)
        instruction, required = make(rng, world)
        spec = TaskSpec(instruction, world, required, d, name, sorted(uses))
        if spec.bucket() in SPLITS[split] and spec.key() not in seen:
            seen.add(spec.key())
            out.append(spec)
    return out
