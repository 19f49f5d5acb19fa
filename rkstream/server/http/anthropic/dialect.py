"""Anthropic's answer shapes: the message object, whole or as typed SSE events.

A streamed answer is a run of ``event: <type>`` / ``data: {"type": <type>, ...}``
pairs: ``message_start`` (as soon as the request is queued), then each content
block in turn, ``content_block_start``, its deltas and ``content_block_stop``,
with ``index`` counting the blocks from 0, then ``message_delta`` (the stop
reason and the usage) and ``message_stop``. ``ping`` events go out while it
waits (proxies time out on silence); a failure after the stream opened is an
``error`` event, which the SDKs raise.

The blocks come from the output parser (rkstream/chat/output.py), in the
order the model wrote them:

- reasoning is a ``thinking`` block (``thinking_delta``), closed by a
  ``signature_delta``: rkstream signs nothing, so the signature is a fixed
  placeholder, there because clients keep a thinking block to send back only
  when it has one;
- text is a ``text`` block (``text_delta``); blank text between other blocks
  is dropped;
- a tool call is a ``tool_use`` block: its name first, then its arguments as
  ``input_json_delta`` pieces as they are generated (like Anthropic's
  fine-grained tool streaming: a call the model broke is not valid JSON).
  Whole, ``input`` is the arguments object, or ``{"INVALID_JSON": text}``
  for arguments that are not one (Anthropic's key for that).

``stop_reason`` is ``tool_use`` for an answer that ended in calls,
``max_tokens`` when cut off, ``stop_sequence`` (with ``stop_sequence``) when
one of the request's sequences ended it, else ``end_turn``. The usage is the
engine's: ``input_tokens`` those this run prefilled, ``cache_read_input_tokens``
those the KV cache held. Streamed, they are known only at the end, so
``message_start`` says 0 and ``message_delta`` carries them (both SDKs take
the counts of the last).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from rkstream.core.fields import Fields
from rkstream.core.messages import ToolCall
from rkstream.core.request import GenerationRequest
from rkstream.errors import RequestError
from rkstream.models.pool import Resident
from rkstream.server.http.anthropic.errors import error_body, status_of
from rkstream.server.http.anthropic.schema import INVALID_JSON, parse_messages
from rkstream.server.http.runner import Dialect, Result
from rkstream.server.state import AppState

PING_INTERVAL_S = 15.0
SIGNATURE = "rkstream-unsigned"


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One SSE event: its type as the ``event:`` name and in the data."""
    payload = json.dumps({"type": kind, **data}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n".encode()


def tool_use_id(call_id: str) -> str:
    """Anthropic's ``toolu_`` ids, from the parser's ``call_`` ones."""
    return "toolu_" + call_id.removeprefix("call_")


def tool_use(call: ToolCall) -> dict[str, Any]:
    """A finished call as a whole ``tool_use`` block."""
    value = call.arguments_value()
    arguments = value if isinstance(value, dict) else {INVALID_JSON: call.arguments}
    return {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
            "input": arguments}


def usage(result: Result) -> dict[str, Any]:
    outcome = result.outcome
    out: dict[str, Any] = {"input_tokens": outcome.prompt_tokens,
                           "cache_creation_input_tokens": 0,
                           "cache_read_input_tokens": outcome.cached_tokens,
                           "output_tokens": outcome.output_tokens}
    if result.reasoning or result.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": result.reasoning_tokens}
    return out


class AnthropicDialect(Dialect):
    """One /v1/messages answer: its id, and the content block being streamed."""

    content_type = "text/event-stream; charset=utf-8"
    prefix = "msg"
    api = "anthropic_messages"
    keepalive_s = PING_INTERVAL_S

    def __init__(self) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model = ""
        self.stops: tuple[str, ...] = ()
        self.omit_thinking = False
        self._block: str | None = None  # the type of the block open in the stream
        self._index = -1  # the index of the latest block
        self._blank = ""  # blank text, held until a text block needs it

    def parse(self, body: Fields, state: AppState, model: Resident) -> GenerationRequest:
        fmt = model.engine.chat_format
        parsed = parse_messages(body, state.settings.limits.max_tokens,
                                fmt.markup.think if fmt is not None else None)
        self.model = parsed.request.model or model.name
        self.stops = parsed.request.params.stop or ()
        self.omit_thinking = parsed.omit_thinking
        return parsed.request

    def error_body(self, exc: RequestError) -> dict[str, Any]:
        return error_body(exc)

    def status_of(self, exc: RequestError) -> int:
        return status_of(exc)

    def _stop(self, result: Result) -> tuple[str, str | None]:
        """``stop_reason`` and ``stop_sequence``."""
        if result.finish_reason == "tool_calls":
            return "tool_use", None
        if result.outcome.finish_reason == "length":
            return "max_tokens", None
        matched = result.outcome.stop_sequence  # also a call's closing tag: not the client's
        if matched is not None and matched in self.stops:
            return "stop_sequence", matched
        return "end_turn", None

    # -- the stream's blocks -----------------------------------------------------------
    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._block = block["type"]
        return out + event("content_block_start", {"index": self._index,
                                                   "content_block": block})

    def _close(self) -> bytes:
        self._blank = ""
        if self._block is None:
            return b""
        out = b""
        if self._block == "thinking":
            out = self._delta({"type": "signature_delta", "signature": SIGNATURE})
        self._block = None
        return out + event("content_block_stop", {"index": self._index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"index": self._index, "delta": delta})

    def opening(self) -> bytes:
        return event("message_start", {"message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def keepalive(self) -> bytes:
        return event("ping", {})

    def piece(self, text: str) -> bytes:
        out = b""
        if self._block != "text":
            if not text.strip():
                self._blank += text
                return b""
            blank = self._blank
            out = self._open({"type": "text", "text": ""})
            text = blank + text
        return out + self._delta({"type": "text_delta", "text": text})

    def reasoning(self, text: str) -> bytes:
        out = b""
        if self._block != "thinking":
            out = self._open({"type": "thinking", "thinking": "", "signature": ""})
        if self.omit_thinking:
            return out
        return out + self._delta({"type": "thinking_delta", "thinking": text})

    def call_begin(self, index: int, call_id: str, name: str) -> bytes:
        return self._open({"type": "tool_use", "id": tool_use_id(call_id), "name": name,
                           "input": {}})

    def call_arguments(self, index: int, text: str) -> bytes:
        return self._delta({"type": "input_json_delta", "partial_json": text})

    def call_done(self, index: int, call: ToolCall) -> bytes:
        return self._close()

    def end(self, result: Result) -> bytes:
        out = self._close()
        if self._index < 0:  # an empty answer still has its (empty) text block
            out = self._open({"type": "text", "text": ""}) + self._close()
        reason, sequence = self._stop(result)
        return out + event("message_delta", {
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(result)}) + event("message_stop", {})

    def stream_error(self, exc: RequestError) -> bytes:
        return event("error", error_body(exc))

    # -- whole ----------------------------------------------------------------------------
    def whole(self, result: Result) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if result.reasoning:
            content.append({"type": "thinking", "signature": SIGNATURE,
                            "thinking": "" if self.omit_thinking else result.reasoning})
        if result.text.strip() or not (content or result.calls):
            content.append({"type": "text", "text": result.text})
        content += [tool_use(call) for call in result.calls]
        reason, sequence = self._stop(result)
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": reason, "stop_sequence": sequence,
                "usage": usage(result)}
