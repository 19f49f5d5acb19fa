"""OpenAI Responses (``POST /v1/responses``): the answer as output items, whole or as SSE events.

An answer is a list of output items, in the order the model wrote them:
``reasoning`` (the model's thinking, raw, as ``content`` ``reasoning_text``;
``summary`` stays empty because nothing summarises it), ``message`` (the
text, one ``output_text`` part) and ``function_call`` (``call_id``,
``name``, ``arguments`` as JSON text). Text, reasoning or a call that follows
another kind opens a new item. Blank text between items opens none.

Streamed, every event is ``event: <type>`` plus ``data: {…, "sequence_number"}``,
numbered from 0, as the openai SDK parses them:

- ``response.created`` and ``response.in_progress`` as soon as the request is
  queued (then ``: ping`` comments while it waits, as on chat completions);
- per item: ``response.output_item.added``; for text and reasoning
  ``response.content_part.added``, then ``response.output_text.delta`` or
  ``response.reasoning_text.delta`` pieces, ``….done`` and
  ``response.content_part.done``; for a call
  ``response.function_call_arguments.delta`` pieces and ``….done``; then
  ``response.output_item.done``;
- last, ``response.completed``, or ``response.incomplete`` (the token budget
  ran out: ``incomplete_details.reason`` ``max_output_tokens``), with the
  whole response object. A failure after the stream opened ends it with
  ``response.failed`` (``error``: code and message). No ``[DONE]``, as OpenAI.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from rkstream.core.fields import Fields
from rkstream.core.messages import ToolCall
from rkstream.core.request import GenerationRequest
from rkstream.errors import RequestError
from rkstream.models.pool import Resident
from rkstream.server.http.openai.dialect import PING_INTERVAL_S, error_object
from rkstream.server.http.openai.responses_schema import STATELESS, parse_responses
from rkstream.server.http.runner import Dialect, Result, serve
from rkstream.server.state import AppState

ItemKind = Literal["message", "reasoning", "function_call"]
_ID_PREFIX: dict[ItemKind, str] = {"message": "msg", "reasoning": "rs", "function_call": "fc"}


@dataclass
class _Item:
    """One output item as it grows."""

    kind: ItemKind
    index: int  # its output_index
    id: str = ""
    parts: list[str] = field(default_factory=list)  # text, reasoning or arguments
    status: str = "in_progress"
    call_id: str = ""
    name: str = ""
    arguments: str | None = None  # the finished call's, which win over the pieces

    def __post_init__(self) -> None:
        self.id = f"{_ID_PREFIX[self.kind]}_{uuid.uuid4().hex}"

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def part(self) -> dict[str, Any]:
        """The content part of a message or reasoning item."""
        if self.kind == "message":
            return {"type": "output_text", "text": self.text, "annotations": [],
                    "logprobs": []}
        return {"type": "reasoning_text", "text": self.text}

    def body(self) -> dict[str, Any]:
        opened = self.status == "in_progress"
        if self.kind == "function_call":
            arguments = self.arguments if self.arguments is not None else self.text
            return {"id": self.id, "type": "function_call", "status": self.status,
                    "call_id": self.call_id, "name": self.name,
                    "arguments": "" if opened else arguments}
        content = [] if opened else [self.part()]
        if self.kind == "message":
            return {"id": self.id, "type": "message", "role": "assistant",
                    "status": self.status, "content": content}
        return {"id": self.id, "type": "reasoning", "status": self.status, "summary": [],
                "content": content}


def usage(result: Result) -> dict[str, Any]:
    """The Responses usage object; input tokens include those the KV cache held."""
    outcome = result.outcome
    prompt = outcome.prompt_tokens + outcome.cached_tokens
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": outcome.cached_tokens},
            "output_tokens": outcome.output_tokens,
            "output_tokens_details": {"reasoning_tokens": result.reasoning_tokens},
            "total_tokens": prompt + outcome.output_tokens}


class ResponsesDialect(Dialect):
    """One response: its output items and its event numbering."""

    content_type = "text/event-stream; charset=utf-8"
    keepalive_s = PING_INTERVAL_S
    prefix = "resp"
    api = "openai_responses"

    def __init__(self) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = ""
        self.echo: dict[str, Any] = {}
        self.sequence = 0
        self.items: list[_Item] = []
        self.current: _Item | None = None  # the item pieces go to
        self.calls: dict[int, _Item] = {}  # by the parser's call index
        self.blank = ""  # blank text not yet given to a message

    def parse(self, body: Fields, state: AppState, model: Resident) -> GenerationRequest:
        fmt = model.engine.chat_format
        parsed = parse_responses(body, fmt.markup.think if fmt is not None else None,
                                 state.settings.limits.max_tokens)
        request = parsed.request
        self.model = request.model or model.name
        sampling = state.settings.sampling  # what the run uses when the request is silent
        self.echo = {**parsed.echo,
                     "temperature": request.params.temperature
                     if request.params.temperature is not None else sampling.temperature,
                     "top_p": request.params.top_p
                     if request.params.top_p is not None else sampling.top_p}
        return request

    def error_body(self, exc: RequestError) -> dict[str, Any]:
        return error_object(exc)

    # -- events ------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {text}\n\n".encode()

    def _response(self, status: str, result: Result | None = None,
                  error: RequestError | None = None) -> dict[str, Any]:
        done = status in ("completed", "incomplete")
        return {"id": self.id, "object": "response", "created_at": self.created,
                "status": status, "background": False,
                "completed_at": int(time.time()) if done else None,
                "error": {"code": error.code, "message": error.message} if error else None,
                "incomplete_details": {"reason": "max_output_tokens"}
                if status == "incomplete" else None,
                "model": self.model, "output": [item.body() for item in self.items],
                "previous_response_id": None, "store": False, **self.echo,
                "usage": usage(result) if result is not None else None}

    def _open(self, kind: ItemKind, call_id: str = "", name: str = "") -> tuple[_Item, bytes]:
        """Close the current item and open one of ``kind``."""
        out = self._close("completed")
        self.blank = ""  # blank text between two items belongs to neither
        item = _Item(kind, len(self.items), call_id=call_id, name=name)
        self.items.append(item)
        self.current = item
        out += self._event("response.output_item.added", output_index=item.index,
                           item=item.body())
        if kind != "function_call":
            out += self._event("response.content_part.added", item_id=item.id,
                               output_index=item.index, content_index=0,
                               part=item.part())
        return item, out

    def _close(self, status: str) -> bytes:
        item, self.current = self.current, None
        if item is None:
            return b""
        item.status = status
        where: dict[str, Any] = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            out = self._event("response.function_call_arguments.done", **where,
                              arguments=item.body()["arguments"])
        else:
            kind = "output_text" if item.kind == "message" else "reasoning_text"
            extra: dict[str, Any] = {"logprobs": []} if item.kind == "message" else {}
            out = self._event(f"response.{kind}.done", **where, content_index=0,
                              text=item.text, **extra)
            out += self._event("response.content_part.done", **where, content_index=0,
                               part=item.part())
        return out + self._event("response.output_item.done", output_index=item.index,
                                 item=item.body())

    def _settle(self, status: str) -> bytes:
        """Close what is open; an answer with no item at all gets an empty message."""
        out = self._close(status)
        if not self.items:
            blank = self.blank
            item, opened = self._open("message")
            item.parts.append(blank)
            out += opened + self._close(status)
        return out

    # -- the runner's calls ------------------------------------------------------------
    def opening(self) -> bytes:
        return (self._event("response.created", response=self._response("in_progress"))
                + self._event("response.in_progress", response=self._response("in_progress")))

    def keepalive(self) -> bytes:
        return b": ping\n\n"

    def piece(self, text: str) -> bytes:
        item, out = self.current, b""
        if item is None or item.kind != "message":
            if not text.strip():
                self.blank += text
                return b""
            blank = self.blank
            item, out = self._open("message")
            text = blank + text
        item.parts.append(text)
        return out + self._event("response.output_text.delta", item_id=item.id,
                                 output_index=item.index, content_index=0, delta=text,
                                 logprobs=[])

    def reasoning(self, text: str) -> bytes:
        item, out = self.current, b""
        if item is None or item.kind != "reasoning":
            item, out = self._open("reasoning")
        item.parts.append(text)
        return out + self._event("response.reasoning_text.delta", item_id=item.id,
                                 output_index=item.index, content_index=0, delta=text)

    def call_begin(self, index: int, call_id: str, name: str) -> bytes:
        item, out = self._open("function_call", call_id, name)
        self.calls[index] = item
        return out

    def call_arguments(self, index: int, text: str) -> bytes:
        item = self.calls[index]
        item.parts.append(text)
        return self._event("response.function_call_arguments.delta", item_id=item.id,
                           output_index=item.index, delta=text)

    def call_done(self, index: int, call: ToolCall) -> bytes:
        item = self.calls[index]
        item.name, item.arguments = call.name, call.arguments
        return self._close("completed") if item is self.current else b""

    def end(self, result: Result) -> bytes:
        status = "incomplete" if result.finish_reason == "length" else "completed"
        out = self._settle(status)
        return out + self._event(f"response.{status}",
                                 response=self._response(status, result))

    def stream_error(self, exc: RequestError) -> bytes:
        out = self._settle("incomplete")
        return out + self._event("response.failed",
                                 response=self._response("failed", error=exc))

    def whole(self, result: Result) -> dict[str, Any]:
        status = "incomplete" if result.finish_reason == "length" else "completed"
        self._settle(status)  # the events are not sent: only the items' state counts
        return self._response(status, result)


# -- routes ---------------------------------------------------------------------------

async def create_response(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``."""
    return await serve(request, ResponsesDialect())


async def stored_response(request: web.Request) -> web.StreamResponse:
    """Every route on a stored response (retrieve, delete, cancel, input items): a 404
    that says why, instead of a bare "no such endpoint"."""
    raise RequestError("not_found", f"{request.method} {request.path} is not available: "
                       f"{STATELESS}; use POST /v1/responses")


def add_responses_routes(app: web.Application) -> None:
    """Register ``POST /v1/responses`` and the stateless 404s beneath it."""
    app.router.add_post("/v1/responses", create_response)
    app.router.add_route("*", "/v1/responses/{tail:.+}", stored_response)
