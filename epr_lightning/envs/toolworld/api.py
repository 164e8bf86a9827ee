"""Typed tool functions, their JSON-schema specs, JSON tool-call parsing and safe dispatch.

Tools are methods of the apps marked with :func:`tool`; their signature (type hints) and docstring are the
documented API. Model output is only ever parsed as JSON and matched against this registry: nothing is
executed, imported, opened or fetched from it. Every failure (malformed JSON, unknown tool, wrong or missing
arguments, a tool's own ``ToolError``) becomes an error result, never an exception.

The call format is the one instruct models' chat templates use (Qwen2.5, Hermes, SmolLM3)::

    <tool_call>
    {"name": "contacts_search", "arguments": {"query": "Ada"}}
    </tool_call>
"""

from __future__ import annotations

import inspect
import json
import re
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A block ends at its closing tag, at the next opening tag (an unclosed block never swallows the next one) or at
# the end of the text.
TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL)
_REPR = reprlib.Repr()  # a bounded repr of the values a model sends (nesting, long strings, long lists)
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
EXPECTED = 'malformed tool call: expected {"name": str, "arguments": {...}}'


class ToolError(Exception):
    """Raised by a tool for a bad request (unknown id, insufficient funds); becomes an error observation."""


def tool(fn: Callable) -> Callable:
    """Mark an app method as a tool (its name becomes ``<app>_<method>``)."""
    fn.__is_tool__ = True  # type: ignore[attr-defined]
    return fn


@dataclass
class ToolCall:
    """One parsed call (``error`` set when the call could not be parsed)."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None


@dataclass
class ToolResult:
    name: str
    result: Any = None
    error: str | None = None

    def to_json(self) -> str:
        body = (
            {"name": self.name, "error": self.error}
            if self.error
            else {"name": self.name, "result": self.result}
        )
        return json.dumps(body, ensure_ascii=False, sort_keys=False)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """All ``<tool_call>…</tool_call>`` blocks of ``text``, in order, as calls; no block at all → ``[]`` (a final answer).

    A block holds one call, ``{"name": str, "arguments": {...}}`` (Qwen, Hermes), or a JSON list of them (the
    SmolLM2 family); both give the same calls, one per list element. An unclosed block ends at the next
    ``<tool_call>`` or at the end of the text. What is not a call (not JSON, a wrong shape, an empty list, a list
    element that is no call) gives a ``ToolCall`` with ``error`` set, never an exception.
    """
    calls: list[ToolCall] = []
    for raw in TOOL_CALL_RE.findall(text):
        try:
            obj = json.loads(raw.strip())
        except (
            ValueError,
            RecursionError,
        ) as err:  # JSONDecodeError is a ValueError (so is a 5000-digit int)
            calls.append(ToolCall("?", {}, f"malformed tool call (not JSON: {str(err)[:80]})"))
            continue
        if isinstance(obj, list):
            if not obj:
                calls.append(ToolCall("?", {}, "malformed tool call: an empty list of calls"))
            calls += [_call_of(item) for item in obj]
        else:
            calls.append(_call_of(obj))
    return calls


def _call_of(obj: Any) -> ToolCall:
    """One decoded JSON value as a call (``error`` set when it is not ``{"name": str, "arguments": {...}}``)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall("?", {}, EXPECTED)
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some templates/models send the arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):  # e.g. a thousand nested "[" inside the string
            args = None
    if not isinstance(args, dict):
        return ToolCall(obj["name"], {}, "malformed tool call: 'arguments' must be a JSON object")
    return ToolCall(obj["name"], args)


