"""Anthropic Messages request bodies mapped onto the one internal request.

Unknown top-level fields are ignored (``service_tier``, ``container``...), as
on the other HTTP dialects, and so are keys of a block this server has no use
for (``cache_control``, ``citations``). What is read goes through
:class:`rkstream.core.fields.Fields`, so its checks and sentences are the same
as on every other API; a content block, tool or choice of a type this server
cannot take is refused, naming the field.

- ``system``: a string or text blocks; one system message, first.
- ``messages``: ``user`` and ``assistant`` turns, a string or blocks:
  ``text``; ``image`` with a ``base64`` source (a ``url`` source is refused,
  as remote image URLs are everywhere); an assistant's ``tool_use`` (earlier
  calls, written back in the model's markup), ``thinking`` (given back in the
  model's think tags) and ``redacted_thinking`` (dropped); a user's
  ``tool_result``, which becomes a ``tool`` message. Consecutive turns of one
  role are combined, as Anthropic combines them. A conversation that ends
  with an assistant turn (a prefill) is refused: the chat formats close that
  turn instead of continuing it.
- ``tools`` ``{"name", "description", "input_schema"}`` and ``tool_choice``
  ``auto`` / ``any`` / ``tool`` / ``none`` (``disable_parallel_tool_use``).
- ``thinking``: ``enabled`` (``budget_tokens`` checked, not enforced) and
  ``adaptive`` switch the model's reasoning on, ``disabled`` off.
- ``max_tokens`` is required and clamped to ``limits.max_tokens``: Claude
  Code asks for 32000, meaning "as much as you may".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rkstream.core.fields import Fields
from rkstream.core.messages import ImagePart, Message, Part, TextPart, ToolCall
from rkstream.core.params import Params
from rkstream.core.request import GenerationRequest, Tool, ToolChoice
from rkstream.core.tool_fields import MAX_TOOLS, TOOL_NAME
from rkstream.server.http.body import image_base64

SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "stop_sequences": "stop"}
SEPARATOR = "\n\n"  # between text blocks that end up in one message
INVALID_JSON = "INVALID_JSON"  # Anthropic's key for tool input that is not a JSON object


@dataclass(frozen=True)
class AnthropicRequest:
    """The internal request plus what only Anthropic's answer shape needs."""

    request: GenerationRequest
    omit_thinking: bool = False  # thinking.display "omitted": blocks without their text


def parse_messages(f: Fields, cap: int, think: tuple[str, str] | None = None, *,
                   counting: bool = False) -> AnthropicRequest:
    """Parse a /v1/messages body; ``cap`` is ``limits.max_tokens``, ``think`` the
    loaded model's reasoning tags, ``counting`` a count_tokens body (no max_tokens).

    Raises:
        ProtocolError: naming the field at fault.
    """
    raw = f.array("messages", required=True)
    if not raw:
        raise f.error("invalid_field", "messages must hold at least one message", "messages")
    turns = [f.child(item, f"messages[{i}]") for i, item in enumerate(raw)]
    messages = list(_system(f))
    names: dict[str, str] = {}  # the ids of earlier calls, to name their results
    for m in turns:
        messages += _turn(m, names, think)
    last = turns[-1]
    if last.obj.get("role") == "assistant":
        raise last.error("invalid_field", f"{last.where} is an assistant turn: continuing "
                         "one (a prefill) is not supported; end with a user turn",
                         last.path("role"))
    tools = _tools(f)
    choice, parallel = _tool_choice(f, tools)
    thinking, omit = _thinking(f)
    metadata = f.mapping("metadata")
    if metadata is not None:
        f.child(metadata, "metadata").string("user_id")  # checked; nothing to do with it
    params = Params(max_tokens=_max_tokens(f, cap, required=not counting),
                    **f.params(SAMPLING))
    request = GenerationRequest(
        tuple(_combined(messages)), params, stream=bool(f.flag("stream")),
        model=f.string("model"), tools=tools, tool_choice=choice,
        parallel_tool_calls=parallel, enable_thinking=thinking)
    return AnthropicRequest(request, omit)


def _max_tokens(f: Fields, cap: int, *, required: bool) -> int | None:
    count = f.integer("max_tokens", required=required, minimum=1, code="invalid_param")
    return None if count is None else min(count, cap)


def _add(parts: list[Part], part: Part) -> None:
    """Append ``part``; text right after text joins it, a blank line between."""
    if parts and isinstance(part, TextPart) and isinstance(parts[-1], TextPart):
        parts[-1] = TextPart(parts[-1].text + SEPARATOR + part.text)
    else:
        parts.append(part)


