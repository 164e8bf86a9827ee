"""The state-based verifier: compare the world's final state with its starting state.

``effects(before, after)`` turns the difference between two world states into a multiset of canonical
effects (``["messages.sent", contact_id, text]`` …). A task lists its required effects; an episode succeeds
when the effects of its final state are exactly those: every required change happened, once, and nothing
else changed (a payment to the wrong person, a duplicate message, a deleted event that should stay — all
forbidden side effects). Read-only calls change nothing and so are always allowed. Texts are compared after
``normalise`` (case, surrounding whitespace/quotes/final period, runs of spaces).

``episode_reward`` is the reward: the verdict (1 or 0), or with a shaped weight ``w`` (≤ 0.5, off by default)
``w·(½·[a well-formed call ran] + ½·progress)`` for an unverified episode — always below a success's 1.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

Effect = tuple
MAX_SHAPED = 0.5  # the most an unverified episode can earn with the shaped reward on (a success earns 1)


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


def progress(before: dict[str, Any], after: dict[str, Any], required: list[list | tuple]) -> float:
    """Partial progress in [0, 1]: required effects reached, less side effects (each cancels one), over the
    number required (floored at 0). 1 only when ``verify`` holds."""
    got, want = Counter(effects(before, after)), Counter(canonical(e) for e in required)
    reached, extra = sum((got & want).values()), sum((got - want).values())
    return max(reached - extra, 0) / max(sum(want.values()), 1)


def episode_reward(
    before: dict[str, Any],
    after: dict[str, Any],
    required: list[list | tuple],
    good_calls: int = 0,
    shaped: float = 0.0,
) -> float:
    """1 when ``verify`` holds; otherwise ``shaped · (½·[a well-formed call ran] + ½·progress)``, at most
    ``shaped`` (≤ 0.5), so any unverified episode stays strictly below a verified one. ``shaped = 0`` (the
    default) is the plain verifier verdict, 1 or 0."""
    if not 0.0 <= shaped <= MAX_SHAPED:
        raise ValueError(f"the shaped reward must be in [0, {MAX_SHAPED}], got {shaped}")
    if verify(before, after, required):
        return 1.0
    if shaped == 0.0:
        return 0.0
    return shaped * (0.5 * float(good_calls > 0) + 0.5 * progress(before, after, required))
