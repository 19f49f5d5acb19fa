"""One request's events as an async iterator: :class:`Stream`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from rkstream.client.errors import RkstreamClientError
from rkstream.client.events import (
    Answer,
    Created,
    Done,
    Event,
    Queued,
    ReasoningDelta,
    Started,
    TextDelta,
    ToolCall,
    parse_event,
)

if TYPE_CHECKING:
    from rkstream.client.aio import AsyncClient


class Stream:
    """The events of one request, in order, ending with its :class:`Done`.

    The request is sent when iteration starts (or on ``async with``). Leaving the
    iterator early (``break``, an exception, the task being cancelled) or leaving
    the ``async with`` block cancels the request on the server. Iterating raises the
    typed error when the request failed (or was ended by the server, e.g. at its
    shutdown), with the :class:`Done` at ``error.done``, and
    :class:`ConnectionLostError` when the socket closed first: a generation is never
    sent again on its own.

    Attributes:
        request_id: the id on the socket (the client picks it).
        server_id: the server it was sent to (``session.created.server.id`` of the
            socket), once sent.
        queue_position: the requests waiting ahead of it in its model's queue (0 =
            running now or next; from :class:`Created` and :class:`Queued`), None
            before the server said.
        started: True once it has a model instance (:class:`Started`, or its first
            output from a server that does not send Started).
        text, reasoning, tool_calls: what came so far.
        done: the :class:`Done`, once it came.
    """

    def __init__(self, client: AsyncClient, request_id: str, event: dict[str, Any]) -> None:
        self.request_id = request_id
        self.server_id: str | None = None
        self.queue_position: int | None = None
        self.started = False
        self.text = ""
        self.reasoning = ""
        self.tool_calls: list[ToolCall] = []
        self.done: Done | None = None
        self._client = client
        self._event = event
        self._queue: asyncio.Queue[Event | RkstreamClientError] = asyncio.Queue()
        self._started = False
        self._finished = False
        self._cancelled = asyncio.Event()  # cancel() came: a request not sent yet never is
        self._error: RkstreamClientError | None = None

    @property
    def finished(self) -> bool:
        """True once the request has ended (its Done came, or the socket closed)."""
        return self._finished

    async def start(self) -> None:
        """Send the request now (iteration does it by itself)."""
        if self._started:
            return
        self._started = True
        try:
            sent = await self._client._start(self, self._event)
        except RkstreamClientError:
            self._finished = True
            raise
        except BaseException:  # cancelled (a timeout) while sending: the server may have it
            if self.request_id in self._client._requests:
                self._client._abandon(self)
            else:
                self._end_unsent()
            raise
        if not sent:
            self._end_unsent()

    async def cancel(self) -> None:
        """Ask the server to stop; the stream then ends with status ``cancelled``.

        Before the request was sent (e.g. while a reconnect is under way) it is not
        sent at all, and the stream ends at once."""
        self._cancelled.set()
        if self._started and not self._finished:
            await self._client._send_cancel(self.request_id)

    def _end_unsent(self) -> None:
        """End a request that never reached the server with a local cancelled Done."""
        done = parse_event({"type": "response.done", "request_id": self.request_id,
                            "status": "cancelled", "finish_reason": "cancelled"},
                           self.server_id)
        assert isinstance(done, Done)
        self._push(done)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        await self.start()
        try:
            while True:
                if self._finished and self._queue.empty():  # read to the end already
                    if self._error is not None:
                        raise self._error
                    return
                item = await self._queue.get()
                if isinstance(item, RkstreamClientError):
                    raise item
                yield item
                if isinstance(item, Done):
                    return
        finally:
            if not self._finished:  # left early: the server must stop generating
                self._client._abandon(self)

    async def texts(self) -> AsyncIterator[str]:
        """Only the text, piece by piece (leaving early cancels, as for the events)."""
        async for event in self:
            if isinstance(event, TextDelta):
                yield event.text

    async def __aenter__(self) -> Stream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._finished:
            self._client._abandon(self)

    async def result(self) -> Answer:
        """Read to the end and return the whole :class:`Answer`.

        A request cancelled by :meth:`cancel` returns what came, with status
        ``cancelled``; a failed one raises its typed error.
        """
        async for _ in self:
            pass
        assert self.done is not None
        done = self.done
        return Answer(done.text if done.text is not None else self.text,
                      done.reasoning if done.reasoning is not None else self.reasoning,
                      done.tool_calls or tuple(self.tool_calls), done)

    # -- fed by the client's reader ------------------------------------------------------
    def _push(self, event: Event) -> None:
        if self._finished:
            return
        if isinstance(event, (Created, Queued)):
            self.queue_position = event.queue_position
        elif isinstance(event, (Started, TextDelta, ReasoningDelta, ToolCall)):
            self.started = True
        if isinstance(event, TextDelta):
            self.text += event.text
        elif isinstance(event, ReasoningDelta):
            self.reasoning += event.text
        elif isinstance(event, ToolCall):
            self.tool_calls.append(event)
        elif isinstance(event, Done):
            self._finished = True
            self.done = event
            if event.error is not None:
                event.error.done = event
                self._error = event.error
                self._queue.put_nowait(event.error)
                return
        self._queue.put_nowait(event)

    def _fail(self, error: RkstreamClientError) -> None:
        if not self._finished:
            self._finished = True
            self._error = error
            self._queue.put_nowait(error)
