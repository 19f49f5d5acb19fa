"""The one HTTP runner: every HTTP dialect (OpenAI, Ollama, /rkllm_chat) runs here.

A dialect parses its body into a :class:`GenerationRequest` and dresses the
output (:class:`Dialect`); :func:`serve` does the rest, the same way for all:

- the request names its model (:meth:`Dialect.model_name`); an unknown name
  is refused, and a model that is not loaded is loaded first while the
  request waits (its lease keeps the model loaded until the answer is done);
- refusals before anything was sent (bad body, unknown model, queue full, a
  bad image found by the vision step before any text) are an HTTP status
  from the error table (:mod:`rkstream.errors`), in the dialect's shape;
- a streamed answer opens on its first piece of text, so a refusal found
  late (a bad image in the vision step) is still an HTTP status; a dialect
  with a keepalive (OpenAI's ``: ping``) opens as soon as the request is
  queued instead, so a long queue wait or prefill does not make a proxy or
  client time out;
- a failure after the stream opened ends it in the dialect's shape;
- a client that goes away cancels its request at once, also during the
  prefill: aiohttp cancels the handler when the connection is lost
  (``handler_cancellation``, in :data:`rkstream.server.app.SERVER_OPTIONS`),
  and leaving :func:`serve` cancels the request. Measured with
  bench/http_disconnect.py, that reaches rkllm_abort in about 1.3 ms, where
  the earlier 50 ms poll of the transport took about 5 ms.
"""

from __future__ import annotations

import abc
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rkstream.core.fields import Fields, kind_of
from rkstream.core.messages import ToolCall
from rkstream.core.params import effective_sampling
from rkstream.core.request import GenerationRequest
from rkstream.engines.base import Job, Outcome, TextSink
from rkstream.errors import SHUTTING_DOWN, RequestError
from rkstream.log import server_log
from rkstream.models.pool import Lease, ModelPool, Resident
from rkstream.scheduler import Ticket
from rkstream.server.http.answer import Answer, Pieces
from rkstream.server.jobs import make_job
from rkstream.server.media import Media
from rkstream.server.output import ParsingSink, answer_parser
from rkstream.server.state import STATE, AppState, ready


@dataclass
class Result:
    """A finished generation, as a dialect reports it."""

    request_id: str
    outcome: Outcome
    text: str  # the whole answer (the streamed pieces joined)
    queued_ms: float
    vision_ms: float
    started_s: float
    first_text_s: float | None
    reasoning: str = ""  # the reasoning, apart from the answer
    calls: list[ToolCall] = field(default_factory=list)  # the tool calls, in order
    reasoning_tokens: int = 0  # about: one per piece of reasoning
    load_ms: float = 0.0  # waiting for the model to load (0: it was loaded)

    @property
    def finish_reason(self) -> str:
        """The outcome's, or ``tool_calls`` for an answer that ended in calls."""
        if self.calls and self.outcome.finish_reason == "stop":
            return "tool_calls"
        return self.outcome.finish_reason


