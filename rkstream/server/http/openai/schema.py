"""OpenAI request bodies mapped onto the one internal request.

Unknown fields are ignored, because OpenAI clients send many (``user``,
``response_format``, ``logprobs``...). Known fields are read through
:class:`rkstream.core.fields.Fields`, so their checks and messages are the
same as on every other API.

Tools: ``tools``, ``tool_choice`` (``none``, ``auto``, ``required``, a named
function, or ``allowed_tools``) and earlier calls are read by the reader every
API shares (:mod:`rkstream.core.tool_fields`); ``parallel_tool_calls``.
Earlier calls (assistant ``tool_calls``) and results (``tool`` messages with
``tool_call_id``) become :class:`~rkstream.core.messages.Message` fields,
which the chat format writes in the model's own markup; reasoning sent back
(``reasoning_content``) goes into the model's think tags. Thinking:
``chat_template_kwargs.enable_thinking``, or a top-level ``enable_thinking``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rkstream.chat.output import new_call_id
from rkstream.core.fields import Fields
from rkstream.core.messages import ImagePart, Message, Part, Role, TextPart, ToolCall
from rkstream.core.params import SAMPLING_FIELDS, Params
from rkstream.core.request import GenerationRequest, Tool, ToolChoice
from rkstream.core.tool_fields import (
    arguments_text,
    read_tool_calls,
    read_tool_choice,
    read_tools,
)
from rkstream.server.http.body import data_url

_ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user",
                           "assistant": "assistant", "tool": "tool"}


@dataclass(frozen=True)
class OpenAIRequest:
    """The internal request plus what only OpenAI's answer shape needs."""

    request: GenerationRequest
    include_usage: bool
    echo: str | None = None  # /v1/completions with echo: the prompt, sent before the answer


def _params(f: Fields) -> Params:
    values = f.params(SAMPLING_FIELDS)
    # max_completion_tokens is the newer name; it wins when both are sent.
    newer = f.param("max_completion_tokens", "max_tokens")
    values["max_tokens"] = newer if newer is not None else f.param("max_tokens")
    f.integer("seed")  # accepted; the engines take their seed from the config
    for key in ("n", "best_of"):
        count = f.integer(key)
        if count is not None and count != 1:
            raise f.error("invalid_param", f"{key} = {count} is not supported: this server "
                          f"generates one choice per request; send {key} = 1 or leave it out",
                          key)
    return Params(**values)


def _stream(f: Fields) -> tuple[bool, bool]:
    stream = bool(f.flag("stream"))
    options = f.mapping("stream_options")
    if options is None:
        return stream, False
    return stream, bool(f.child(options, "stream_options").flag("include_usage"))


def _image(f: Fields, raw: Any, where: str) -> ImagePart:
    url = raw.get("url") if isinstance(raw, dict) else raw
    param = f"{where}.url" if isinstance(raw, dict) else where
    if not isinstance(url, str):
        raise f.wrong(param, "a string (a data: URL)", url)
    return ImagePart(data=data_url(f, url, param))


def _part(f: Fields, raw: Any, where: str) -> Part:
    p = f.child(raw, where)
    kind = p.get("type")
    if kind == "text":
        return TextPart(p.string("text", required=True) or "")
    if kind == "image_url":
        return _image(f, p.get("image_url"), f"{where}.image_url")
    if kind == "refusal" and isinstance(p.get("refusal"), str):
        return TextPart(p.obj["refusal"])
    raise p.error("invalid_field", f"{where}.type = {kind!r} is not one of text, image_url",
                  f"{where}.type")


def _tool_calls(m: Fields) -> tuple[ToolCall, ...]:
    """An assistant message's earlier calls: ``tool_calls`` (the shared reader), or
    the deprecated single ``function_call``."""
    calls = read_tool_calls(m, strict=False)
    legacy = m.mapping("function_call")
    if legacy is None or calls:
        return calls
    fn = m.child(legacy, m.path("function_call"))
    name = fn.string("name", required=True) or ""
    return (ToolCall(new_call_id(), name, arguments_text(fn, fn.get("arguments"))),)


def _content(m: Fields, role: Role) -> list[Part]:
    content = m.get("content")
    if isinstance(content, str):
        return [TextPart(content)]
    if isinstance(content, list):
        if role == "tool":  # a result is text: no image goes through the vision step
            for j, p in enumerate(content):
                kind = p.get("type") if isinstance(p, Mapping) else None
                if kind == "image_url":
                    path = m.path(f"content[{j}].type")
                    raise m.error("invalid_field", f"{path} = 'image_url' is not allowed in a "
                                  "tool result; send its text", path)
        return [_part(m, p, m.path(f"content[{j}]")) for j, p in enumerate(content)]
    if content is None and role == "assistant":
        return []  # an assistant turn that only called tools
    if content is None:
        raise m.missing(m.path("content"))
    raise m.wrong(m.path("content"), "a string or a list of parts", content)


def _reasoning(m: Fields, think: tuple[str, str] | None) -> str:
    """An earlier turn's reasoning, sent back as ``reasoning_content`` (DeepSeek,
    the AI SDK) or ``reasoning`` (vLLM): given to the template in the model's
    think tags (Qwen3 keeps it for the turns of the current tool loop), and
    dropped for a model without them."""
    text = m.string("reasoning_content") or m.string("reasoning")
    if think is None or text is None or not text.strip():
        return ""
    return f"{think[0]}\n{text.strip()}\n{think[1]}\n\n"


