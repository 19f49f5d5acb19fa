"""``POST /rkllm_chat``, as the official rknn-llm server demo (1.2.x) answers it.

Request: ``{"model", "messages": [{"role", "content"}], "stream", "enable_thinking",
"tools"}`` (``model``, ``enable_thinking`` and ``tools`` are accepted and
ignored). The sampling fields the 1.3.0 demo reads (``temperature``, ``top_p``,
``top_k``, ``max_tokens``, ``repeat_penalty``, ``frequency_penalty``,
``presence_penalty``) are honoured too.

Streaming (``stream: true``) is not SSE: the body is ``text/plain``, a run of
whole JSON objects each followed by a blank line, ``object: "rkllm_chat"``, the
piece in ``choices[-1].delta.content``. A client written for the demo reads
each non-empty line as JSON and prints ``choices[-1].delta.content`` while
``choices[-1].finish_reason != "stop"``; the last frame here has empty content
and finish_reason ``stop`` (or ``length``). Unlike the demo, each frame carries
only its own choice (the demo re-sent the whole growing list, quadratic in the
answer's length), and the last frame carries real token counts in ``usage``.

Errors are the demo's ``{"status": "error", "message": ...}``: 400 for bad
input, 503 when busy (queue full) or loading; a failure after the stream has
started ends it with a frame whose finish_reason is ``error``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from ..engines.base import Outcome
from ..errors import RequestError
from ..protocol.events import Message, Params, Part, TextPart
from .generation import sampling_for
from .http_compat import (
    SAMPLING_FIELDS,
    decode_image,
    drive,
    get_bool,
    get_str,
    http_status,
    message_role,
    open_stream,
    outcome_error,
    read_object,
    sampling_values,
    token_budget,
    wrong,
)
from .state import STATE

OBJECT = "rkllm_chat"
SAMPLING = SAMPLING_FIELDS
NO_USAGE: dict[str, int | None] = {"prompt_tokens": None, "completion_tokens": None,
                                   "total_tokens": None}


def add_rkllm_demo_routes(app: web.Application) -> None:
    """Serve the 1.2.x demo's ``POST /rkllm_chat`` on ``app``."""
    app.router.add_post("/rkllm_chat", rkllm_chat)


def demo_error(code: str, message: str) -> web.Response:
    """The demo's error body; busy is 503, as in the demo."""
    return web.json_response({"status": "error", "message": message},
                             status=http_status(code, busy=503))


def frame(created: int, choice: dict[str, Any],
          usage: dict[str, int | None] | None = None) -> dict[str, Any]:
    """One response object of the demo's shape."""
    return {"id": OBJECT, "object": OBJECT, "created": created, "choices": [choice],
            "usage": usage or NO_USAGE}


def encode_frame(obj: dict[str, Any]) -> bytes:
    """One frame: the JSON object and a blank line, as the demo wrote them."""
    # ASCII-only JSON: requests' iter_lines() splits like str.splitlines(), which
    # also breaks at U+2028 and friends; escaped, they cannot cut a frame.
    return (json.dumps(obj) + "\n\n").encode("ascii")


def usage_of(outcome: Outcome) -> dict[str, int | None]:
    """Real token counts, where the demo had nulls (or word counts in 1.3.0)."""
    return {"prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.output_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.output_tokens}


def _content(raw: Any, where: str) -> tuple[Part, ...]:
    # A string, or OpenAI-style parts: text, and image_url with a base64 data URL.
    # Other part types are skipped, as the 1.3.0 demo skips them.
    if raw is None or isinstance(raw, str):
        return (TextPart(raw or ""),)
    if not isinstance(raw, list):
        raise wrong(f"{where}.content", "a string or an array of parts", raw)
    parts: list[Part] = []
    for i, part in enumerate(raw):
        path = f"{where}.content[{i}]"
        if not isinstance(part, dict):
            raise wrong(path, "an object", part)
        if part.get("type") == "text":
            parts.append(TextPart(get_str(part, "text", f"{path}.text") or ""))
        elif part.get("type") == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith("data:"):
                raise RequestError("invalid_image", f"{path}.image_url must be a base64 data "
                                                    "URL (data:image/...;base64,...)",
                                   param=path)
            parts.append(decode_image(url, f"{path}.image_url"))
    return tuple(parts) or (TextPart(""),)


def demo_messages(raw: Any) -> tuple[Message, ...]:
    """The request's messages; the whole conversation is used, not only the last turn."""
    if not isinstance(raw, list) or not raw:
        raise RequestError("missing_field", "messages must be a non-empty array of "
                                            "{role, content} objects", param="messages")
    out: list[Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        role = message_role(item, where)
        out.append(Message(role=role, parts=_content(item.get("content"), where)))
    return tuple(out)


def demo_params(body: dict[str, Any], cap: int) -> Params:
    """The top-level sampling fields the 1.3.0 demo reads, as Params."""
    values = sampling_values(body, SAMPLING)
    values["max_tokens"] = token_budget(body.get("max_tokens"), "max_tokens", cap,
                                        negative_is_default=True)
    return Params(**values)


async def rkllm_chat(request: web.Request) -> web.StreamResponse:
    """``POST /rkllm_chat``: one generation, streamed as the demo streams it."""
    state = request.app[STATE]
    try:
        body = await read_object(request)
        get_str(body, "model")
        messages = demo_messages(body.get("messages"))
        stream = get_bool(body, "stream", False)
        sampling = sampling_for(state, demo_params(body, state.settings.limits.max_tokens))
    except RequestError as exc:
        return demo_error(exc.code, exc.message)
    created = int(time.time())
    response: web.StreamResponse | None = None

    async def send(obj: dict[str, Any]) -> None:
        nonlocal response
        if response is None:
            response = await open_stream(request, "text/plain; charset=utf-8")
        await response.write(encode_frame(obj))

    async def on_piece(text: str) -> None:
        await send(frame(created, {"index": 0, "delta": {"role": "assistant", "content": text},
                                   "logprobs": None, "finish_reason": None}))

    try:
        result = await drive(request, messages, sampling, instructions=None,
                             prefix="rkllm_chat", on_piece=on_piece if stream else None)
    except RequestError as exc:
        return demo_error(exc.code, exc.message)
    if result is None:  # the client went away; its request was cancelled
        return response if response is not None else web.Response(status=499)
    gen, text = result
    outcome = gen.outcome
    assert outcome is not None
    if outcome.finish_reason not in ("stop", "length"):
        code, message = outcome_error(outcome)
        if response is None:
            return demo_error(code, message)
        last = {**frame(created, {"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": "error"}),
                "status": "error", "message": message}
    elif not stream:
        return web.json_response(frame(created, {
            "index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": None, "finish_reason": outcome.finish_reason}, usage_of(outcome)))
    else:
        last = frame(created, {"index": 0, "delta": {"role": "assistant", "content": ""},
                               "logprobs": None, "finish_reason": outcome.finish_reason},
                     usage_of(outcome))
    try:
        await send(last)
    except ConnectionError:
        pass  # the client left after the last piece
    return response if response is not None else web.Response(status=499)
