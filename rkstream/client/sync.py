"""The synchronous client: :class:`Client` runs an :class:`AsyncClient` on its own
event loop in a background thread, so plain code, ROS callbacks and OpenCV loops
can use it from any thread without an event loop of their own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from rkstream.client.aio import AsyncClient
from rkstream.client.camera import Camera
from rkstream.client.connection import DEFAULT_URL
from rkstream.client.errors import ConnectionLostError, RkstreamClientError
from rkstream.client.events import (
    Answer,
    Done,
    Event,
    FrameAnswer,
    Messages,
    ModelInfo,
    SessionInfo,
    TextDelta,
)
from rkstream.client.stream import Stream

T = TypeVar("T")
_END = object()
_POLL_S = 0.25  # how often a waiting call checks that close() has not stopped the loop
_SETTLE_S = 1.0  # how long close() lets open calls end by themselves, then cancels them


class Client:
    """A client of one rkstream server for synchronous code.

    Same behaviour as :class:`AsyncClient` (reconnects, typed errors, several requests
    at once); every method may be called from any thread except the client's own
    (its callbacks). ``with Client(url) as client:`` connects and closes.

    Args:
        url: ``host:port``, ``http://host:port`` or ``ws://host:port/ws``.
        api_key: the server's key (default: ``RKSTREAM_API_KEY`` from the environment).
        conversation: a conversation key for a load balancer, sent as
            ``?conversation=`` on every (re)connection (see :class:`AsyncClient`);
            ValueError if it is not 1 to 128 letters, digits, ``-``, ``.``, ``_``, ``~``.
        connect: connect now (raises :class:`AuthError` or :class:`ConnectionLostError`).
        **options: :class:`AsyncClient`'s (``reconnect``, ``timeout_s``, ...).
    """

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None,
                 conversation: str | None = None, connect: bool = True,
                 **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="rkstream-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncClient:
            return AsyncClient(url, api_key=api_key, conversation=conversation, **options)

        try:
            self.aio = self._run(make())
            """The :class:`AsyncClient` underneath (use it only on :attr:`loop`)."""
        except BaseException:  # a bad option or key (ValueError): no thread left behind
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            raise
        if connect:
            try:
                self.connect()
            except BaseException:
                self.close()
                raise

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The client's own event loop (running in its thread)."""
        return self._loop

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("a Client method was called on the client's own thread; "
                               "use client.aio there (it is an AsyncClient)")
        if self._closed:
            coro.close()
            raise ConnectionLostError("closed", "the client was closed")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # close() stopped the loop since the check above
            coro.close()
            raise ConnectionLostError("closed", "the client was closed") from None
        try:
            return self._wait(future, timeout_s)
        except BaseException:
            future.cancel()  # KeyboardInterrupt, a timeout: stop what the loop does for us
            raise

    def _wait(self, future: concurrent.futures.Future[T], timeout_s: float | None) -> T:
        """The call's result; waits in slices so that a call the loop can no longer end
        (close() stopped it) raises ``closed`` instead of blocking forever."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            try:
                return future.result(max(0.0, left))
            except concurrent.futures.CancelledError:
                if self._closed:  # close() cancelled what had not ended by itself
                    raise ConnectionLostError("closed", "the client was closed") from None
                raise
            except concurrent.futures.TimeoutError:
                if future.done():  # the call's own TimeoutError
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise RkstreamClientError("timeout",
                                              f"no answer within {timeout_s} s") from None
                if self._closed and not self._thread.is_alive():
                    raise ConnectionLostError("closed", "the client was closed") from None

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> SessionInfo:
        """Connect (done by the constructor unless ``connect=False``)."""
        return self._run(self.aio.connect())

    def close(self) -> None:
        """Close the connection and stop the client's thread. Safe to call twice.

        Calls still open in other threads (also those waiting for a reconnect) end
        with :class:`ConnectionLostError` code ``closed``."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        except Exception:  # noqa: BLE001 - closing must not fail the caller
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self) -> None:
        """Close the client, then let the calls still on the loop end before it stops
        (they raise ``closed``): a thread waiting on one would otherwise wait forever."""
        await self.aio.close()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            _, left = await asyncio.wait(others, timeout=_SETTLE_S)
            for task in left:
                task.cancel()
            if left:
                await asyncio.wait(left, timeout=_SETTLE_S)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self.aio.connected

    @property
    def session(self) -> SessionInfo | None:
        """The facts of the last ``session.created``."""
        return self.aio.session

    @property
    def model(self) -> ModelInfo | None:
        return self.aio.model

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        return self.aio.models

    @property
    def limits(self) -> Mapping[str, Any]:
        return self.aio.limits

    @property
    def conversation(self) -> str | None:
        """The conversation key sent on every (re)connection."""
        return self.aio.conversation

    @property
    def server_id(self) -> str | None:
        """Which server the socket reached (see :attr:`AsyncClient.server_id`)."""
        return self.aio.server_id

    def new_conversation(self, key: str | None = None) -> str:
        """As :meth:`AsyncClient.new_conversation`: a fresh key (or ``key``) on a new
        socket; returns the key."""
        return self._run(self.aio.new_conversation(key))

    # -- requests --------------------------------------------------------------------------
    def stream(self, messages: Messages, **options: Any) -> SyncStream:
        """Start a response; iterate the returned :class:`SyncStream` for its events.
        Arguments as :meth:`AsyncClient.stream`."""
        if self._closed:
            raise ConnectionLostError("closed", "the client was closed")
        return SyncStream(self, self.aio.stream(messages, **options))

    def complete(self, messages: Messages, *, timeout_s: float | None = None,
                 **options: Any) -> Answer:
        """The whole answer; raises its typed error (or ``timeout`` after ``timeout_s``,
        which also cancels the request)."""
        return self._run(self.aio.complete(messages, **options), timeout_s)

    def update_session(self, **change: Any) -> Mapping[str, Any]:
        """As :meth:`AsyncClient.update_session`."""
        return self._run(self.aio.update_session(**change))

    def upload_image(self, image: Any, format: str | None = None, **options: Any) -> str:
        """As :meth:`AsyncClient.upload_image`; returns the ``image_id``."""
        return self._run(self.aio.upload_image(image, format, **options))

    def ping(self) -> float:
        """Round trip in seconds."""
        return self._run(self.aio.ping())

    def camera(self, stream: str = "cam0", **options: Any) -> SyncCamera:
        """A camera helper (see :class:`SyncCamera`); options as :meth:`AsyncClient.camera`."""
        async def make() -> Camera:
            return self.aio.camera(stream, **options)

        return SyncCamera(self, self._run(make()))


