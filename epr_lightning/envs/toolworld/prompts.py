"""ToolWorld's system messages: the full one (every tool) and the short one (the task's apps' tools and one
worked example), and the one text form of a tool call that the worked example, the solver and the docs share.

The short style is for small models: a 135M instruct model given the full list answers in prose; given the few
tools its task needs and one concrete exchange to copy (a user task and the exact ``<tool_call>`` reply), it has
a pattern to follow. The worked example is a difficulty-0 task of the app the task writes to.
"""

from __future__ import annotations

import json
from typing import Any, Literal

PromptStyle = Literal["full", "short"]

SHORT_INSTRUCTIONS = (
    "You do the user's task by calling tools. Reply with one tool call, written exactly like this:\n"
    '<tool_call>\n{"name": "<tool name>", "arguments": {<arguments as JSON>}}\n</tool_call>\n'
    "The result comes back in the next message. Look up ids you are not given. When the task is done, reply "
    "with a short final answer and no tool call."
)

#: app -> (a difficulty-0 task, the tool that does it, its arguments); the app a task writes to picks one
WORKED_EXAMPLES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "messages": (
        "Send the message 'Thanks a lot' to contact_id 2.",
        "messages_send",
        {"contact_id": 2, "text": "Thanks a lot"},
    ),
    "payments": (
        "Pay contact_id 4 the amount 9.50 with memo 'taxi'.",
        "payments_send",
        {"contact_id": 4, "amount": 9.5, "memo": "taxi"},
    ),
    "calendar": ("Delete the event with event_id 2.", "calendar_delete_event", {"event_id": 2}),
    "notes": (
        "Create a note titled 'Packing' with body 'socks'.",
        "notes_create",
        {"title": "Packing", "body": "socks"},
    ),
    "contacts": (
        "Add a contact named 'Grace Hopper' with phone '555-0199'.",
        "contacts_add",
        {"name": "Grace Hopper", "phone": "555-0199"},
    ),
}


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """The text of one tool call, as the instructions show it."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def worked_example(apps: list[str]) -> str:
    """One exchange to copy, for the first of ``apps`` in the order messages, payments, calendar, notes,
    contacts (the app a task writes to comes before the ones it looks things up in)."""
    app = next((a for a in WORKED_EXAMPLES if a in apps), None)
    if app is None:
        raise ValueError(f"no worked example for the apps {apps}")
    task, name, arguments = WORKED_EXAMPLES[app]
    return f"Example.\nUser: {task}\nAssistant: {format_call(name, arguments)}"


def tool_prefixes(apps: list[str]) -> tuple[str, ...]:
    return tuple(f"{a}_" for a in apps)


def system_message(
    style: PromptStyle,
    instructions: str,
    signatures: dict[str, str],
    tool_docs: Literal["full", "none"],
    task_apps: list[str] | None = None,
) -> str:
    """The system message.

    Args:
        style: "full" = ``instructions`` and every tool; "short" = ``instructions``, the tools of
            ``task_apps`` only and a worked example for them.
        instructions: the text before the tool list.
        signatures: tool name -> its one-line signature and summary, for every tool the world has.
        tool_docs: "none" leaves the tool list out (the chat template renders ``tools=`` itself).
        task_apps: the apps the task's solution uses (short style; None = all the world's apps).
    """
    if style not in ("full", "short"):
        raise ValueError(f"toolworld.prompt_style must be 'full' or 'short', got {style!r}")
    names = list(signatures)
    if style == "short" and task_apps is not None:
        names = [n for n in names if n.startswith(tool_prefixes(task_apps))]
    parts = [instructions]
    if tool_docs != "none":
        parts.append("Tools:\n" + "\n".join(signatures[n] for n in names))
    if style == "short":
        apps = task_apps if task_apps is not None else sorted({n.split("_")[0] for n in signatures})
        parts.append(worked_example(apps))
    return "\n\n".join(parts)
