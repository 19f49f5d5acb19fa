"""The drain's stop with slow or silent peers: a socket's last response.done is
written before its 1001, and nothing holds the stop past its deadline (a peer
that never answers the close, an upload waiting for a model load)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any, cast

import pytest

from rkstream.config import ServerSettings, Settings
from rkstream.protocol.events import ImageUpload
from rkstream.server.ops.drain import stop
from rkstream.server.state import AppState
from rkstream.server.ws import connection
from rkstream.server.ws.connection import Connection
from rkstream.server.ws.outbox import Outbox

from helpers import MS, eventually, fake_settings


def settings(shutdown_timeout_s: float) -> Settings:
    return fake_settings(server=replace(ServerSettings(), id="board-1",
                                        shutdown_timeout_s=shutdown_timeout_s))


class Peer:
    """A client's socket: the first send suspends until ``reads`` is set (a slow
    reader), and sends after the close fail as aiohttp's do."""

    def __init__(self, slow: bool = False, answers_close: bool = True) -> None:
        self.sent: list[dict[str, Any]] = []
        self.reads = asyncio.Event()
        if not slow:
            self.reads.set()
        self.answers_close = answers_close
        self.closed_after: int | None = None  # how many events were sent before the 1001

    async def send(self, data: bytes | str) -> None:
        if self.closed_after is not None:
            raise ConnectionResetError("Cannot write to closing transport")
        self.sent.append(json.loads(data))
        await self.reads.wait()

    async def close(self) -> None:
        self.closed_after = len(self.sent)
        if not self.answers_close:
            await asyncio.sleep(3600)  # a half-dead peer: its close frame never comes

    def types(self) -> list[str]:
        return [e["type"] for e in self.sent]


class OpenRequest:
    """A request open on a socket, as the stop sees it."""

    def __init__(self) -> None:
        self.cancelled: list[object] = []

    def cancel(self, reason: object) -> None:
        self.cancelled.append(reason)


def connect(state: AppState, peer: Peer, pool: Any = None) -> tuple[Connection, Outbox]:
    outbox = Outbox(peer.send, "json", max_bytes=1 << 20, slow_timeout_s=5)
    conn = Connection(state.settings, cast(Any, pool), outbox)
    conn.closer = peer.close
    state.connections.add(conn)
    return conn, outbox


async def test_a_slow_clients_last_response_done_is_written_before_the_1001() -> None:
    state = AppState(settings(2000 * MS))
    peer = Peer(slow=True)
    conn, outbox = connect(state, peer)
    writer = asyncio.create_task(outbox.run())
    outbox.put({"type": "response.output_text.delta", "delta": "x" * 100})
    outbox.put({"type": "response.done", "request_id": "r1"})  # behind the pending send
    assert conn.idle  # no request open: the drain may send it away
    stopping = asyncio.create_task(stop(state))
    await asyncio.sleep(100 * MS)  # the stop has looked at the socket several times
    assert peer.closed_after is None  # not closed while its response.done waits
    peer.reads.set()  # the client catches up
    await asyncio.wait_for(stopping, 2000 * MS)
    assert peer.types() == ["response.output_text.delta", "response.done"]
    assert peer.closed_after == 2
    outbox.close()
    assert await writer is True


async def test_a_client_that_never_reads_is_closed_at_the_deadline() -> None:
    state = AppState(settings(300 * MS))
    peer = Peer(slow=True)
    conn, outbox = connect(state, peer)  # held, as its handler holds it
    writer = asyncio.create_task(outbox.run())
    outbox.put({"type": "response.output_text.delta", "delta": "x"})
    outbox.put({"type": "response.done", "request_id": "r1"})
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(stop(state), 3000 * MS)
    took = asyncio.get_running_loop().time() - started
    assert peer.closed_after == 1 and 250 * MS <= took < 1500 * MS
    assert conn.idle
    writer.cancel()


async def test_a_peer_that_never_answers_the_close_holds_neither_the_others_nor_the_stop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "CLOSE_S", 50 * MS)
    state = AppState(settings(2000 * MS))
    silent, busy = Peer(answers_close=False), Peer()
    # Held here as its handler holds it: state.connections keeps only weak references.
    kept, _ = connect(state, silent)
    conn, _ = connect(state, busy)
    conn.requests["r1"] = cast(Any, OpenRequest())  # a request still open on this one
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.create_task(stop(state))
    await eventually(lambda: silent.closed_after is not None)
    await asyncio.sleep(100 * MS)
    del conn.requests["r1"]  # it ends: its socket goes at once
    await eventually(lambda: busy.closed_after is not None)
    # Well before the deadline: the silent peer's close did not hold it.
    assert loop.time() - started < 1000 * MS
    await asyncio.wait_for(stopping, 5000 * MS)
    assert loop.time() - started < 2000 * MS + 1000 * MS
    assert not conn.requests  # it ended by itself, nothing was cancelled
    assert kept.idle


class LoadingPool:
    """A pool whose model load never ends (until cancelled)."""

    def __init__(self) -> None:
        self.waiting = 0

    async def acquire(self, name: str | None) -> Any:
        self.waiting += 1
        try:
            await asyncio.sleep(3600)
        finally:
            self.waiting -= 1


async def test_an_upload_waiting_for_a_model_load_does_not_hold_the_shutdown() -> None:
    state = AppState(settings(300 * MS))
    peer, pool = Peer(), LoadingPool()
    conn, outbox = connect(state, peer, pool)
    writer = asyncio.create_task(outbox.run())
    conn.receive(json.dumps({"type": "ping"}))  # a live connection
    upload = conn._spawn(conn._upload(ImageUpload(b"jpeg", event_id="e1")))
    await eventually(lambda: pool.waiting == 1)
    await asyncio.wait_for(conn.shutdown(), 1000 * MS)
    assert upload.done() and pool.waiting == 0
    error = next(e for e in peer.sent if e["type"] == "error")
    assert error["error"]["code"] == "shutting_down" and error["error"]["event_id"] == "e1"
    outbox.close()
    await writer
