"""An HTTP answer writes each piece where it arrives while the response keeps up,
and merges what arrives behind a write that has to wait."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import web

from rkstream.core.messages import ToolCall
from rkstream.server.http.answer import Answer, Pieces


class Dialect:
    content_type = "text/plain"

    def opening(self) -> bytes:
        return b"<"

    def piece(self, text: str) -> bytes:
        return f"[{text}]".encode()

    def reasoning(self, text: str) -> bytes:
        return f"({text})".encode()

    def call_begin(self, index: int, call_id: str, name: str) -> bytes:
        return b""

    def call_arguments(self, index: int, text: str) -> bytes:
        return b""

    def call_done(self, index: int, call: ToolCall) -> bytes:
        return f"{{{call.name}}}".encode()


class Response:
    """Records writes; ``stall`` makes the next write wait until ``gate`` is set."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.stall = False
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def write(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.written.append(data)
        if self.stall:
            await self.gate.wait()


def opened(response: Response) -> tuple[Answer, Pieces]:
    answer = Answer(cast(web.Request, None), Dialect())
    answer.response = cast(Any, response)  # as if the handler had opened it
    pieces = Pieces()
    pieces.answer = answer
    return answer, pieces


async def test_pieces_are_written_where_they_arrive() -> None:
    response = Response()
    answer, pieces = opened(response)
    pieces.on_text("a")
    assert response.written == [b"[a]"]  # no loop iteration needed
    pieces.on_reasoning("r")  # the rest of the burst: one write, next turn
    pieces.on_call_done(0, ToolCall("c1", "f", "{}"), None)
    assert response.written == [b"[a]"]
    await asyncio.sleep(0)
    assert response.written == [b"[a]", b"(r){f}"]
    await asyncio.sleep(0)
    pieces.on_text("b")  # a turn later: at once again
    assert response.written[-1] == b"[b]"
    assert answer.text == ["a", "b"] and answer.reasoning == ["r"] and len(answer.calls) == 1
    assert answer.first_text_s is not None and pieces.items == []


async def test_what_arrives_behind_a_waiting_write_goes_out_merged() -> None:
    response = Response()
    answer, pieces = opened(response)
    response.stall = True
    pieces.on_text("a")  # this write has to wait
    response.stall = False
    for word in ("b", "c", "d"):
        pieces.on_text(word)
    assert response.written == [b"[a]"] and [p for p in pieces.items] != []
    response.gate.set()
    await answer.settle()
    await answer.write(answer.encode(pieces.take()))  # the handler's next write
    assert response.written == [b"[a]", b"[bcd]"]
    assert "".join(answer.text) == "abcd"


async def test_a_failed_write_reaches_the_handler_not_the_engine() -> None:
    response = Response()
    answer, pieces = opened(response)
    response.fail = ConnectionResetError("the client left")
    pieces.on_text("a")  # does not raise into the engine's delivery
    with pytest.raises(ConnectionResetError):
        await answer.settle()


async def test_before_the_response_opens_pieces_wait_for_the_handler() -> None:
    answer = Answer(cast(web.Request, None), Dialect())
    pieces = Pieces()
    pieces.answer = answer
    waiting = asyncio.ensure_future(pieces.wait(None))
    await asyncio.sleep(0)
    pieces.on_text("a")
    assert await waiting is True and len(pieces.items) == 1
