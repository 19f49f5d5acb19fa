"""One HTTP answer as it streams: the job's pieces, turned into the dialect's
bytes and written to the response.

While the response is open and no write is under way, a piece is written
where it arrives (:meth:`Answer.arrived`): encoded and handed to the
transport in the same call, with no task switch in between (see
:mod:`rkstream.core.eager`). The rest of a burst (pieces that arrive in the
same turn of the loop) goes out together at the start of the next turn.
Pieces that arrive while a write is under way, or before the response is
open, wait in :class:`Pieces` and go out together in the handler's next
write: fewer, larger writes for a slow client. The
handler (the runner's loop) still writes the opening, the keepalives, the
end and any error, each after the pieces before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol

from aiohttp import web

from rkstream.chat.output import (
    CallArguments,
    CallBegin,
    CallDone,
    Piece,
    ReasoningPiece,
    TextPiece,
)
from rkstream.core.eager import begin
from rkstream.core.messages import ToolCall
from rkstream.server.output import ParsingSink


class Dressing(Protocol):
    """What a dialect writes for each kind of piece (runner.Dialect has these)."""

    content_type: str

    def opening(self) -> bytes: ...

    def piece(self, text: str) -> bytes: ...

    def reasoning(self, text: str) -> bytes: ...

    def call_begin(self, index: int, call_id: str, name: str) -> bytes: ...

    def call_arguments(self, index: int, text: str) -> bytes: ...

    def call_done(self, index: int, call: ToolCall) -> bytes: ...


class Pieces:
    """The job's sink: pieces (text, reasoning, tool calls) wait here until they
    are written, by the answer at once or by the handler."""

    def __init__(self) -> None:
        self.items: list[Piece] = []
        self._waiter: asyncio.Future[None] | None = None
        self.parsing: ParsingSink | None = None
        self.answer: Answer | None = None  # set while it may write pieces at once

    def _arrived(self, piece: Piece) -> None:
        self.items.append(piece)
        if self.answer is not None:
            self.answer.arrived(self)
        else:
            self.wake()

    def on_text(self, text: str) -> None:
        self._arrived(TextPiece(text))

    def on_reasoning(self, text: str) -> None:
        self._arrived(ReasoningPiece(text))

    def on_call_begin(self, index: int, call_id: str, name: str) -> None:
        self._arrived(CallBegin(index, call_id, name))

    def on_call_arguments(self, index: int, text: str) -> None:
        self._arrived(CallArguments(index, text))

    def on_call_done(self, index: int, call: ToolCall, problem: str | None) -> None:
        self._arrived(CallDone(index, call, problem))

    def ended(self, *_: object) -> None:
        """The outcome is known: flush the parser, then wake the handler."""
        if self.parsing is not None:
            self.parsing.finish()
        self.wake()

    def wake(self, *_: object) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take(self) -> list[Piece]:
        """What came since the last take; runs of text joined into one piece, so
        pieces that piled up during a write go out as one: fewer, larger writes."""
        out: list[Piece] = []
        for item in self.items:
            if isinstance(item, TextPiece) and out and isinstance(out[-1], TextPiece):
                out[-1] = TextPiece(out[-1].text + item.text)
            elif isinstance(item, ReasoningPiece) and out and isinstance(out[-1],
                                                                         ReasoningPiece):
                out[-1] = ReasoningPiece(out[-1].text + item.text)
            else:
                out.append(item)
        self.items.clear()
        return out

    async def wait(self, timeout_s: float | None) -> bool:
        """Wait for pieces or the outcome; False when ``timeout_s`` passed first."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            done, _ = await asyncio.wait({self._waiter}, timeout=timeout_s)
            return bool(done)
        finally:
            self._waiter.cancel()
            self._waiter = None


class Answer:
    """What has been said so far, and the response it is written to."""

    def __init__(self, request: web.Request, dialect: Dressing) -> None:
        self._request = request
        self._dialect = dialect
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCall] = []
        self.first_text_s: float | None = None
        self.response: web.StreamResponse | None = None
        self._pending: Awaitable[None] | None = None  # a write that suspended
        self._writing = False  # the handler is inside write()
        self._burst = False  # a piece was written in this turn of the loop
        self.failed: BaseException | None = None  # a write at once failed

    def encode(self, pieces: list[Piece]) -> bytes:
        """The dialect's bytes for ``pieces``, noting what they say."""
        if pieces and self.first_text_s is None:
            self.first_text_s = time.perf_counter()
        dialect = self._dialect
        out = []
        for item in pieces:
            if isinstance(item, TextPiece):
                self.text.append(item.text)
                out.append(dialect.piece(item.text))
            elif isinstance(item, ReasoningPiece):
                self.reasoning.append(item.text)
                out.append(dialect.reasoning(item.text))
            elif isinstance(item, CallBegin):
                out.append(dialect.call_begin(item.index, item.call_id, item.name))
            elif isinstance(item, CallArguments):
                out.append(dialect.call_arguments(item.index, item.text))
            else:
                self.calls.append(item.call)
                out.append(dialect.call_done(item.index, item.call))
        return b"".join(out)

    def arrived(self, pieces: Pieces) -> None:
        """A piece arrived: write it now if the response is open and idle, else
        leave it for the handler (woken if it has to finish a write)."""
        if self._burst:
            return  # written at the end of this turn, merged
        if self.response is None or self._writing or self._pending is not None \
                or self.failed is not None:
            pieces.wake()
            return
        data = self.encode(pieces.take())
        if not data:
            return
        try:
            self._pending = begin(self.response.write(data))
        except (ConnectionError, RuntimeError) as exc:
            self.failed = exc  # raised in the handler, which owns the answer's end
        if self._pending is not None or self.failed is not None:
            pieces.wake()
        else:
            self._burst = True
            asyncio.get_running_loop().call_soon(self._end_burst, pieces)

    def _end_burst(self, pieces: Pieces) -> None:
        self._burst = False
        if pieces.items and pieces.answer is self:
            self.arrived(pieces)
        elif pieces.items:
            pieces.wake()  # the handler has taken over: it writes them

    async def settle(self) -> None:
        """Finish a write that began at once and suspended; raise what failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if self.failed is not None:
            raise self.failed

    async def write(self, data: bytes) -> None:
        """The handler's write, after everything written before: opens the
        response on the first (only then is the status known to be 200)."""
        await self.settle()
        self._writing = True
        try:
            if self.response is None:
                response = web.StreamResponse(headers={
                    "Content-Type": self._dialect.content_type, "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no"})  # proxies must not hold back the pieces
                await response.prepare(self._request)
                self.response = response
                data = self._dialect.opening() + data
            if data:
                await self.response.write(data)
        finally:
            self._writing = False
