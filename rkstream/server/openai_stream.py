"""Run one OpenAI request on the scheduler: a whole JSON answer or an SSE stream.

Both endpoints (/v1/chat/completions and /v1/completions) share this; a
:class:`Shape` dresses the output as chat chunks or text-completion chunks.

Streaming: the headers and the first chunk go out as soon as the request is
accepted, and ``: ping`` comments keep proxies from timing out while the
request waits in the queue or its prefill runs. A refusal at submit time
(queue full, no vision encoder) is still an HTTP error; a failure after the
stream has started is sent as ``data: {"error": ...}`` then ``data: [DONE]``.
A client that disconnects cancels the request (generation.generate watches
the connection, also during prefill).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, cast

from aiohttp import web

from ..engines.base import Outcome, SamplingSettings
from ..errors import ProtocolError
from ..log import server_log
from .generation import Generation, generate, sampling_for
from .openai_errors import APIError, from_code
from .openai_schema import GenerationRequest
from .sse import ClientGone, SSEStream
from .state import AppState

PING_INTERVAL_S = 15.0

Items = AsyncGenerator[str | Generation, None]


class Shape:
    """The ids and the chunk layout of one chat or text completion."""

    def __init__(self, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.prefix = "chatcmpl" if chat else "cmpl"
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

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

    def opening(self, echo: str | None) -> dict[str, Any] | None:
        """The first chunk: the role (chat), or the echoed prompt (text)."""
        if self.chat:
            choice = self._choice(None, None)
            choice["delta"] = {"role": "assistant", "content": ""}
            return self._chunk([choice])
        return self.piece(echo) if echo else None

    def piece(self, text: str) -> dict[str, Any]:
        """One chunk per piece of text, as the engine produced it."""
        return self._chunk([self._choice(text, None)])

    def final(self, outcome: Outcome) -> dict[str, Any]:
        """The chunk with the finish_reason (and llama.cpp-style timings)."""
        return self._chunk([self._choice(None, outcome.finish_reason)],
                           timings=timings(outcome))

    def usage_chunk(self, outcome: Outcome) -> dict[str, Any]:
        """The extra chunk of ``stream_options.include_usage``: no choices, the usage."""
        return self._chunk([], usage=usage(outcome))

    def whole(self, text: str, outcome: Outcome) -> dict[str, Any]:
        """The non-streaming answer."""
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=outcome.finish_reason)
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice],
                "usage": usage(outcome), "timings": timings(outcome)}


def usage(outcome: Outcome) -> dict[str, int]:
    """OpenAI's usage object, from the runtime's own token counts."""
    return {"prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.output_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.output_tokens}


def timings(outcome: Outcome) -> dict[str, float]:
    """llama.cpp server's ``timings`` object (non-standard; clients ignore it)."""
    seconds = outcome.predicted_ms / 1000.0
    return {"prompt_n": outcome.prompt_tokens, "prompt_ms": round(outcome.prompt_ms, 3),
            "predicted_n": outcome.output_tokens,
            "predicted_ms": round(outcome.predicted_ms, 3),
            "predicted_per_second": round(outcome.output_tokens / seconds, 3)
            if seconds > 0 else 0.0}


def outcome_error(outcome: Outcome) -> APIError | None:
    """None for a finished answer, else the error that explains the outcome."""
    if outcome.finish_reason in ("stop", "length"):
        return None
    if outcome.finish_reason == "cancelled":  # the client is still here: a shutdown
        return from_code(outcome.error_code or "shutting_down",
                         outcome.error_message or "the server is shutting down; retry later")
    return from_code(outcome.error_code or "runtime_error",
                     outcome.error_message or "the generation failed")


def sampling_of(state: AppState, request: GenerationRequest) -> SamplingSettings:
    """Server defaults under the request's params; 400 above the max_tokens cap."""
    try:
        return sampling_for(state, request.params)
    except ProtocolError as exc:  # its message says "params.max_tokens"
        raise APIError(400, exc.code, exc.message.replace("params.", ""),
                       param="max_tokens") from None


async def answer(request: web.Request, state: AppState, req: GenerationRequest,
                 shape: Shape) -> web.StreamResponse:
    """Run ``req`` and answer it, streamed or whole.

    Raises:
        APIError, RequestError: refused before anything was sent.
    """
    sampling = sampling_of(state, req)
    # generate() is an async generator function; aclose() cancels its request.
    items = cast(Items, generate(request, state, req.messages, sampling, prefix=shape.prefix,
                                 fim=req.fim))
    if req.stream:
        return await _stream(request, items, req, shape)
    async with aclosing(items):
        pieces = [] if req.echo is None else [req.echo]
        gen: Generation | None = None
        async for item in items:
            if isinstance(item, str):
                pieces.append(item)
            else:
                gen = item
    if gen is None or gen.outcome is None:  # the client went away; nobody reads this
        return web.Response(status=499, reason="Client Closed Request")
    error = outcome_error(gen.outcome)
    if error is not None:
        server_log.warning("%s %s: %s", shape.id, error.code, error.message)
        raise error
    return web.json_response(shape.whole("".join(pieces), gen.outcome))


async def _next(items: Items) -> str | Generation | None:
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return None


async def _stream(request: web.Request, items: Items,
                  req: GenerationRequest, shape: Shape) -> web.StreamResponse:
    first = asyncio.ensure_future(_next(items))
    sse = SSEStream()
    try:
        # One loop turn runs generate() up to its first wait. A refusal at submit
        # raises there, so it can still be an HTTP status instead of a 200 stream.
        await asyncio.sleep(0)
        if first.done():
            first.result()
        await sse.open(request)
        opening = shape.opening(req.echo)
        if opening is not None:
            await sse.send(opening)
        while not (await asyncio.wait({first}, timeout=PING_INTERVAL_S))[0]:
            await sse.comment("ping")
        item = first.result()
        while item is not None:  # None: the client went away
            if isinstance(item, str):
                await sse.send(shape.piece(item))
            else:
                await _finish(sse, shape, item)
                break
            item = await _next(items)
    except ClientGone:
        pass  # closing generate() below cancels the request
    except Exception as exc:
        if not sse.response.prepared:
            raise
        server_log.exception("%s failed while streaming", shape.id)
        await _send_error(sse, APIError(500, "internal_error", f"internal error: {exc}"))
    finally:
        if not first.done():
            first.cancel()
            await asyncio.wait({first})
        await items.aclose()
    return sse.response


async def _finish(sse: SSEStream, shape: Shape, gen: Generation) -> None:
    assert gen.outcome is not None
    error = outcome_error(gen.outcome)
    if error is not None:
        server_log.warning("%s %s: %s", shape.id, error.code, error.message)
        await _send_error(sse, error)
        return
    await sse.send(shape.final(gen.outcome))
    if shape.include_usage:
        await sse.send(shape.usage_chunk(gen.outcome))
    await sse.done()


async def _send_error(sse: SSEStream, error: APIError) -> None:
    """An error after the 200 went out: an ``error`` event (the openai SDK raises
    APIError on it), then ``[DONE]``."""
    try:
        await sse.send(error.body())
        await sse.done()
    except ClientGone:
        pass
