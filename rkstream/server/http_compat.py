"""Shared pieces of the Ollama API and the demo's /rkllm_chat.

Reading a JSON body, checking its fields (with the protocol's own ranges),
decoding base64 images, and :func:`drive`, which runs one generation and
hands each piece to a callback. The callbacks start their HTTP response on
the first piece only, so a request that fails before any text (a bad image
found in the vision step, a full queue) still gets a proper HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, cast

from aiohttp import web

from ..engines.base import Outcome, SamplingSettings
from ..errors import RequestError
from ..protocol.events import ROLES, ImagePart, Message, Role
from ..protocol.parse import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, PARAM_RANGES
from .generation import Generation, generate
from .state import STATE

_BUSY = frozenset({"queue_full", "too_many_requests"})
_UNAVAILABLE = frozenset({"model_loading", "shutting_down", "cancelled"})
_SERVER_FAULT = frozenset({"runtime_error", "internal_error", "encoder_error"})

PieceWriter = Callable[[str], Awaitable[None]]

# Request field -> Params field, for the APIs that name sampling fields as /ws does.
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "repeat_penalty": "repeat_penalty", "frequency_penalty": "frequency_penalty",
                   "presence_penalty": "presence_penalty", "stop": "stop"}


def http_status(code: str, *, busy: int = 429) -> int:
    """The HTTP status for a protocol error code: 400 for anything the client can fix."""
    if code in _BUSY:
        return busy
    if code in _UNAVAILABLE:
        return 503
    if code in _SERVER_FAULT:
        return 500
    if code == "request_too_large":
        return 413
    return 400


def outcome_error(outcome: Outcome) -> tuple[str, str]:
    """``(code, message)`` of a run that did not finish with stop or length."""
    if outcome.finish_reason == "cancelled":
        return "cancelled", "the request was cancelled before it finished (server shutdown?)"
    return (outcome.error_code or "internal_error",
            outcome.error_message or "the generation failed")


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        RequestError: the body is too large, empty, not JSON, or not an object.
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestError("request_too_large", f"the body is too large: {exc.text}") from None
    if not raw.strip():
        raise RequestError("invalid_encoding", "the body is empty; send a JSON object")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("invalid_encoding", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError("invalid_event",
                           f"the body must be a JSON object, not {kind_of(value)}")
    return value


def kind_of(value: Any) -> str:
    """A JSON-ish name of ``value``'s type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def wrong(path: str, expected: str, value: Any) -> RequestError:
    """The ``invalid_field`` error for ``path`` holding the wrong kind of value."""
    return RequestError("invalid_field", f"{path} must be {expected}, not {kind_of(value)}",
                        param=path)


def get_str(obj: Mapping[str, Any], key: str, path: str | None = None) -> str | None:
    """``obj[key]`` if it is a string; None when absent or null."""
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise wrong(path or key, "a string", value)
    return value


def get_bool(obj: Mapping[str, Any], key: str, default: bool) -> bool:
    """``obj[key]`` if it is a boolean; ``default`` when absent or null."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise wrong(key, "true or false", value)
    return value


def get_object(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``obj[key]`` if it is an object; empty when absent or null."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise wrong(key, "an object", value)
    return value


def integer(value: Any, path: str) -> int:
    """A JSON integer; an integral float (40.0) is taken, as Ollama does."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong(path, "an integer", value)
    if isinstance(value, float) and not value.is_integer():
        raise wrong(path, "an integer", value)
    return int(value)


def sampling_values(obj: Mapping[str, Any], names: Mapping[str, str], where: str = ""
                    ) -> dict[str, Any]:
    """Check the sampling fields of ``obj``; ``names`` maps a client name to a Params field.

    Ranges are the WebSocket protocol's (protocol/parse.py). ``max_tokens``
    is left to :func:`token_budget`.
    """
    out: dict[str, Any] = {}
    for name, param in names.items():
        raw = obj.get(name)
        if raw is None:
            continue
        path = f"{where}.{name}" if where else name
        if param == "stop":
            out["stop"] = stop_sequences(raw, path)
            continue
        kind, lo, hi = PARAM_RANGES[param]
        if kind == "int":
            value: float = integer(raw, path)
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise wrong(path, "a number", raw)
        else:
            value = float(raw)
        if not (math.isfinite(value) and lo <= value <= hi):
            raise RequestError("invalid_param", f"{path} = {raw} is out of range [{lo}, {hi}]",
                               param=path)
        out[param] = value
    return out