class SyncStream:
    """The events of one request, for synchronous code; the request is sent at once.

    Leaving a ``for`` loop early (``break``, an exception) or the ``with`` block
    cancels the request. Iterating raises the request's typed error as
    :class:`Stream` does. ``next(timeout_s)`` takes one event at a time.
    """

    def __init__(self, client: Client, stream: Stream) -> None:
        self._client = client
        self._stream = stream
        self._events: queue.Queue[Any] = queue.Queue()
        self._ended = False
        asyncio.run_coroutine_threadsafe(self._pump(), client.loop)

    async def _pump(self) -> None:
        try:
            async for event in self._stream:
                self._events.put(event)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._events.put(exc)
        self._events.put(_END)

    @property
    def request_id(self) -> str:
        return self._stream.request_id

    @property
    def text(self) -> str:
        """The text so far."""
        return self._stream.text

    @property
    def done(self) -> Done | None:
        return self._stream.done

    @property
    def server_id(self) -> str | None:
        """The server the request was sent to (None until it was sent)."""
        return self._stream.server_id

    @property
    def queue_position(self) -> int | None:
        """Its place in the queue while it waits (see :attr:`Stream.queue_position`)."""
        return self._stream.queue_position

    @property
    def started(self) -> bool:
        """True once it has a model instance (see :attr:`Stream.started`)."""
        return self._stream.started

    def next(self, timeout_s: float | None = None) -> Event:
        """The next event; raises StopIteration after the Done, ``queue.Empty`` when
        ``timeout_s`` passes first, or the request's typed error."""
        if self._ended:
            raise StopIteration
        item = self._events.get(timeout=timeout_s)
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        event: Event = item
        return event

    def __iter__(self) -> Iterator[Event]:
        try:
            while True:
                try:
                    yield self.next()
                except StopIteration:
                    return
        finally:
            if not self._ended:
                self.cancel()

    def texts(self) -> Iterator[str]:
        """Only the text, piece by piece (leaving early cancels, as for the events)."""
        for event in self:
            if isinstance(event, TextDelta):
                yield event.text

    def cancel(self) -> None:
        """Ask the server to stop; the events end with a Done of status ``cancelled``."""
        try:
            asyncio.run_coroutine_threadsafe(self._stream.cancel(), self._client.loop)
        except RuntimeError:
            pass  # the client is closed

    def result(self, timeout_s: float | None = None) -> Answer:
        """Read to the end; the whole :class:`Answer`."""
        while not self._ended:
            try:
                self.next(timeout_s)
            except StopIteration:
                break
        done = self._stream.done
        assert done is not None
        return Answer(done.text if done.text is not None else self._stream.text,
                      done.reasoning if done.reasoning is not None else self._stream.reasoning,
                      done.tool_calls or tuple(self._stream.tool_calls), done)

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._ended and not self._stream.finished:
            self.cancel()


class SyncCamera:
    """A camera stream for synchronous code (see :class:`Camera`).

    ``send(frame)`` may be called from any thread and never blocks: it keeps only
    the newest frame for the sender on the client's thread. ``ask()`` blocks until
    the answer; ``submit()`` returns a future at once, for loops that must not wait.
    """

    def __init__(self, client: Client, camera: Camera) -> None:
        self._client = client
        self.camera = camera

    @property
    def stream(self) -> str:
        return self.camera.stream

    @property
    def given(self) -> int:
        return self.camera.given

    @property
    def sent(self) -> int:
        return self.camera.sent

    @property
    def dropped(self) -> int:
        return self.camera.dropped

    def send(self, frame: Any, *, color: str | None = None, ts_ns: int | None = None) -> int:
        """Hand over the newest frame (bytes or a numpy image); returns its seq."""
        return self.camera.send(frame, color=color, ts_ns=ts_ns)

    def ask(self, question: str, *, timeout_s: float | None = None,
            **options: Any) -> FrameAnswer:
        """Ask about the newest frame; the answer and the frame it used."""
        return self._client._run(self.camera.ask(question, **options), timeout_s)

    def submit(self, question: str, **options: Any) -> concurrent.futures.Future[FrameAnswer]:
        """Like :meth:`ask`, without waiting: a future of the answer."""
        return asyncio.run_coroutine_threadsafe(self.camera.ask(question, **options),
                                                self._client.loop)
