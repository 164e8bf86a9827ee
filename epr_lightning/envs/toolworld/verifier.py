"""The state-based verifier: compare the world's final state with its starting state.

``effects(before, after)`` turns the difference between two world states into a multiset of canonical
effects (``["messages.sent", contact_id, text]`` …). A task lists its required effects; an episode succeeds
when the effects of its final state are exactly those: every required change happened, once, and nothing
else changed (a payment to the wrong person, a duplicate message, a deleted event that should stay — all
forbidden side effects). Read-only calls change nothing and so are always allowed. Texts are compared after
``normalise`` (case, surrounding whitespace/quotes/final period, runs of spaces).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

Effect = tuple


def normalise(text: str) -> str:
    """Case-folded, whitespace-collapsed text without surrounding quotes or a final period."""
    text = re.sub(r"\s+", " ", str(text)).strip().strip("'\"").strip()
    return text.rstrip(".!").strip().casefold()


def _by_id(items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(i["id"]): i for i in items}


def effects(before: dict[str, Any], after: dict[str, Any]) -> list[Effect]:
    """The canonical changes from ``before`` to ``after`` (sorted, with repeats)."""
    out: list[Effect] = []
    old, new = _by_id(before["contacts"]), _by_id(after["contacts"])
    for cid, c in new.items():
        if cid not in old:
            out.append(("contacts.added", normalise(c["name"]), normalise(c["phone"]), normalise(c["email"])))
        elif normalise(c["phone"]) != normalise(old[cid]["phone"]):
            out.append(("contacts.phone_changed", cid, normalise(c["phone"])))
        elif (c["name"], c["email"]) != (old[cid]["name"], old[cid]["email"]):
            out.append(("contacts.changed", cid))
    out += [("contacts.removed", cid) for cid in old if cid not in new]

    old, new = _by_id(before["calendar"]), _by_id(after["calendar"])
    for eid, e in new.items():
        if eid not in old:
            attendees = ",".join(str(a) for a in sorted(e["attendees"]))
            out.append(("calendar.created", normalise(e["title"]), e["date"], e["time"], attendees))
        elif e != old[eid]:
            out.append(("calendar.changed", eid))
    out += [("calendar.deleted", eid) for eid in old if eid not in new]

    old, new = _by_id(before["notes"]), _by_id(after["notes"])
    for nid, n in new.items():
        if nid not in old:
            out.append(("notes.created", normalise(n["title"]), normalise(n["body"])))
        elif normalise(n["body"]) != normalise(old[nid]["body"]) or n["title"] != old[nid]["title"]:
            out.append(("notes.changed", nid, normalise(n["title"]), normalise(n["body"])))
    out += [("notes.deleted", nid) for nid in old if nid not in new]

    old_tx = _by_id(before["payments"]["transactions"])
    for tid, t in _by_id(after["payments"]["transactions"]).items():
        if tid not in old_tx:
            out.append(
                ("payments.sent", int(t["contact_id"]), f"{float(t['amount']):.2f}", normalise(t["memo"]))
            )
    old_msg = _by_id(before["messages"])
    for mid, m in _by_id(after["messages"]).items():
        if mid not in old_msg:
            out.append(("messages.sent", int(m["contact_id"]), normalise(m["text"])))
    return sorted(out, key=repr)


def canonical(effect: list | tuple) -> Effect:
    """A required effect from a task's JSON (lists) in the form ``effects`` produces (texts normalised)."""
    return tuple(
        normalise(v) if isinstance(v, str) and i > 0 and not _is_code(effect[0], i) else v
        for i, v in enumerate(effect)
    )


def _is_code(kind: str, index: int) -> bool:
    # dates, times, attendee lists and amounts are compared verbatim
    return (kind == "calendar.created" and index >= 2) or (kind == "payments.sent" and index == 2)


def verify(before: dict[str, Any], after: dict[str, Any], required: list[list | tuple]) -> bool:
    """Success: the final state's effects are exactly the required ones (as a multiset)."""
    return Counter(effects(before, after)) == Counter(canonical(e) for e in required)


def missing_and_extra(
    before: dict[str, Any], after: dict[str, Any], required: list[list | tuple]
) -> tuple[list[Effect], list[Effect]]:
    """Required effects not reached, and side effects not asked for (for logs and tests)."""
    got, want = Counter(effects(before, after)), Counter(canonical(e) for e in required)
    return sorted((want - got).elements(), key=repr), sorted((got - want).elements(), key=repr)