class Dialect(abc.ABC):
    """How one API names its fields and dresses its answers."""

    content_type: str
    prefix = "http"  # request ids: "<prefix>-<hex>"
    api = "http"  # the label of its requests in /metrics (``openai_chat``, ...)
    keepalive_s: float | None = None  # while waiting, once opened; None = never

    def model_name(self, body: Fields, pool: ModelPool) -> str | None:
        """The model the body names (None: the default)."""
        return body.string("model")

    def keep_alive(self, body: Fields) -> float | None:
        """The request's own keep-alive, in seconds (None: the model's)."""
        return None

    def without_model(self, body: Fields, pool: ModelPool) -> web.StreamResponse | None:
        """An answer given before the model is loaded (Ollama's unload), else None."""
        return None

    @abc.abstractmethod
    def parse(self, body: Fields, state: AppState, model: Resident
              ) -> GenerationRequest | web.StreamResponse:
        """The request to ``model``, or an answer that needs no generation (a preload)."""

    @abc.abstractmethod
    def error_body(self, exc: RequestError) -> dict[str, Any]:
        """The JSON body of a refusal."""

    def status_of(self, exc: RequestError) -> int:
        return exc.spec.status

    def opening(self) -> bytes:
        """What a stream starts with, right after the headers."""
        return b""

    def keepalive(self) -> bytes:
        return b""

    @abc.abstractmethod
    def piece(self, text: str) -> bytes:
        """One streamed piece of text."""

    def reasoning(self, text: str) -> bytes:
        """One streamed piece of reasoning; nothing where the API has no field."""
        return b""

    def call_begin(self, index: int, call_id: str, name: str) -> bytes:
        """A tool call starts: its name is known, its arguments follow."""
        return b""

    def call_arguments(self, index: int, text: str) -> bytes:
        """A piece of a tool call's arguments (JSON text)."""
        return b""

    def call_done(self, index: int, call: ToolCall) -> bytes:
        """A tool call is complete (an API that sends whole calls answers here)."""
        return b""

    @abc.abstractmethod
    def end(self, result: Result) -> bytes:
        """The last bytes of a stream that finished (stop or length)."""

    @abc.abstractmethod
    def stream_error(self, exc: RequestError) -> bytes:
        """The last bytes of a stream that failed after it opened."""

    @abc.abstractmethod
    def whole(self, result: Result) -> dict[str, Any]:
        """The body of a non-streamed answer."""

    def error_response(self, exc: RequestError) -> web.Response:
        """A refusal with the table's status and Retry-After, in this dialect's shape."""
        retry = exc.spec.retry_after_s
        headers = {"Retry-After": str(retry)} if retry is not None else None
        return web.json_response(self.error_body(exc), status=self.status_of(exc),
                                 headers=headers)