def _combined(messages: list[Message]) -> list[Message]:
    """Consecutive user (or assistant) turns as one."""
    out: list[Message] = []
    for m in messages:
        last = out[-1] if out else None
        if last is None or m.role != last.role or m.role not in ("user", "assistant"):
            out.append(m)
            continue
        parts = list(last.parts)
        for part in m.parts:
            _add(parts, part)
        out[-1] = Message(m.role, tuple(parts), tool_calls=last.tool_calls + m.tool_calls)
    return out


def _system(f: Fields) -> tuple[Message, ...]:
    raw = f.get("system")
    if raw is None:
        return ()
    if isinstance(raw, list):
        texts = []
        for j, item in enumerate(raw):
            b = f.child(item, f"system[{j}]")
            b.choice("type", ("text",), required=True)
            texts.append(b.string("text", required=True) or "")
        raw = SEPARATOR.join(texts)
    if not isinstance(raw, str):
        raise f.wrong("system", "a string or a list of text blocks", raw)
    return (Message("system", (TextPart(raw),)),) if raw else ()


def _blocks(m: Fields) -> list[Fields]:
    """The content blocks of message ``m`` (a string is one text block)."""
    content = m.get("content", required=True)
    if isinstance(content, str):
        return [Fields({"type": "text", "text": content}, m.path("content"))]
    if not isinstance(content, list):
        raise m.wrong(m.path("content"), "a string or a list of content blocks", content)
    return [m.child(b, m.path(f"content[{j}]")) for j, b in enumerate(content)]


def _kind(b: Fields, allowed: tuple[str, ...]) -> str:
    """A block's type, which must be one of ``allowed``."""
    kind = b.string("type", required=True) or ""
    if kind not in allowed:
        raise b.error("invalid_field", f"{b.path('type')} = {kind!r} is not one of "
                      + ", ".join(allowed) + ": this server takes no other blocks there",
                      b.path("type"))
    return kind


def _turn(m: Fields, names: dict[str, str], think: tuple[str, str] | None
          ) -> list[Message]:
    """One turn as messages: a user turn's tool results become ``tool`` messages."""
    role = m.choice("role", ("user", "assistant"), required=True)
    blocks = _blocks(m)
    if role == "assistant":
        return [_assistant(blocks, names, think)]
    out: list[Message] = []
    parts: list[Part] = []
    for b in blocks:
        kind = _kind(b, ("text", "image", "tool_result"))
        if kind == "tool_result":
            if parts:
                out.append(Message("user", tuple(parts)))
                parts = []
            out.append(_tool_result(b, names))
        else:
            _add(parts, TextPart(b.string("text", required=True) or "") if kind == "text"
                 else _image(b))
    if parts or not out:
        out.append(Message("user", tuple(parts)))
    return out


def _image(b: Fields) -> ImagePart:
    source = b.child(b.get("source", required=True), b.path("source"))
    kind = source.choice("type", ("base64", "url", "file"), required=True)
    if kind == "url":
        raise source.error("remote_image_url", "remote image URLs are not fetched; send the "
                           'image as {"type": "base64", "media_type", "data"}',
                           source.path("url"))
    if kind == "file":
        raise source.error("invalid_field", f"{source.path('type')} = 'file' is not "
                           "supported (no Files API here); send the image as base64",
                           source.path("type"))
    media_type = source.string("media_type", required=True) or ""
    if not media_type.lower().startswith("image/"):
        raise source.error("unsupported_image_format", f"{source.path('media_type')} = "
                           f"{media_type!r} is not an image type", source.path("media_type"))
    # The vision step reads the format from the bytes; clients mislabel it.
    return ImagePart(data=image_base64(source, source.get("data", required=True),
                                       source.path("data")))


def _tool_result(b: Fields, names: dict[str, str]) -> Message:
    b.get("tool_use_id", required=True, hint=" (the id of the tool_use it answers)")
    call_id = b.string("tool_use_id", non_empty=True) or ""
    content = b.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, item in enumerate(content):
            part = b.child(item, b.path(f"content[{j}]"))
            if part.obj.get("type") == "image":  # a result is text: no vision step
                raise part.error("invalid_field", f"{part.path('type')} = 'image' is not "
                                 "allowed in a tool result; send its text", part.path("type"))
            _kind(part, ("text",))
            texts.append(part.string("text", required=True) or "")
    elif content is not None:
        raise b.wrong(b.path("content"), "a string or a list of text blocks", content)
    text = SEPARATOR.join(texts)
    if b.flag("is_error"):
        text = f"Error: {text}"  # the chat formats have no flag for a failed call
    return Message("tool", (TextPart(text),), tool_call_id=call_id,
                   tool_name=names.get(call_id))


