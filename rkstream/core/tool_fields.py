"""Reading tools, tool choices and tool calls from a request, the same way in every API.

OpenAI, Ollama and /ws all declare a tool as ``{"type": "function",
"function": {"name", "description", "parameters"}}`` and echo calls back as
``{"id", "type", "function": {"name", "arguments"}}``; they differ only in
whether ``arguments`` is JSON text (OpenAI) or an object (Ollama), which
:func:`read_tool_calls` takes either way.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from rkstream.core.fields import Fields
from rkstream.core.messages import ToolCall
from rkstream.core.request import Tool, ToolChoice

TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_TOOLS = 128


def _name(f: Fields, key: str) -> str:
    name = f.string(key, required=True) or ""
    if not TOOL_NAME.fullmatch(name):
        raise f.error("invalid_field",
                      f"{f.path(key)} = {name[:80]!r} is not a tool name: use 1 to 64 letters, "
                      "digits, '_', '-' or '.'", f.path(key))
    return name


def _done(f: Fields, strict: bool) -> None:
    if strict:
        f.finish()


def read_tools(f: Fields, key: str = "tools", *, strict: bool = True) -> tuple[Tool, ...]:
    """The declared tools (``[{"type": "function", "function": {...}}]``)."""
    raw = f.array(key)
    if not raw:
        return ()
    if len(raw) > MAX_TOOLS:
        raise f.error("invalid_field", f"{f.path(key)} declares {len(raw)} tools; the most is "
                      f"{MAX_TOOLS}", f.path(key))
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        t = f.child(item, f"{f.path(key)}[{i}]")
        t.choice("type", ("function",), required=True)
        fn = t.child(t.get("function", True), t.path("function"))
        name = _name(fn, "name")
        description = fn.string("description") or ""
        parameters = fn.mapping("parameters")
        fn.get("strict")  # OpenAI's structured-output switch: nothing to switch here
        _done(fn, strict)
        _done(t, strict)
        if any(tool.name == name for tool in tools):
            raise t.error("invalid_field", f"{fn.path('name')}: the tool {name!r} is declared "
                          "twice", fn.path("name"))
        tools.append(Tool(name, description, dict(parameters or {})))
    return tuple(tools)


def read_tool_choice(f: Fields, tools: tuple[Tool, ...], key: str = "tool_choice", *,
                     strict: bool = True) -> ToolChoice:
    """``none``, ``auto``, ``required`` or ``{"type": "function", "function": {"name"}}``."""
    raw = f.get(key)
    if raw is None:
        return ToolChoice()
    path = f.path(key)
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise f.error("invalid_field", f"{path} = {raw!r} is not one of none, auto, "
                          "required, or a {\"type\": \"function\", ...} object", path)
        if raw == "required" and not tools:
            raise f.error("invalid_field", f"{path} is required but no tools are declared; "
                          "declare them in tools", path)
        return ToolChoice(raw)  # type: ignore[arg-type]
    c = f.child(raw, path)
    c.choice("type", ("function",), required=True)
    fn = c.child(c.get("function", True), c.path("function"))
    name = _name(fn, "name")
    _done(fn, strict)
    _done(c, strict)
    if not any(tool.name == name for tool in tools):
        raise f.error("invalid_field", f"{path} names the tool {name!r}, which is not among "
                      "the declared tools: " + (", ".join(t.name for t in tools) or "none"),
                      path)
    return ToolChoice("function", name)


def read_tool_calls(f: Fields, key: str = "tool_calls", *, strict: bool = True
                    ) -> tuple[ToolCall, ...]:
    """An assistant message's earlier calls; ``arguments`` as JSON text or an object."""
    raw = f.array(key)
    if not raw:
        return ()
    calls: list[ToolCall] = []
    for i, item in enumerate(raw):
        c = f.child(item, f"{f.path(key)}[{i}]")
        call_id = c.string("id", max_chars=256) or f"call_{uuid.uuid4().hex[:24]}"
        c.choice("type", ("function",))
        c.get("index")  # Ollama numbers its calls; the order is the list's
        fn = c.child(c.get("function", True), c.path("function"))
        name = fn.string("name", required=True) or ""
        arguments = fn.get("arguments")
        fn.get("index")
        _done(fn, strict)
        _done(c, strict)
        calls.append(ToolCall(call_id, name, arguments_text(fn, arguments)))
    return tuple(calls)


def arguments_text(f: Fields, value: Any) -> str:
    """A call's arguments as JSON text: a string is taken as it is (it should
    be JSON already), anything else is encoded."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    if not isinstance(value, (dict, list)):
        raise f.wrong(f.path("arguments"), "a JSON string or an object", value)
    return json.dumps(value, ensure_ascii=False)