def _message(f: Fields, raw: Any, i: int, names: dict[str, str],
             think: tuple[str, str] | None) -> Message:
    """Message ``i``; ``names`` maps the ids of earlier calls to their names."""
    m = f.child(raw, f"messages[{i}]")
    role = _ROLES[m.choice("role", tuple(_ROLES), required=True) or ""]
    parts = _content(m, role)
    if role == "tool":
        m.get("tool_call_id", required=True, hint=" (the id of the call it answers)")
        call_id = m.string("tool_call_id", non_empty=True) or ""
        name = m.string("name", max_chars=64) or names.get(call_id)
        return Message(role, tuple(parts), tool_call_id=call_id, tool_name=name)
    if role != "assistant":
        return Message(role, tuple(parts))
    calls = _tool_calls(m)  # the chat format writes them in the model's markup
    names.update((c.id, c.name) for c in calls)
    reasoning = _reasoning(m, think)
    if reasoning:
        parts.insert(0, TextPart(reasoning))
    return Message(role, tuple(parts), tool_calls=calls)


# -- tools ----------------------------------------------------------------------------

def _allowed(f: Fields, raw: Mapping[str, Any], tools: tuple[Tool, ...]
             ) -> tuple[ToolChoice, tuple[Tool, ...]]:
    """OpenAI's newer ``{"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}``:
    only the listed tools are offered, with ``auto`` or ``required``."""
    c = f.child(raw, "tool_choice")
    c.choice("type", ("allowed_tools",), required=True)
    allowed = c.child(c.get("allowed_tools", required=True), c.path("allowed_tools"))
    mode = allowed.choice("mode", ("auto", "required")) or "auto"
    names: set[str] = set()
    for j, item in enumerate(allowed.array("tools", required=True) or ()):
        t = allowed.child(item, allowed.path(f"tools[{j}]"))
        t.choice("type", ("function",), required=True)
        fn = t.child(t.get("function", required=True), t.path("function"))
        name = fn.string("name", required=True) or ""
        if not any(tool.name == name for tool in tools):
            raise fn.error("invalid_field", f"{fn.path('name')} names the tool {name!r}, "
                           "which is not among the declared tools: "
                           + (", ".join(t.name for t in tools) or "none"), fn.path("name"))
        names.add(name)
    narrowed = tuple(tool for tool in tools if tool.name in names)
    if mode == "required" and not narrowed:
        raise allowed.error("invalid_field", f"{allowed.path('mode')} is required but no "
                            "tools are allowed; list them in allowed_tools.tools",
                            allowed.path("mode"))
    return ToolChoice("required" if mode == "required" else "auto"), narrowed


def _tool_choice(f: Fields, tools: tuple[Tool, ...]) -> tuple[ToolChoice, tuple[Tool, ...]]:
    """``tool_choice`` (the shared reader: none, auto, required, a named function),
    and the tools it leaves (``allowed_tools`` narrows them)."""
    raw = f.get("tool_choice")
    if isinstance(raw, Mapping) and raw.get("type") == "allowed_tools":
        return _allowed(f, raw, tools)
    return read_tool_choice(f, tools, strict=False), tools


def _thinking(f: Fields) -> bool | None:
    """``chat_template_kwargs.enable_thinking`` (vLLM, SGLang, llama.cpp), else the
    top-level ``enable_thinking`` some clients send."""
    kwargs = f.mapping("chat_template_kwargs")
    if kwargs is not None:
        inner = f.child(kwargs, "chat_template_kwargs").flag("enable_thinking")
        if inner is not None:
            return inner
    return f.flag("enable_thinking")


def parse_chat(f: Fields, think: tuple[str, str] | None = None) -> OpenAIRequest:
    """Parse a /v1/chat/completions body; ``think``: the loaded model's reasoning
    tags, which earlier reasoning sent back is given in.

    Raises:
        ProtocolError: naming the field at fault.
    """
    raw = f.array("messages", required=True)
    if not raw:
        raise f.error("invalid_field", "messages must hold at least one message", "messages")
    names: dict[str, str] = {}
    messages = tuple(_message(f, m, i, names, think) for i, m in enumerate(raw))
    choice, tools = _tool_choice(f, read_tools(f, strict=False))
    stream, usage = _stream(f)
    request = GenerationRequest(
        messages, _params(f), stream=stream, model=f.string("model"), tools=tools,
        tool_choice=choice, parallel_tool_calls=bool(f.flag("parallel_tool_calls", True)),
        enable_thinking=_thinking(f))
    return OpenAIRequest(request, usage)


def parse_completion(f: Fields) -> OpenAIRequest:
    """Parse a /v1/completions body; the prompt becomes one user message.

    Raises:
        ProtocolError: naming the field at fault.
    """
    prompt = f.get("prompt", required=True)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise f.wrong("prompt", "a string or a list of one string (token ids and several "
                      "prompts are not supported)", prompt)
    suffix = f.string("suffix")
    stream, usage = _stream(f)
    request = GenerationRequest((Message("user", (TextPart(prompt),)),), _params(f),
                                stream=stream, model=f.string("model"),
                                fim=(prompt, suffix) if suffix else None, raw=True)
    return OpenAIRequest(request, usage, echo=prompt if f.flag("echo") else None)
