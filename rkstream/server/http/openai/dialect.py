"""OpenAI's answer shapes: chat and text completions, whole or as SSE chunks.

Both endpoints share :class:`OpenAIDialect`; ``chat`` picks the chunk
layout. A stream opens with the role chunk (chat) or the echoed prompt
(text), sends ``: ping`` comments while it waits (proxies time out on
silence), and ends with the finish chunk, the usage chunk when
``stream_options.include_usage`` asks for it, and ``data: [DONE]``. A
failure after the stream opened is ``data: {"error": ...}`` then
``data: [DONE]``, which the openai SDK raises as an APIError.

Chat answers carry what the output parser finds (rkstream/chat/output.py):

- reasoning as ``reasoning_content`` (DeepSeek, llama.cpp; what most clients
  read) and the same text as ``reasoning`` (vLLM, OpenRouter), in deltas and
  in the whole message;
- tool calls as OpenAI streams them: a call's first delta
  ``{"index", "id", "type": "function", "function": {"name", "arguments": ""}}``,
  then ``{"index", "function": {"arguments": piece}}`` as its JSON comes;
  whole, ``message.tool_calls`` with the arguments as one JSON string, and
  ``content`` null when the answer is only calls. ``finish_reason`` is then
  ``tool_calls``. A call with broken JSON or an undeclared name is returned
  as written (the runner logs it): the client decides.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from rkstream.core.fields import Fields
from rkstream.core.messages import ToolCall
from rkstream.core.request import GenerationRequest
from rkstream.engines.base import Outcome
from rkstream.errors import RequestError
from rkstream.models.pool import Resident
from rkstream.server.http.openai.schema import OpenAIRequest, parse_chat, parse_completion
from rkstream.server.http.runner import Dialect, Result, usage
from rkstream.server.state import AppState

PING_INTERVAL_S = 15.0


def sse(obj: dict[str, Any]) -> bytes:
    """One ``data:`` event holding ``obj`` as compact JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def error_object(exc: RequestError) -> dict[str, Any]:
    """OpenAI's ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param,
                      "code": exc.code}}


def timings(outcome: Outcome) -> dict[str, float]:
    """llama.cpp server's ``timings`` object (non-standard; clients ignore it)."""
    seconds = outcome.predicted_ms / 1000.0
    return {"prompt_n": outcome.prompt_tokens, "cache_n": outcome.cached_tokens,
            "prompt_ms": round(outcome.prompt_ms, 3),
            "predicted_n": outcome.output_tokens,
            "predicted_ms": round(outcome.predicted_ms, 3),
            "predicted_per_second": round(outcome.output_tokens / seconds, 3)
            if seconds > 0 else 0.0}


class OpenAIDialect(Dialect):
    """One chat or text completion: its ids and its chunk layout."""

    content_type = "text/event-stream; charset=utf-8"
    keepalive_s = PING_INTERVAL_S

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.prefix = "chatcmpl" if chat else "cmpl"
        self.api = "openai_chat" if chat else "openai_completions"
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = ""
        self.include_usage = False
        self.echo: str | None = None
        self._piece_frame: tuple[bytes, bytes] | None = None  # a text chunk, around its text

    def parse(self, body: Fields, state: AppState, model: Resident) -> GenerationRequest:
        fmt = model.engine.chat_format
        parsed: OpenAIRequest = (
            parse_chat(body, fmt.markup.think if fmt is not None else None) if self.chat
            else parse_completion(body))
        self.model = parsed.request.model or model.name
        self.include_usage = parsed.include_usage
        self.echo = parsed.echo
        return parsed.request

    def error_body(self, exc: RequestError) -> dict[str, Any]:
        return error_object(exc)

    # -- chunks ------------------------------------------------------------------------
    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        chunk: dict[str, Any] = {"id": self.id, "object": kind, "created": self.created,
                                 "model": self.model, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI: null on every chunk but the usage one
        chunk.update(extra)
        return chunk

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {} if text is None else {"content": text}
        else:
            choice["text"] = text or ""
        choice.update(logprobs=None, finish_reason=finish_reason)
        return choice

    def _delta(self, delta: dict[str, Any]) -> bytes:
        """One chat chunk with ``delta``, the stream going on (nothing for a text
        completion, which is never parsed)."""
        if not self.chat:
            return b""
        return sse(self._chunk([{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": None}]))

    def _usage(self, result: Result) -> dict[str, Any]:
        out = usage(result.outcome)
        if result.reasoning or result.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": result.reasoning_tokens}
        return out

    def opening(self) -> bytes:
        if self.chat:
            choice = self._choice(None, None)
            choice["delta"] = {"role": "assistant", "content": ""}
            return sse(self._chunk([choice]))
        return self.piece(self.echo) if self.echo else b""

    def keepalive(self) -> bytes:
        return b": ping\n\n"

    def piece(self, text: str) -> bytes:
        # Every text chunk of a stream is the same JSON around its text: written
        # once, so each token only encodes its own string.
        if self._piece_frame is None:
            marker = "\x00"
            whole = sse(self._chunk([self._choice(marker, None)]))
            head, tail = whole.split(json.dumps(marker).encode(), 1)
            self._piece_frame = (head, tail)
        head, tail = self._piece_frame
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    def reasoning(self, text: str) -> bytes:
        return self._delta({"reasoning_content": text, "reasoning": text})

    def call_begin(self, index: int, call_id: str, name: str) -> bytes:
        return self._delta({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})

    def call_arguments(self, index: int, text: str) -> bytes:
        return self._delta({"tool_calls": [{"index": index, "function": {"arguments": text}}]})

    def end(self, result: Result) -> bytes:
        out = sse(self._chunk([self._choice(None, result.finish_reason)],
                              timings=timings(result.outcome)))
        if self.include_usage:
            out += sse(self._chunk([], usage=self._usage(result)))
        return out + DONE

    def stream_error(self, exc: RequestError) -> bytes:
        return sse(error_object(exc)) + DONE

    def whole(self, result: Result) -> dict[str, Any]:
        text = (self.echo or "") + result.text
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = message(result)
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=result.finish_reason)
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice],
                "usage": self._usage(result), "timings": timings(result.outcome)}


def tool_call(call: ToolCall) -> dict[str, Any]:
    """A finished call as ``message.tool_calls`` holds it (arguments: JSON text)."""
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def message(result: Result) -> dict[str, Any]:
    """The whole chat answer: ``content`` null when it is only tool calls."""
    content: str | None = result.text
    if result.calls and not result.text.strip():
        content = None
    out: dict[str, Any] = {"role": "assistant", "content": content}
    if result.reasoning:
        out["reasoning_content"] = out["reasoning"] = result.reasoning
    if result.calls:
        out["tool_calls"] = [tool_call(c) for c in result.calls]
    return out


def json_error(exc: RequestError) -> web.Response:
    """A refusal outside a generation (models, routes), in OpenAI's shape."""
    return OpenAIDialect(chat=True).error_response(exc)
