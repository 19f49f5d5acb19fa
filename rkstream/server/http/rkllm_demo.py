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
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from rkstream.core.fields import Fields
from rkstream.core.messages import ImagePart, Message, Part, TextPart
from rkstream.core.params import SAMPLING_FIELDS, Params
from rkstream.core.request import GenerationRequest
from rkstream.errors import RequestError
from rkstream.models.pool import ModelPool, Resident
from rkstream.server.http.body import data_url, message_role, token_budget
from rkstream.server.http.runner import Dialect, Result, serve, usage
from rkstream.server.state import AppState

OBJECT = "rkllm_chat"
NO_USAGE: dict[str, int | None] = {"prompt_tokens": None, "completion_tokens": None,
                                   "total_tokens": None}


def add_rkllm_demo_routes(app: web.Application) -> None:
    """Serve the 1.2.x demo's ``POST /rkllm_chat`` on ``app``."""
    app.router.add_post("/rkllm_chat", rkllm_chat)


def encode_frame(obj: dict[str, Any]) -> bytes:
    """One frame: the JSON object and a blank line, as the demo wrote them."""
    # ASCII-only JSON: requests' iter_lines() splits like str.splitlines(), which
    # also breaks at U+2028 and friends; escaped, they cannot cut a frame.
    return (json.dumps(obj) + "\n\n").encode("ascii")


def _content(m: Fields) -> tuple[Part, ...]:
    # A string, or OpenAI-style parts: text, and image_url with a base64 data URL.
    # Other part types are skipped, as the 1.3.0 demo skips them.
    raw = m.get("content")
    if raw is None or isinstance(raw, str):
        return (TextPart(raw or ""),)
    items = m.array("content") or []
    parts: list[Part] = []
    for i, item in enumerate(items):
        p = m.child(item, m.path(f"content[{i}]"))
        if p.get("type") == "text":
            parts.append(TextPart(p.string("text") or ""))
        elif p.get("type") == "image_url":
            url = p.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            path = p.path("image_url")
            if not isinstance(url, str):
                raise p.wrong(path, "a string (a data: URL)", url)
            parts.append(ImagePart(data=data_url(p, url, path)))
    return tuple(parts) or (TextPart(""),)


def demo_messages(f: Fields) -> tuple[Message, ...]:
    """The request's messages; the whole conversation is used, not only the last turn."""
    raw = f.array("messages", required=True) or []
    if not raw:
        raise f.error("invalid_field", "messages must hold at least one message", "messages")
    out: list[Message] = []
    for i, item in enumerate(raw):
        m = f.child(item, f"messages[{i}]")
        out.append(Message(role=message_role(m), parts=_content(m)))
    return tuple(out)


class DemoDialect(Dialect):
    """The demo's frames: whole JSON objects, each followed by a blank line."""

    content_type = "text/plain; charset=utf-8"
    prefix = "rkllm_chat"
    api = "rkllm_chat"

    def __init__(self) -> None:
        self.created = int(time.time())

    def frame(self, choice: dict[str, Any],
              counts: Mapping[str, int | None] = NO_USAGE) -> dict[str, Any]:
        """One response object of the demo's shape; real token counts on the last one,
        where the demo had nulls (or word counts in 1.3.0)."""
        return {"id": OBJECT, "object": OBJECT, "created": self.created, "choices": [choice],
                "usage": dict(counts)}

    def _delta(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason}

    def model_name(self, body: Fields, pool: ModelPool) -> str | None:
        # The demo serves one model and its clients send any name: a name this
        # server serves picks that model, any other the default.
        name = body.string("model")
        return name if pool.table.lookup(name) is not None else None

    def parse(self, body: Fields, state: AppState, model: Resident) -> GenerationRequest:
        # enable_thinking and tools are accepted and ignored, as in the demo.
        messages = demo_messages(body)
        values = body.params(SAMPLING_FIELDS)
        values["max_tokens"] = token_budget(body, "max_tokens",
                                            state.settings.limits.max_tokens)
        return GenerationRequest(messages, Params(**values),
                                 stream=bool(body.flag("stream", False)), model=model.name)

    def error_body(self, exc: RequestError) -> dict[str, Any]:
        return {"status": "error", "message": exc.message}

    def status_of(self, exc: RequestError) -> int:
        # The demo answers "busy" with 503; its clients expect that.
        status = exc.spec.status
        return 503 if status == 429 else status

    def piece(self, text: str) -> bytes:
        return encode_frame(self.frame(self._delta(text, None)))

    def end(self, result: Result) -> bytes:
        return encode_frame(self.frame(self._delta("", result.outcome.finish_reason),
                                       usage(result.outcome)))

    def stream_error(self, exc: RequestError) -> bytes:
        return encode_frame({**self.frame(self._delta("", "error")), "status": "error",
                             "message": exc.message})

    def whole(self, result: Result) -> dict[str, Any]:
        return self.frame({"index": 0, "message": {"role": "assistant", "content": result.text},
                           "logprobs": None, "finish_reason": result.outcome.finish_reason},
                          usage(result.outcome))


async def rkllm_chat(request: web.Request) -> web.StreamResponse:
    """``POST /rkllm_chat``: one generation, streamed as the demo streams it."""
    return await serve(request, DemoDialect())
