"""OpenAI request bodies mapped onto the one internal request.

Unknown fields are ignored, because OpenAI clients send many (``user``,
``response_format``, ``parallel_tool_calls``...). Known fields are read
through :class:`rkstream.core.fields.Fields`, so their checks and messages
are the same as on every other API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rkstream.core.fields import Fields
from rkstream.core.messages import ImagePart, Message, Part, Role, TextPart
from rkstream.core.params import SAMPLING_FIELDS, Params
from rkstream.core.request import GenerationRequest
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


def _tool_calls(m: Fields) -> str:
    """Earlier tool calls of the assistant, written as text the model can read."""
    calls = m.array("tool_calls")
    legacy = m.mapping("function_call")  # the deprecated single-call form
    if legacy is not None:
        calls = [{"function": legacy}]
    out = []
    for i, call in enumerate(calls or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            path = m.path(f"tool_calls[{i}]")
            raise m.error("invalid_field",
                          f"{path} must be {{type, id, function: {{name, arguments}}}}", path)
        args = function.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass  # keep the text as the model wrote it
        call_json = json.dumps({"name": function["name"], "arguments": args},
                               ensure_ascii=False)
        out.append(f"<tool_call>\n{call_json}\n</tool_call>")
    return "\n".join(out)


def _message(f: Fields, raw: Any, i: int) -> Message:
    m = f.child(raw, f"messages[{i}]")
    role = _ROLES[m.choice("role", tuple(_ROLES), required=True) or ""]
    content = m.get("content")
    parts: list[Part]
    if isinstance(content, str):
        parts = [TextPart(content)]
    elif isinstance(content, list):
        parts = [_part(m, p, m.path(f"content[{j}]")) for j, p in enumerate(content)]
    elif content is None and role == "assistant":
        parts = []  # an assistant turn that only called tools
    elif content is None:
        raise m.missing(m.path("content"))
    else:
        raise m.wrong(m.path("content"), "a string or a list of parts", content)
    if role == "assistant":
        calls = _tool_calls(m)
        if calls:
            parts.append(TextPart(("\n" if parts else "") + calls))
    return Message(role, tuple(parts))


def parse_chat(f: Fields) -> OpenAIRequest:
    """Parse a /v1/chat/completions body.

    Raises:
        ProtocolError: naming the field at fault.
    """
    raw = f.array("messages", required=True)
    if not raw:
        raise f.error("invalid_field", "messages must hold at least one message", "messages")
    messages = tuple(_message(f, m, i) for i, m in enumerate(raw))
    stream, usage = _stream(f)
    return OpenAIRequest(GenerationRequest(messages, _params(f), stream=stream,
                                           model=f.string("model")), usage)


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
