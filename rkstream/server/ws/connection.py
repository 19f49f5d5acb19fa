"""What one WebSocket connection does with protocol v1 events.

The connection knows no socket: it takes decoded messages through
:meth:`Connection.receive` and writes server events to an :class:`Outbox`.
The WebSocket handler (ws.py) only moves bytes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, replace
from typing import Any

from rkstream import __version__
from rkstream.config import Settings
from rkstream.core.params import Params, SamplingSettings, effective_sampling
from rkstream.engines.base import Job, Outcome, TextSink
from rkstream.errors import SHUTTING_DOWN, InflightLimitError, ProtocolError, RequestError
from rkstream.log import ws_log
from rkstream.models.pool import Lease, ModelPool
from rkstream.models.table import ModelSpec
from rkstream.protocol import server_events as ev
from rkstream.protocol.codec import decode_binary, decode_text
from rkstream.protocol.events import (
    ClientEvent,
    FrameAppend,
    ImageUpload,
    Ping,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
)
from rkstream.protocol.parse import parse_event
from rkstream.scheduler import Ticket
from rkstream.server.jobs import make_job
from rkstream.server.media import Media, ahead_policy
from rkstream.server.output import ParsingSink, answer_parser
from rkstream.server.ws.outbox import Outbox
from rkstream.server.ws.request import RequestStream, failed_done


def _event_id(event_id: str | None) -> dict[str, Any]:
    return {"event_id": event_id} if event_id is not None else {}


SHUTDOWN_REASON = ("shutting_down", SHUTTING_DOWN)
# A 1001's close handshake gets at least this long: a half-dead peer never answers it.
CLOSE_S = 1.0
STOPPING = ("the server is stopping and takes no new requests; send it again on a new "
            "connection (behind a load balancer, that reaches another server)")


class Connection:
    """Protocol state of one client: its session defaults and open requests."""

    def __init__(self, settings: Settings, pool: ModelPool, outbox: Outbox,
                 on_frame: Callable[[bool], None] | None = None, *, server_id: str = "",
                 conversation: str | None = None) -> None:
        self.settings = settings
        self.server_id = server_id  # told in session.created, for the balancer's user
        self.conversation = conversation  # the affinity key the upgrade carried
        # Set by the socket's handler: whether new requests are taken (not while the
        # server stops), and how to close the socket with 1001.
        self.accepting: Callable[[], bool] = lambda: True
        self.closer: Callable[[], Awaitable[object]] | None = None
        self.pool = pool
        self.outbox = outbox
        self.model_name: str | None = None  # the session's model; None: the default
        self.media = Media(settings.limits.max_images_per_request, self._generating, on_frame,
                           ahead_policy(settings.vision))
        self.session_id = "sess_" + uuid.uuid4().hex[:16]
        self.instructions: str | None = None
        self.params = Params()
        self.requests: dict[str, RequestStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()  # the server stops: uploads stop waiting for a model
        self.shutting_down = False

    def _session_model(self) -> ModelSpec:
        return self.pool.table.find(self.model_name)

    def _generating(self) -> bool:
        """Whether a generation runs on the NPU (any RKLLM model: the encoder shares
        its memory bus, or its core) or the session's model generates (CPU engine)."""
        if self.pool.gate.holders:
            return True
        resident = self.pool.resident(self.model_name)
        return resident is not None and resident.scheduler.running > 0

    def model_view(self, spec: ModelSpec) -> dict[str, Any]:
        """What a client is told about one model: its engine's info when loaded."""
        resident = self.pool.resident(spec.name)
        if resident is None:
            return {"id": spec.name, "engine": spec.engine, "loaded": False,
                    "vision": spec.encoder_file is not None, "default": spec.default}
        info = replace(resident.engine.info, id=spec.name,
                       vision=resident.vision is not None).as_dict()
        return {**info, "loaded": True, "default": spec.default}

    # -- lifecycle -------------------------------------------------------------
    def open(self) -> None:
        limits = self.settings.limits
        created = ev.session_created(
            self.session_id, __version__, self.model_view(self.pool.table.default),
            {"max_message_bytes": limits.max_message_bytes,
             "max_images_per_request": limits.max_images_per_request,
             "max_queue": limits.max_queue,
             "max_inflight_per_connection": limits.max_inflight_per_connection,
             "max_tokens": limits.max_tokens,
             "max_image_pixels": self.settings.vision.max_image_pixels,
             "max_connections_per_address": limits.max_connections_per_address,
             "request_timeout_s": limits.request_timeout_s,
             "idle_timeout_s": limits.idle_timeout_s},
            [self.model_view(spec) for spec in self.pool.table])
        created["vision"] = self.media.encoding.policy.as_dict()  # what frames cost, told
        created["server"]["id"] = self.server_id
        created["conversation"] = self.conversation
        self.outbox.put(created)

    @property
    def idle(self) -> bool:
        """No request or upload of this connection is open."""
        return not self.requests and not self._tasks

    async def go_away(self, until: float) -> None:
        """Close the socket with 1001 once what is queued for it was written: the
        server stops, the client reconnects elsewhere.

        Bounded, by the loop's clock: the outbox has until ``until`` (a client
        that reads slowly gets its last response.done, one that never reads is
        not waited for past it), the close handshake at least CLOSE_S more.
        """
        loop = asyncio.get_running_loop()
        await self.outbox.drain(until - loop.time())
        if self.closer is None:
            return
        try:
            await asyncio.wait_for(self.closer(), max(until - loop.time(), CLOSE_S))
        except asyncio.TimeoutError:
            pass  # aiohttp closed the transport when its close was cancelled

    async def shutdown(self) -> None:
        """Server shutdown: end every request with its response.done, then send them."""
        self.shutting_down = True
        await self.close()
        await self.outbox.drain(1.0)

    async def close(self) -> None:
        """Cancel every open request (guarantee 4) and wait until each has ended."""
        reason = SHUTDOWN_REASON if self.shutting_down else None
        for stream in list(self.requests.values()):
            stream.cancel(reason)
        if self.shutting_down:
            self._stopping.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.media.close()

    # -- input -------------------------------------------------------------------
    def receive(self, data: bytes | str) -> None:
        """Handle one WebSocket message; never raises for bad input."""
        try:
            binary = isinstance(data, bytes)
            raw = decode_binary(data) if isinstance(data, bytes) else decode_text(data)
            event = parse_event(raw, binary=binary)
        except ProtocolError as exc:
            self._refuse(exc)
            return
        try:
            self._dispatch(event)
        except RequestError as exc:
            rid = exc.request_id if isinstance(exc, ProtocolError) else None
            self.outbox.put(ev.error(ev.error_body_of(exc), rid))

    def _refuse(self, exc: ProtocolError) -> None:
        rid = exc.request_id
        self.outbox.put(ev.error(ev.error_body_of(exc), rid))
        # A response.create with a readable id still gets its one response.done,
        # unless the id belongs to a request that is already open.
        if rid is not None and rid not in self.requests and exc.code != "duplicate_request_id":
            self.outbox.put(failed_done(rid, exc))

    def _dispatch(self, event: ClientEvent) -> None:
        if isinstance(event, ResponseCreate):
            self._create(event)
        elif isinstance(event, ResponseCancel):
            self._cancel(event)
        elif isinstance(event, SessionUpdate):
            self._update(event)
        elif isinstance(event, Ping):
            self.outbox.put(ev.pong())
        elif isinstance(event, FrameAppend):
            try:
                spec = self._session_model()
                resident = self.pool.resident(spec.name)
                self.media.append_frame(event, spec.encoder_file is not None,
                                        resident.vision if resident is not None else None)
            except RequestError as exc:
                self.outbox.put(ev.error(ev.error_body_of(exc) | _event_id(event.event_id)))
        elif isinstance(event, ImageUpload):
            self._spawn(self._upload(event))

    async def _upload(self, event: ImageUpload) -> None:
        try:
            # The session's model encodes it; loaded first if need be.
            lease = await self._acquire_for_upload()
            if lease is None:
                raise RequestError("shutting_down", SHUTTING_DOWN)
            try:
                self.outbox.put(await self.media.upload(event, lease.model.vision))
            finally:
                lease.release()
        except RequestError as exc:
            self.outbox.put(ev.error(ev.error_body_of(exc) | _event_id(event.event_id)))

    async def _acquire_for_upload(self) -> Lease | None:
        """The session model's lease; None when the server stopped while it waited
        (a model load may take long). An encoding under way is not cut short."""
        acquiring = asyncio.ensure_future(self.pool.acquire(self.model_name))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((acquiring, stopping), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if acquiring.done() and not acquiring.cancelled() and not acquiring.exception():
                acquiring.result().release()
            acquiring.cancel()
            raise
        finally:
            stopping.cancel()
        if acquiring.done():
            return acquiring.result()
        acquiring.cancel()  # the pool gives its place back (Lease released in acquire)
        return None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _sampling(self, params: Params, event_id: str | None,
                  request_id: str | None = None) -> SamplingSettings:
        return effective_sampling(self.settings.sampling, self.settings.limits.max_tokens,
                                  self.params, params, path="params.max_tokens",
                                  event_id=event_id, request_id=request_id)

    def _create(self, event: ResponseCreate) -> None:
        rid = event.request_id
        if rid in self.requests:
            raise ProtocolError(
                "duplicate_request_id",
                f"request_id {rid!r} is already open on this connection; choose a new id",
                param="request_id", request_id=rid, event_id=event.event_id)
        try:
            if not self.accepting():
                raise RequestError("shutting_down", STOPPING)
            request = event.request
            spec = self._model_of(event)
            self.media.check(request, spec.encoder_file is not None)
            limit = self.settings.limits.max_inflight_per_connection
            if len(self.requests) >= limit:
                raise InflightLimitError(limit)
            self._sampling(request.params, event.event_id, rid)
            stream = RequestStream(self.outbox, event, spec.name)
            lease = self.pool.lease_now(spec.name)
            if lease is not None:
                self._submit(stream, event, lease)
        except RequestError as exc:
            if isinstance(exc, ProtocolError):
                self.outbox.put(ev.error(ev.error_body_of(exc), rid))
            self.outbox.put(failed_done(rid, exc))
            return
        self.requests[rid] = stream
        ticket = stream.ticket
        position = ticket.queue_position if ticket is not None else 0
        self.outbox.put(ev.response_created(rid, position))
        if ticket is not None:
            stream.follow(ticket, position)
            self._spawn(self._finish(stream, ticket))
        else:  # its model loads first
            stream.loading = self._spawn(self._load_then_run(stream, event))

    def _model_of(self, event: ResponseCreate) -> ModelSpec:
        """The request's model: its own, else the session's, else the default.

        Raises:
            ProtocolError: ``model_not_found`` (an error event and a failed
                response.done, as for any bad field).
        """
        try:
            return self.pool.table.find(event.request.model or self.model_name)
        except RequestError as exc:
            raise ProtocolError(exc.code, exc.message, param="model",
                                request_id=event.request_id, event_id=event.event_id) from None

    def _submit(self, stream: RequestStream, event: ResponseCreate, lease: Lease) -> None:
        """Queue the request on its leased model; the lease ends with the request."""
        model, request = lease.model, event.request
        try:
            job = make_job(model.engine, self.settings, stream.request_id, request,
                           self._sampling(request.params, event.event_id, stream.request_id),
                           self.instructions, api="ws")
            sink: TextSink = stream
            parser = answer_parser(model.engine, request, job)
            if parser is not None:
                stream.parsing = sink = ParsingSink(parser, stream, stream.request_id)
            prepare = None
            if request.has_media:
                def prepare() -> Awaitable[Job]:
                    return self.media.prepare(job, request, stream.use_frame, model.vision,
                                              model.engine.info.context_length)
            ticket = model.scheduler.submit(job, sink, prepare)
        except BaseException:
            lease.release()
            raise
        ticket.outcome.add_done_callback(lambda _: lease.release())
        if ticket.started_s is None and request.has_media:
            # Queued: on_request may encode its frames while it waits.
            self.media.waiting(request, model.vision)
            ticket.outcome.add_done_callback(lambda _: self.media.done_waiting(request))
        stream.ticket, stream.scheduler = ticket, model.scheduler

    async def _load_then_run(self, stream: RequestStream, event: ResponseCreate) -> None:
        rid = stream.request_id

        def waiting(position: int) -> None:
            self.outbox.put(ev.model_loading(rid, stream.model, position))

        try:
            lease = await self.pool.acquire(stream.model, on_wait=waiting)
            stream.load_ms = lease.load_ms
            self.outbox.put(ev.model_loaded(rid, stream.model, lease.load_ms))
            self._submit(stream, event, lease)
            assert stream.ticket is not None
            stream.follow(stream.ticket, 0)  # created said 0; now its place in the model's queue
        except asyncio.CancelledError:
            self.requests.pop(rid, None)
            outcome = Outcome("cancelled")
            if stream.cancel_reason is not None:
                outcome.error_code, outcome.error_message = stream.cancel_reason
            self.outbox.put(stream.done_event(outcome))
            return
        except RequestError as exc:
            self.requests.pop(rid, None)
            ws_log.warning("request %s failed: %s", rid, exc.message)
            self.outbox.put(failed_done(rid, exc))
            return
        await self._finish(stream, stream.ticket)

    async def _finish(self, stream: RequestStream, ticket: Ticket) -> None:
        outcome = await asyncio.shield(ticket.outcome)
        if stream.parsing is not None:
            stream.parsing.finish()  # all text came before the outcome: flush what is held
        if outcome.error_code is not None and outcome.finish_reason == "error":
            ws_log.warning("request %s failed: %s", stream.request_id, outcome.error_message)
        self.requests.pop(stream.request_id, None)
        self.outbox.put(stream.done_event(outcome))

    def _cancel(self, event: ResponseCancel) -> None:
        stream = self.requests.get(event.request_id)
        if stream is None:
            raise ProtocolError(
                "unknown_request",
                f"no open request with request_id {event.request_id!r} on this connection"
                " (it may have finished already)", param="request_id",
                request_id=event.request_id, event_id=event.event_id)
        stream.cancel(None)

    def _update(self, event: SessionUpdate) -> None:
        # Validate the merged result (max_tokens cap) and the model before keeping them.
        merged = event.params.over(self.params)
        self._sampling(merged, event.event_id)
        if event.model is not None:
            try:
                spec = self.pool.table.find(event.model)
            except RequestError as exc:
                raise ProtocolError(exc.code, exc.message, param="session.model",
                                    event_id=event.event_id) from None
            self.model_name = spec.name
        self.params = merged
        if event.instructions is not None or event.clear_instructions:
            self.instructions = event.instructions
        self.outbox.put(ev.session_updated(self.session_view()))

    def session_view(self) -> dict[str, Any]:
        effective = asdict(self._sampling(self.params, None))
        effective["stop"] = list(effective["stop"])
        return {"id": self.session_id, "instructions": self.instructions,
                "model": self._session_model().name, "params": effective}
