"""The bounded writer: ordering, delta merging, slow-client detection."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from rkstream.server.ws.outbox import Outbox

from helpers import MS


class Socket:
    def __init__(self, stall: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.stall = stall
        self.gate = asyncio.Event()

    async def send(self, data: bytes | str) -> None:
        if self.stall:
            await asyncio.sleep(3600)
        assert isinstance(data, bytes)
        self.sent.append(msgpack.unpackb(data))
        await self.gate.wait()


def counter() -> Any:
    state = {"n": 0}

    def next_seq() -> int:
        state["n"] += 1
        return state["n"] - 1
    return next_seq


async def test_deltas_merge_behind_a_busy_send_and_keep_order() -> None:
    sock = Socket()
    box = Outbox(sock.send, "msgpack", max_bytes=1 << 20, slow_timeout_s=5)
    task = asyncio.create_task(box.run())
    seq_a, seq_b = counter(), counter()
    box.put({"type": "first"})
    await asyncio.sleep(0)  # the writer is now inside send() of "first"
    box.put_delta("a", "he", seq_a)
    box.put_delta("a", "llo", seq_a)
    box.put_delta("b", "x", seq_b)
    box.put_delta("a", "!", seq_a)
    box.put({"type": "response.done", "request_id": "a"})
    sock.gate.set()
    box.close()
    assert await task is True
    assert [(e["type"], e.get("request_id"), e.get("seq"), e.get("delta")) for e in sock.sent] == [
        ("first", None, None, None),
        ("response.output_text.delta", "a", 0, "hello"),
        ("response.output_text.delta", "b", 0, "x"),
        ("response.output_text.delta", "a", 1, "!"),
        ("response.done", "a", None, None),
    ]


async def test_stalled_send_times_out() -> None:
    box = Outbox(Socket(stall=True).send, "msgpack", max_bytes=1 << 20,
                 slow_timeout_s=50 * MS)
    task = asyncio.create_task(box.run())
    box.put({"type": "x"})
    assert await asyncio.wait_for(task, 2000 * MS) is False


async def test_too_much_waiting_overflows_without_blocking_the_producer() -> None:
    sock = Socket()
    box = Outbox(sock.send, "msgpack", max_bytes=10_000, slow_timeout_s=5)
    task = asyncio.create_task(box.run())
    box.put({"type": "first"})
    await asyncio.sleep(0)
    for _ in range(100):
        box.put_delta("a", "y" * 200, counter())  # returns at once, never awaits
    assert box.overflowed and box.closed
    sock.gate.set()
    assert await task is False


async def test_while_the_socket_keeps_up_each_event_is_written_where_it_is_put() -> None:
    sent: list[dict[str, Any]] = []

    async def send(data: bytes | str) -> None:  # a socket with room: never suspends
        assert isinstance(data, bytes)
        sent.append(msgpack.unpackb(data))

    box = Outbox(send, "msgpack", max_bytes=1 << 20, slow_timeout_s=5)
    seq = counter()
    box.put_delta("a", "he", seq)
    assert [e["delta"] for e in sent] == ["he"]  # before any loop iteration
    box.put_delta("a", "ll", seq)  # the rest of the burst: merged, sent next turn
    box.put_delta("a", "o", seq)
    box.put({"type": "response.done", "request_id": "a"})
    assert len(sent) == 1
    await asyncio.sleep(0)
    assert [(e["type"], e.get("seq"), e.get("delta")) for e in sent] == [
        ("response.output_text.delta", 0, "he"), ("response.output_text.delta", 1, "llo"),
        ("response.done", None, None)]
    await asyncio.sleep(0)
    box.put_delta("a", "!", seq)  # a turn later: at once again
    assert sent[-1]["delta"] == "!"
    task = asyncio.create_task(box.run())
    box.close()
    assert await task is True
    await box.drain(1)


async def test_a_send_that_fails_at_once_drops_the_client() -> None:
    async def send(data: bytes | str) -> None:
        raise ConnectionResetError("the peer went away")

    box = Outbox(send, "msgpack", max_bytes=1 << 20, slow_timeout_s=5)
    task = asyncio.create_task(box.run())
    box.put({"type": "x"})  # does not raise into the producer
    assert box.closed
    assert await asyncio.wait_for(task, 1000 * MS) is False