def _assistant(blocks: list[Fields], names: dict[str, str], think: tuple[str, str] | None
               ) -> Message:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    for b in blocks:
        kind = _kind(b, ("text", "thinking", "redacted_thinking", "tool_use"))
        if kind == "text":
            texts.append(b.string("text", required=True) or "")
        elif kind == "thinking":
            thoughts.append((b.string("thinking", required=True) or "").strip())
            b.string("signature")  # rkstream signs nothing, so checks nothing
        elif kind == "tool_use":
            calls.append(_tool_use(b))
    names.update((c.id, c.name) for c in calls)
    text = SEPARATOR.join(texts)
    reasoning = "\n\n".join(t for t in thoughts if t)
    if reasoning and think is not None:
        # Where the templates look for it (Qwen3 keeps it for the current tool loop).
        text = f"{think[0]}\n{reasoning}\n{think[1]}\n\n{text}"
    return Message("assistant", (TextPart(text),), tool_calls=tuple(calls))


def _tool_use(b: Fields) -> ToolCall:
    call_id = b.string("id", required=True, non_empty=True) or ""
    name = b.string("name", required=True) or ""
    value: Any = b.mapping("input", required=True)
    if set(value) == {INVALID_JSON} and isinstance(value[INVALID_JSON], str):
        return ToolCall(call_id, name, value[INVALID_JSON])  # the model's text, as written
    return ToolCall(call_id, name, json.dumps(value, ensure_ascii=False))


# -- tools, tool_choice, thinking --------------------------------------------------------

def _tools(f: Fields) -> tuple[Tool, ...]:
    raw = f.array("tools")
    if not raw:
        return ()
    if len(raw) > MAX_TOOLS:
        raise f.error("invalid_field", f"tools declares {len(raw)} tools; the most is "
                      f"{MAX_TOOLS}", "tools")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        t = f.child(item, f"tools[{i}]")
        kind = t.string("type")
        if kind not in (None, "custom"):
            raise t.error("invalid_field", f"{t.path('type')} = {kind!r} is a tool Anthropic "
                          "runs itself, which this server cannot; declare your own tools as "
                          '{"name", "description", "input_schema"}', t.path("type"))
        name = t.string("name", required=True) or ""
        if not TOOL_NAME.fullmatch(name):
            raise t.error("invalid_field", f"{t.path('name')} = {name[:80]!r} is not a tool "
                          "name: use 1 to 64 letters, digits, '_', '-' or '.'", t.path("name"))
        if any(tool.name == name for tool in tools):
            raise t.error("invalid_field", f"{t.path('name')}: the tool {name!r} is declared "
                          "twice", t.path("name"))
        schema = t.mapping("input_schema", required=True) or {}
        tools.append(Tool(name, t.string("description") or "", dict(schema)))
    return tuple(tools)


def _tool_choice(f: Fields, tools: tuple[Tool, ...]) -> tuple[ToolChoice, bool]:
    """The choice, and whether several calls may come (``disable_parallel_tool_use``)."""
    raw = f.get("tool_choice")
    if raw is None:
        return ToolChoice(), True
    c = f.child(raw, "tool_choice")
    kind = c.choice("type", ("auto", "any", "tool", "none"), required=True)
    parallel = not c.flag("disable_parallel_tool_use", False)
    if kind in ("auto", "none"):
        return ToolChoice("none" if kind == "none" else "auto"), parallel
    if not tools:
        raise c.error("invalid_field", f"tool_choice.type = {kind!r} asks for a tool call but "
                      "no tools are declared; declare them in tools", c.path("type"))
    if kind == "any":
        return ToolChoice("required"), parallel
    name = c.string("name", required=True) or ""
    if not any(tool.name == name for tool in tools):
        raise c.error("invalid_field", f"tool_choice.name names the tool {name!r}, which is "
                      "not among the declared tools: " + ", ".join(t.name for t in tools),
                      c.path("name"))
    return ToolChoice("function", name), parallel


def _thinking(f: Fields) -> tuple[bool | None, bool]:
    """``enable_thinking`` (None: ``[chat] thinking``) and whether to omit its text."""
    raw = f.get("thinking")
    if raw is None:
        return None, False
    t = f.child(raw, "thinking")
    kind = t.choice("type", ("enabled", "adaptive", "disabled"), required=True)
    if kind == "enabled":  # the chat templates have no budget to give it to
        t.integer("budget_tokens", required=True, minimum=1)
    display = t.choice("display", ("summarized", "omitted"))
    return kind != "disabled", display == "omitted"
