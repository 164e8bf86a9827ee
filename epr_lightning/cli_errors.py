"""One line out of jsonargparse's nested parse-error report, for ``epr-lightning: error: …``.

jsonargparse explains a bad value by nesting every alternative it tried (each ``Union`` member, each
``class_path`` level, the ``None`` option, …) over dozens of indented lines, after a usage dump. The user
needs two things from it: which field, and what was wrong. ``summarize_parse_error`` follows the report's
indentation down the branch that actually failed (skipping the "or None" and "or a path" alternatives) and
returns ``"<field.path>: <problem>"``. A report it does not recognise is returned whitespace-collapsed, so the
result is always one line. ``EPR_DEBUG=1`` keeps jsonargparse's own full output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)':\s*(.*)$")
_UNKNOWN_OPTION = re.compile(r"^Option '([^']+)' is not accepted$")
_EXPECTED = re.compile(r"^Expected an? (.+?)\.?(?: Got value: (.*))?$")
_TYPE = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (.*)$")
_IMPORT_ERRORS = ("has no attribute", "No module named", "not accessible", "cannot import", "does not exist")
_MAX_CHARS = 400


@dataclass
class _Node:
    text: str
    children: list[_Node] = field(default_factory=list)


def _tree(message: str) -> list[_Node]:
    """The report's lines as a forest by indentation (a ``- `` list marker counts as indentation)."""
    root = _Node("")
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("- "):
            stripped, indent = stripped[2:].strip(), indent + 2
        while stack[-1][0] >= indent:
            stack.pop()
        node = _Node(stripped)
        stack[-1][1].children.append(node)
        stack.append((indent, node))
    return root.children


def _types(text: str) -> str:
    """``<class 'pkg.Name'>`` → ``Name`` (``NoneType`` → ``None``)."""
    return _TYPE.sub(r"\1", text).replace("NoneType", "None")


def _flat(nodes: list[_Node]) -> str:
    parts: list[str] = []
    for node in nodes:
        parts.append(node.text)
        parts.append(_flat(node.children))
    return " ".join(p for p in parts if p)


def _given(nodes: list[_Node]) -> str | None:
    for node in nodes:
        if node.text.startswith("Given value:"):
            return node.text.removeprefix("Given value:").strip()
    return None


def _is_noise(node: _Node) -> bool:
    """Alternatives jsonargparse tried that say nothing about the user's mistake."""
    return node.text.startswith("Expected a path but") or node.text == "Expected a <class 'NoneType'>"


def _class_problem(class_path: str, inline: str, node: _Node, path: list[str]) -> tuple[list[str], str]:
    """What went wrong with ``class_path``: a nested field, an unknown key, or the import itself."""
    if any(_KEY.match(c.text) or _CLASS_PATH.match(c.text) for c in node.children):
        return _explain(node.children, path, None)
    leaf = " ".join(filter(None, [inline, _flat(node.children)]))
    unknown = _UNKNOWN_OPTION.match(leaf)
    short = class_path.rsplit(".", 1)[-1]
    if unknown:
        return path + [unknown.group(1)], f"unknown key '{unknown.group(1)}' ({short} has no such parameter)"
    if any(marker in leaf for marker in _IMPORT_ERRORS):
        return path, f"class_path '{class_path}' cannot be imported ({leaf})"
    return path, f"{short}: {_types(leaf)}"


def _expected(nodes: list[_Node], given: str | None) -> str:
    """``expected int or None, got 'xyz'`` from a list of ``Expected a <class …>`` alternatives."""
    types, got = [], given
    for node in nodes:
        match = _EXPECTED.match(node.text)
        if match:
            types.append(_types(match.group(1)))
            got = match.group(2) if match.group(2) is not None else got
    text = f"expected {' or '.join(dict.fromkeys(types))}"
    return text + (f", got {got!r}" if got is not None else "")


def _unrecognized(rest: str) -> tuple[list[str], str]:
    options = [t.split("=", 1)[0] for t in rest.split() if t.startswith("--")]
    if len(options) == 1:
        return options[0][2:].split("."), "unknown key"
    return [], f"unrecognized arguments: {rest}"


def _explain(nodes: list[_Node], path: list[str], given: str | None) -> tuple[list[str], str]:
    """(field path, problem) for one level of the report; ``given`` is the value the level above reported."""
    for node in nodes:
        key = _KEY.match(node.text)
        if key:
            sub = path + key.group(1).split(".")
            return (sub, _types(key.group(2))) if key.group(2) else _explain(node.children, sub, None)
        unrecognized = _UNRECOGNIZED.match(node.text)
        if unrecognized and not path:
            return _unrecognized(unrecognized.group(1))
    for node in nodes:
        match = _CLASS_PATH.match(node.text)
        if match:
            return _class_problem(match.group(1), match.group(2), node, path)
    errors = next((n.children for n in nodes if n.text == "Errors:"), None)
    given = _given(nodes) or given
    if errors is not None:
        useful = [n for n in errors if not _is_noise(n)]
        specific = [n for n in useful if not _EXPECTED.match(n.text)]
        if specific:
            return _explain(specific, path, given)
        return path, _expected([n for n in errors if not n.text.startswith("Expected a path but")], given)
    useful = [n for n in nodes if not _is_noise(n) and not n.text.startswith(("Given value", "Subtypes:"))]
    if useful and all(_EXPECTED.match(n.text) for n in useful):
        return path, _expected(useful, given)
    text = _types(_flat(useful or nodes))
    return path, text + (f" (got {given!r})" if given is not None and given not in text else "")


def summarize_parse_error(message: str) -> str:
    """``"<field.path>: <problem>"`` (or just the problem) on one line, from a jsonargparse error message."""
    try:
        path, problem = _explain(_tree(message), [], None)
    except (AttributeError, IndexError, RecursionError):  # an unexpected layout: fall back to the raw text
        path, problem = [], message
    problem = " ".join(problem.split()) or " ".join(message.split())
    line = f"{'.'.join(path)}: {problem}" if path else problem
    return line if len(line) <= _MAX_CHARS else line[: _MAX_CHARS - 1] + "…"