def truncate(text: str, max_chars: int) -> str:
    """``text`` if it has at most ``max_chars`` characters, else its start and a marker ``… [truncated N chars]``
    (N = the characters dropped), ``max_chars`` characters in all (``max_chars`` must fit the marker: >= 32)."""
    if len(text) <= max_chars:
        return text
    keep = max_chars
    for _ in range(4):  # the marker's length depends on N; two or three rounds settle it
        marker = f"… [truncated {len(text) - keep} chars]"
        if keep + len(marker) <= max_chars:
            return text[:keep] + marker
        keep = max(0, max_chars - len(marker))
    return (text[:keep] + marker)[:max_chars]  # a cap shorter than the marker


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is not None:  # list[int], int | None
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any) -> bool:
    """Whether JSON ``value`` fits the annotation ``tp`` (str, int, float, bool, list[X], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(check_value(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(check_value(v, item) for v in value)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (str, bool):
        return isinstance(value, tp)
    return tp is Any


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema_of(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": json_schema_of(item)}
    if origin is not None:  # X | None
        args = [t for t in typing.get_args(tp) if t is not type(None)]
        return json_schema_of(args[0])
    return {"type": _JSON_TYPES.get(tp, "string")}


def _arg_docs(doc: str) -> tuple[str, dict[str, str]]:
    """The first docstring line and the ``Args:`` entries (``name: text``)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary = lines[0] if lines else ""
    out: dict[str, str] = {}
    in_args = False
    for line in lines[1:]:
        if line.strip() == "Args:":
            in_args = True
        elif in_args and re.match(r"^\s+\w+:", line):
            name, text = line.strip().split(":", 1)
            out[name] = text.strip()
        elif in_args and line.strip() and not line.startswith(" "):
            in_args = False
    return summary, out


@dataclass
class ToolSpec:
    """A registered tool: bound method, typed parameters and docs."""

    name: str
    fn: Callable
    params: dict[str, inspect.Parameter]
    hints: dict[str, Any]
    summary: str
    arg_docs: dict[str, str]

    @classmethod
    def of(cls, name: str, fn: Callable) -> ToolSpec:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        summary, docs = _arg_docs(fn.__doc__ or "")
        return cls(name, fn, dict(sig.parameters), {k: hints[k] for k in sig.parameters}, summary, docs)

    def schema(self) -> dict[str, Any]:
        """The OpenAI/HF ``tools=`` entry: ``{"type": "function", "function": {name, description, parameters}}``."""
        props = {
            k: {**json_schema_of(self.hints[k]), "description": self.arg_docs.get(k, "")} for k in self.params
        }
        required = [k for k, p in self.params.items() if p.default is inspect.Parameter.empty]
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.summary,
                "parameters": {"type": "object", "properties": props, "required": required},
            },
        }

    def signature_line(self) -> str:
        args = ", ".join(
            f"{k}: {_type_name(self.hints[k])}"
            + ("" if p.default is inspect.Parameter.empty else f" = {p.default!r}")
            for k, p in self.params.items()
        )
        return f"{self.name}({args}) - {self.summary}"

    def call(self, arguments: dict[str, Any]) -> ToolResult:
        unknown = sorted(set(arguments) - set(self.params))
        if unknown:
            return ToolResult(
                self.name, error=f"unknown argument(s) {_REPR.repr(unknown)}; expected {list(self.params)}"
            )
        for k, p in self.params.items():
            if k not in arguments:
                if p.default is inspect.Parameter.empty:
                    return ToolResult(self.name, error=f"missing argument {k!r}")
                continue
            if not check_value(arguments[k], self.hints[k]):
                return ToolResult(
                    self.name,
                    error=f"argument {k!r} must be {_type_name(self.hints[k])}, got {_REPR.repr(arguments[k])}",
                )
        try:
            return ToolResult(self.name, result=self.fn(**arguments))
        except ToolError as err:
            return ToolResult(self.name, error=str(err))
        except Exception as err:
            return ToolResult(self.name, error=f"internal error in {self.name}: {type(err).__name__}")


def registry(apps: dict[str, Any]) -> dict[str, ToolSpec]:
    """``{"<app>_<method>": ToolSpec}`` for every ``@tool`` method of the given app objects."""
    out = {}
    for app_name, app in apps.items():
        for attr in sorted(dir(type(app))):
            fn = getattr(type(app), attr)
            if getattr(fn, "__is_tool__", False):
                out[f"{app_name}_{attr}"] = ToolSpec.of(f"{app_name}_{attr}", getattr(app, attr))
    return out


def dispatch(tools: dict[str, ToolSpec], call: ToolCall) -> ToolResult:
    """Run one parsed call against the registry; every failure is an error result."""
    if call.error is not None:
        return ToolResult(call.name, error=call.error)
    spec = tools.get(call.name)
    if spec is None:
        return ToolResult(call.name, error=f"unknown tool {call.name!r}; available: {sorted(tools)}")
    return spec.call(call.arguments)
