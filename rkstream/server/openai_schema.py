"""Validate OpenAI request bodies by hand into the project's Message and Params.

Unknown fields are ignored, because OpenAI clients send many (``tools``,
``user``, ``response_format``, ``parallel_tool_calls``...). Known fields with
a wrong type or an out-of-range value are refused with a 400 naming the
field. Ranges come from :data:`rkstream.protocol.parse.PARAM_RANGES`, the
same as on /ws.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from ..protocol.events import ImagePart, Message, Params, Part, Role, TextPart
from ..protocol.parse import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, PARAM_RANGES
from .openai_errors import APIError

_ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user",
                           "assistant": "assistant", "tool": "tool"}


@dataclass(frozen=True)
class GenerationRequest:
    """One parsed /v1/chat/completions or /v1/completions request."""

    model: str | None
    messages: tuple[Message, ...]
    params: Params
    stream: bool
    include_usage: bool
    echo: str | None = None  # /v1/completions with echo: the prompt, sent before the answer
    fim: tuple[str, str] | None = None  # /v1/completions with suffix: (prompt, suffix)


def bad(param: str | None, message: str, code: str = "invalid_field") -> APIError:
    """A 400 for the request field ``param``."""
    return APIError(400, code, message, param=param)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _wrong(param: str, expected: str, value: Any) -> APIError:
    return bad(param, f"{param} must be {expected}, not {_kind(value)}")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad(None, f"the request body must be a JSON object, not {_kind(body)}")
    return body


def _bool(body: dict[str, Any], key: str, where: str = "") -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _wrong(where + key, "true or false", value)
    return value


def _string(body: dict[str, Any], key: str, where: str = "") -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _wrong(where + key, "a string", value)
    return value


def _number(body: dict[str, Any], key: str, kind: str, lo: float, hi: float
            ) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(key, "a number", value)
    if kind == "int":
        # JSON from JavaScript may say 40.0 for 40.
        if isinstance(value, float) and not value.is_integer():
            raise _wrong(key, "an integer", value)
        value = int(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        hi_text = "inf" if hi >= 1 << 20 else f"{hi:g}"
        raise bad(key, f"{key} = {value} is out of range [{lo:g}, {hi_text}]", "invalid_param")
    return value if kind == "int" else float(value)


def _stop(body: dict[str, Any]) -> tuple[str, ...] | None:
    raw = body.get("stop")
    if raw is None:
        return None
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _wrong("stop", "a string or a list of strings", raw)
    stops = [s for s in stops if s]  # an empty stop string means nothing
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad("stop", f"stop has {len(stops)} sequences; the most is "
                          f"{MAX_STOP_SEQUENCES}", "invalid_param")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad("stop", f"each stop sequence may have at most {MAX_STOP_CHARS} characters",
                  "invalid_param")
    return tuple(stops) or None


def _params(body: dict[str, Any]) -> Params:
    values: dict[str, Any] = {}
    for name, (kind, lo, hi) in PARAM_RANGES.items():
        if name != "max_tokens":
            values[name] = _number(body, name, kind, lo, hi)
    kind, lo, hi = PARAM_RANGES["max_tokens"]
    # max_completion_tokens is the newer name; it wins when both are sent.
    newer = _number(body, "max_completion_tokens", kind, lo, hi)
    values["max_tokens"] = newer if newer is not None else _number(body, "max_tokens", kind,
                                                                   lo, hi)
    values["stop"] = _stop(body)
    seed = body.get("seed")  # accepted; the engines take their seed from the config
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _wrong("seed", "an integer", seed)
    for key in ("n", "best_of"):
        count = body.get(key)
        if count is None:
            continue
        if isinstance(count, bool) or not isinstance(count, int):
            raise _wrong(key, "an integer", count)
        if count != 1:
            raise bad(key, f"{key} = {count} is not supported: this server generates one "
                           f"choice per request; send {key} = 1 or leave it out",
                      "invalid_param")
    return Params(**values)


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise _wrong("stream_options", "an object", options)
    return stream, _bool(options, "include_usage", "stream_options.")


def _model(body: dict[str, Any]) -> str | None:
    return _string(body, "model")


def _image(raw: Any, where: str) -> ImagePart:
    url = raw.get("url") if isinstance(raw, dict) else raw
    param = f"{where}.url" if isinstance(raw, dict) else where
    if not isinstance(url, str):
        raise _wrong(param, "a string (a data: URL)", url)
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        raise bad(param, "remote image URLs are not fetched; send the image as a data: URL "
                         "(data:image/jpeg;base64,...)", "remote_image_url")
    head, sep, data = url.partition(",")
    if scheme != "data" or not sep:
        raise bad(param, f"{param} must be a data: URL (data:image/jpeg;base64,...)",
                  "invalid_image")
    media_type, *options = head[5:].split(";")
    if "base64" not in options:
        raise bad(param, f"{param} must be base64 data (data:image/...;base64,...)",
                  "invalid_image")
    if media_type and not media_type.lower().startswith("image/"):
        raise bad(param, f"{param} holds {media_type}, not an image",
                  "unsupported_image_format")
    try:
        decoded = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad(param, f"{param} is not valid base64", "invalid_image") from None
    # The vision step reads the format from the bytes; clients mislabel it.
    return ImagePart(data=decoded)


def _part(raw: Any, where: str) -> Part:
    if not isinstance(raw, dict):
        raise _wrong(where, "an object", raw)
    kind = raw.get("type")
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise _wrong(f"{where}.text", "a string", text)
        return TextPart(text)
    if kind == "image_url":
        return _image(raw.get("image_url"), f"{where}.image_url")
    if kind == "refusal" and isinstance(raw.get("refusal"), str):
        return TextPart(raw["refusal"])
    raise bad(f"{where}.type", f"{where}.type = {kind!r} is not supported; use text or "
                               "image_url")


def _tool_calls(raw: dict[str, Any], where: str) -> str:
    """Earlier tool calls of the assistant, written as text the model can read."""
    calls = raw.get("tool_calls")
    if raw.get("function_call") is not None:  # the deprecated single-call form
        calls = [{"function": raw["function_call"]}]
    if calls is None:
        return ""
    if not isinstance(calls, list):
        raise _wrong(f"{where}.tool_calls", "a list", calls)
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}.tool_calls[{i}]",
                      f"{where}.tool_calls[{i}] must be {{type, id, function: {{name, "
                      "arguments}}}")
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


def _message(raw: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise _wrong(where, "an object", raw)
    role_name = raw.get("role")
    if not isinstance(role_name, str):
        raise bad(f"{where}.role", f"{where}.role is required: system, developer, user, "
                                   "assistant or tool", "missing_field")
    role = _ROLES.get(role_name)
    if role is None:
        raise bad(f"{where}.role", f"{where}.role = {role_name!r} is not one of system, "
                                   "developer, user, assistant, tool")
    content = raw.get("content")
    parts: list[Part]
    if isinstance(content, str):
        parts = [TextPart(content)]
    elif isinstance(content, list):
        parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
    elif content is None and role == "assistant":
        parts = []  # an assistant turn that only called tools
    elif content is None:
        raise bad(f"{where}.content", f"{where}.content is required", "missing_field")
    else:
        raise _wrong(f"{where}.content", "a string or a list of parts", content)
    if role == "assistant":
        calls = _tool_calls(raw, where)
        if calls:
            parts.append(TextPart(("\n" if parts else "") + calls))
    return Message(role, tuple(parts))


def parse_chat(body: Any) -> GenerationRequest:
    """Parse a /v1/chat/completions body.

    Raises:
        APIError: 400 naming the field at fault.
    """
    obj = _object(body)
    raw = obj.get("messages")
    if raw is None:
        raise bad("messages", "messages is required: a list of {role, content}",
                  "missing_field")
    if not isinstance(raw, list):
        raise _wrong("messages", "a list", raw)
    if not raw:
        raise bad("messages", "messages must hold at least one message")
    messages = tuple(_message(m, i) for i, m in enumerate(raw))
    stream, usage = _stream(obj)
    return GenerationRequest(model=_model(obj), messages=messages, params=_params(obj),
                             stream=stream, include_usage=usage)


def parse_completion(body: Any) -> GenerationRequest:
    """Parse a /v1/completions body; the prompt becomes one user message.

    Raises:
        APIError: 400 naming the field at fault.
    """
    obj = _object(body)
    prompt = obj.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise bad("prompt", "prompt is required: a string", "missing_field")
    if not isinstance(prompt, str):
        raise bad("prompt", "prompt must be a string or a list of one string (token ids and "
                            "several prompts are not supported)")
    suffix = _string(obj, "suffix")
    stream, usage = _stream(obj)
    return GenerationRequest(model=_model(obj), messages=(Message("user", (TextPart(prompt),)),),
                             params=_params(obj), stream=stream, include_usage=usage,
                             echo=prompt if _bool(obj, "echo") else None,
                             fim=(prompt, suffix) if suffix else None)