def usage(outcome: Outcome) -> dict[str, Any]:
    """OpenAI's usage object from the engine's own counts (the demo's /rkllm_chat
    copies it): the prompt's tokens include those the KV cache already held."""
    prompt = outcome.prompt_tokens + outcome.cached_tokens
    return {"prompt_tokens": prompt, "completion_tokens": outcome.output_tokens,
            "total_tokens": prompt + outcome.output_tokens,
            "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens}}


def outcome_error(outcome: Outcome) -> RequestError | None:
    """None for an answer that finished (stop, length), else what went wrong."""
    if outcome.finish_reason in ("stop", "length"):
        return None
    if outcome.finish_reason == "cancelled":  # the client is still here: a shutdown
        return RequestError(outcome.error_code or "shutting_down",
                            outcome.error_message or SHUTTING_DOWN)
    return RequestError(outcome.error_code or "runtime_error",
                        outcome.error_message or "the generation failed")


async def read_body(request: web.Request) -> Fields:
    """The request body as a JSON object.

    Raises:
        RequestError: the body is too large, empty, not JSON, or not an object.
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE].settings.limits.max_message_bytes
        raise RequestError("request_too_large",
                           f"the request body is larger than this server's limit of {limit} "
                           "bytes (limits.max_message_bytes); send smaller images") from None
    if not raw.strip():
        raise RequestError("invalid_encoding", "the request body is empty; send a JSON object")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError("invalid_encoding",
                           f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError("invalid_event",
                           f"the request body must be a JSON object, not {kind_of(value)}")
    return Fields(value)


def submit(state: AppState, model: Resident, req: GenerationRequest, prefix: str,
           api: str = "http") -> tuple[Ticket, Pieces]:
    """Queue ``req`` on ``model``; its images go through the vision step once it
    holds an instance.

    Raises:
        RequestError: max_tokens over the cap, no FIM, queue full, or images
            that can never be taken.
    """
    settings = state.settings
    engine = model.engine
    sampling = effective_sampling(settings.sampling, settings.limits.max_tokens, req.params)
    job = make_job(engine, settings, f"{prefix}-{uuid.uuid4().hex[:12]}", req, sampling,
                   api=api)
    prepare = None
    if req.has_media:
        media = Media(settings.limits.max_images_per_request, lambda: False)
        media.check(req, model.vision is not None)

        async def prepare() -> Job:
            return await media.prepare(job, req, lambda frame: None, model.vision,
                                       engine.info.context_length)

    sink = Pieces()
    parser = answer_parser(engine, req, job)
    target: TextSink = sink
    if parser is not None:
        sink.parsing = ParsingSink(parser, sink, job.request_id)
        target = sink.parsing
    ticket = model.scheduler.submit(job, target, prepare)
    ticket.outcome.add_done_callback(sink.ended)
    return ticket, sink


async def lease_for(request: web.Request, dialect: Dialect, body: Fields) -> Lease:
    """The lease on the model ``body`` names, loading it if needed.

    Raises:
        RequestError: not ready, an unknown model, a failed load.
    """
    pool = ready(request.app[STATE])
    return await pool.acquire(dialect.model_name(body, pool), dialect.keep_alive(body))


async def serve(request: web.Request, dialect: Dialect) -> web.StreamResponse:
    """Parse, run and answer one generation request in ``dialect``'s shape."""
    state = request.app[STATE]
    lease: Lease | None = None
    try:
        body = await read_body(request)
        early = dialect.without_model(body, ready(state))
        if early is not None:
            return early
        lease = await lease_for(request, dialect, body)
        parsed = dialect.parse(body, state, lease.model)
        if not isinstance(parsed, GenerationRequest):
            lease.release()  # answered without a generation (Ollama's load)
            return parsed
        ticket, pieces = submit(state, lease.model, parsed, dialect.prefix, dialect.api)
    except RequestError as exc:
        if lease is not None:
            lease.release()
        return dialect.error_response(exc)
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    ticket.outcome.add_done_callback(lambda _: lease.release())  # the model is kept till then
    try:
        return await _answer(request, dialect, parsed.stream, ticket, pieces, lease.load_ms)
    finally:
        lease.model.scheduler.cancel(ticket)  # a no-op once finished; else the client left


async def _answer(request: web.Request, dialect: Dialect, stream: bool, ticket: Ticket,
                  pieces: Pieces, load_ms: float = 0.0) -> web.StreamResponse:
    started = time.perf_counter()
    answer = Answer(request, dialect)
    if stream:
        pieces.answer = answer  # once open, pieces are written where they arrive
    try:
        if stream and dialect.keepalive_s is not None:
            await answer.write(b"")  # open now: the keepalive may have to flow before any text
        while True:
            await answer.settle()
            if pieces.items:  # the text always comes before the outcome
                data = answer.encode(pieces.take())
                if stream:
                    await answer.write(data)
            elif ticket.outcome.done():
                break
            elif not await pieces.wait(dialect.keepalive_s) and stream:
                await answer.write(dialect.keepalive())
        pieces.answer = None
        result = Result(ticket.job.request_id, ticket.outcome.result(), "".join(answer.text),
                        ticket.queued_ms, ticket.vision_ms, started, answer.first_text_s,
                        "".join(answer.reasoning), answer.calls,
                        pieces.parsing.reasoning_pieces if pieces.parsing else 0, load_ms)
        error = outcome_error(result.outcome)
        if error is not None:
            server_log.warning("%s %s: %s", result.request_id, error.code, error.message)
            if answer.response is None:
                return dialect.error_response(error)
            await answer.write(dialect.stream_error(error))
        elif not stream:
            return web.json_response(dialect.whole(result))
        else:
            await answer.write(dialect.end(result))
        assert answer.response is not None
        await answer.response.write_eof()
        return answer.response
    except ConnectionError:
        # The client left while being written to; nobody reads what is returned.
        return answer.response if answer.response is not None else web.Response(status=499)
    except Exception as exc:
        if answer.response is None:
            raise
        server_log.exception("%s failed while streaming", ticket.job.request_id)
        try:
            await answer.response.write(dialect.stream_error(
                RequestError("internal_error", f"internal error: {type(exc).__name__}: {exc}")))
        except ConnectionError:
            pass
        return answer.response
    finally:
        pieces.answer = None
