"""The one writer of a WebSocket: ordered, bounded, and straight to the socket.

Producers (the reader, generations) never wait. While the socket keeps up,
an event is encoded and written to the transport right where it is put: no
task switch, no timer (a send into a socket whose buffer has room completes
without suspending). What else is put in the same turn of the loop (the rest
of a burst of tokens that arrived together) is merged and written once, at
the start of the next turn: the first token of a burst goes out at once, the
rest in one message. Only when a send suspends (the client is not reading
and the transport's buffer is full) does the writer task take over: it
finishes that send under ``slow_timeout_s``, and what comes meanwhile
queues behind it, text deltas of one request merged into one message, so a
burst costs one send. A client that stops reading is dropped: when a send
has not completed within ``slow_timeout_s`` or more than ``max_bytes`` are
waiting, :meth:`Outbox.run` returns ``False`` and the caller closes the
connection and cancels its requests. The model never waits for a client.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from rkstream.core.eager import begin
from rkstream.protocol.codec import Encoding, encode
from rkstream.protocol.server_events import DeltaKind, delta_event


@dataclass
class _Delta:
    request_id: str
    next_seq: Callable[[], int]
    parts: list[str] = field(default_factory=list)
    size: int = 0
    kind: DeltaKind = "text"


@dataclass
class _Sequenced:
    """An event of a request that takes its ``seq`` when sent, after the deltas before it."""

    event: dict[str, Any]
    next_seq: Callable[[], int]


Sender = Callable[[bytes | str], Coroutine[Any, Any, None]]


class Outbox:
    """Ordered, non-blocking sends to one client.

    Args:
        send: coroutine that writes one encoded message to the socket.
        encoding: "msgpack" or "json".
        max_bytes: waiting bytes above which the client counts as too slow.
        slow_timeout_s: how long one send may take before the client is dropped.
    """

    def __init__(self, send: Sender, encoding: Encoding, *, max_bytes: int,
                 slow_timeout_s: float) -> None:
        self._send = send
        self._encoding = encoding
        self._max_bytes = max_bytes
        self._slow_timeout_s = slow_timeout_s
        self._items: collections.deque[dict[str, Any] | _Delta | _Sequenced] = (
            collections.deque())
        self._bytes = 0
        self._wakeup = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closed = False
        self._pending: Awaitable[None] | None = None  # a send that suspended
        self._failed = False
        self._burst = False  # something was written in this turn of the loop
        self.overflowed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, event: dict[str, Any]) -> None:
        """Queue a whole event; ignored once the outbox is closed."""
        if self._closed:
            return
        self._items.append(event)
        self._bytes += 64
        self._empty.clear()
        self._pump()

    def put_sequenced(self, event: dict[str, Any], next_seq: Callable[[], int]) -> None:
        """Queue a request's event that is numbered with its deltas (a tool call)."""
        if self._closed:
            return
        self._items.append(_Sequenced(event, next_seq))
        self._bytes += 64
        self._empty.clear()
        self._pump()

    def put_delta(self, request_id: str, text: str, next_seq: Callable[[], int],
                  kind: DeltaKind = "text") -> None:
        """Send generated text (or reasoning), or queue it, merged with the
        previous delta of the same kind while that is unsent."""
        if self._closed:
            return
        if not self._items and not self._burst and self._pending is None:
            # The usual case: nothing before it, so straight out, no bookkeeping.
            self._write(encode(delta_event(kind, request_id, next_seq(), text), self._encoding))
            self._after_write()
            return
        last = self._items[-1] if self._items else None
        if isinstance(last, _Delta) and last.request_id == request_id and last.kind == kind:
            last.parts.append(text)
        else:
            last = _Delta(request_id, next_seq, kind=kind)
            last.parts.append(text)
            self._items.append(last)
            self._empty.clear()
        self._bytes += len(text)
        if self._bytes > self._max_bytes:
            self.overflowed = True
            self.close()
            return
        self._pump()

    def close(self) -> None:
        """Stop accepting events; :meth:`run` returns after what is queued."""
        self._closed = True
        self._wakeup.set()

    def _encode(self, item: dict[str, Any] | _Delta | _Sequenced) -> bytes | str:
        if isinstance(item, _Delta):
            self._bytes -= sum(len(p) for p in item.parts)
            event = delta_event(item.kind, item.request_id, item.next_seq(),
                                "".join(item.parts))
        elif isinstance(item, _Sequenced):
            self._bytes -= 64
            event = item.event | {"seq": item.next_seq()}
        else:
            self._bytes -= 64
            event = item
        return encode(event, self._encoding)

    def _pump(self) -> None:
        """Write what is queued, in order, while each send completes at once;
        leave a send that suspends to the writer task, and the rest behind it."""
        if self._burst:
            return  # written at the end of this turn, merged
        wrote = False
        while self._items and self._pending is None and not self._failed:
            self._write(self._encode(self._items.popleft()))
            wrote = True
        if wrote:
            self._after_write()
        elif not self._items and self._pending is None:
            self._empty.set()

    def _write(self, data: bytes | str) -> None:
        """Hand ``data`` to the socket now; a send that suspends is left pending."""
        try:
            self._pending = begin(self._send(data))
        except (ConnectionError, RuntimeError):
            self._failed = self._closed = True

    def _after_write(self) -> None:
        if self._pending is not None or self._failed:
            self._empty.clear()
            self._wakeup.set()  # the writer task finishes it, under the slow-client timer
            return
        if not self._items:
            self._empty.set()
        self._burst = True  # the rest of this turn's events go out merged, next turn
        asyncio.get_running_loop().call_soon(self._end_burst)

    def _end_burst(self) -> None:
        self._burst = False
        self._pump()

    async def run(self) -> bool:
        """Finish the sends that could not complete at once, until closed; False
        if the client was too slow or a send failed.

        Cancel-safe: cancelling it drops whatever is still queued.
        """
        while True:
            if self._pending is not None:
                try:
                    await asyncio.wait_for(self._pending, self._slow_timeout_s)
                except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                    self._failed = self._closed = True
                self._pending = None
                if not self._failed:
                    self._pump()
            if self._failed or self.overflowed:
                self._closed = True
                return False
            if self._pending is not None:
                continue
            if self._closed and not self._items:
                return True
            self._wakeup.clear()
            await self._wakeup.wait()

    async def drain(self, timeout_s: float) -> None:
        """Wait until everything queued so far was sent, or ``timeout_s`` passed
        (or the client was dropped: nothing more will be sent)."""
        if self._empty.is_set() or self._failed:
            return
        try:
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