def stop_sequences(raw: Any, path: str) -> tuple[str, ...]:
    """One string or a list of them; empty strings are dropped, as clients send them."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise wrong(path, "a string or an array of strings", raw)
    stops = tuple(s for s in items if s)
    if len(stops) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise RequestError("invalid_param",
                           f"{path} may hold at most {MAX_STOP_SEQUENCES} sequences of at most "
                           f"{MAX_STOP_CHARS} characters", param=path)
    return stops


def token_budget(raw: Any, path: str, cap: int, *, negative_is_default: bool) -> int | None:
    """A max-token count, clamped to the server's cap (``limits.max_tokens``).

    Clamping, not refusing, because Ollama-style clients send large values
    meaning "as much as you can"; done_reason "length" tells them it ended there.
    """
    if raw is None:
        return None
    count = integer(raw, path)
    if count < 0 and negative_is_default:
        return None
    if count < 1:
        raise RequestError("invalid_param", f"{path} = {count}; it must be at least 1",
                           param=path)
    return min(count, cap)


def decode_image(value: Any, path: str) -> ImagePart:
    """A base64 image (optionally a ``data:`` URL) as an ImagePart; bytes are checked later."""
    if not isinstance(value, str) or not value.strip():
        raise wrong(path, "a non-empty base64 string", value)
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("invalid_image", f"{path} is not valid base64", param=path) from None
    if not data:
        raise RequestError("invalid_image", f"{path} decodes to no bytes", param=path)
    return ImagePart(data=data)


def rfc3339(ns: int | None = None) -> str:
    """UTC time with nanoseconds, as Go (and so Ollama) writes it."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def nanoseconds(ms: float) -> int:
    """Milliseconds as whole nanoseconds (Ollama's duration unit)."""
    return max(0, round(ms * 1_000_000))


async def open_stream(request: web.Request, content_type: str) -> web.StreamResponse:
    """Send the headers of a 200 streaming answer."""
    response = web.StreamResponse(headers={
        "Content-Type": content_type, "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})  # proxies must not hold back the pieces
    await response.prepare(request)
    return response


async def drive(request: web.Request, messages: tuple[Message, ...],
                sampling: SamplingSettings, *, instructions: str | None, prefix: str,
                on_piece: PieceWriter | None) -> tuple[Generation, str] | None:
    """Run one generation; pass each piece to ``on_piece`` (when given).

    Returns the finished generation and its whole text, or None when the
    client went away (or a write to it failed): the request is then cancelled.

    Raises:
        RequestError: the request was refused before it started (queue full,
            model loading, no vision encoder, too many images).
    """
    state = request.app[STATE]
    pieces: list[str] = []
    # generate() is an async generator, though typed as an iterator.
    stream = cast("AsyncGenerator[str | Generation, None]",
                  generate(request, state, messages, sampling, instructions=instructions,
                           prefix=prefix))
    # aclosing: leaving early (a failed write) cancels the job at once.
    async with contextlib.aclosing(stream):
        async for item in stream:
            if isinstance(item, Generation):
                return item, "".join(pieces)
            pieces.append(item)
            if on_piece is not None:
                try:
                    await on_piece(item)
                except ConnectionError:
                    return None
    return None


def message_role(item: Any, where: str) -> Role:
    """The role of one message object; refused clearly when it is not one."""
    if not isinstance(item, dict):
        raise wrong(where, "an object", item)
    role = item.get("role")
    if role not in ROLES:
        raise RequestError("invalid_field", f"{where}.role must be one of {', '.join(ROLES)}",
                           param=f"{where}.role")
    return cast(Role, role)
