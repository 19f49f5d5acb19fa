"""A waiting request hears its place in the queue move (response.queued) and its
start (response.started), in order, over a real socket with the fake engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from rkstream.config import LimitSettings
from rkstream.server.app import make_app

from fakes import FakeEngine
from helpers import MS, WSClient, create, fake_settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Server = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def server(aiohttp_client: ClientFactory) -> Server:
    async def make(delay_ms: float) -> TestClient[Any, Any]:  # one instance
        settings = fake_settings(limits=replace(LimitSettings(), max_queue=8))
        return await aiohttp_client(make_app(settings, lambda s: FakeEngine(s, delay_ms * MS)))
    return make


async def connect(client: TestClient[Any, Any]) -> WSClient:
    conn = WSClient(await client.ws_connect("/ws"))
    assert (await conn.recv())["type"] == "session.created"
    return conn


def lifecycle(conn: WSClient, rid: str) -> list[tuple[str, int | None]]:
    """The request's events up to the first delta, each with its queue position;
    checks the order the protocol guarantees (created, queued…, started, then the
    rest, one done at the end)."""
    events = [e for e in conn.events if e.get("request_id") == rid]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.done"
    assert kinds.count("response.done") == 1 and kinds.count("response.started") <= 1
    head: list[tuple[str, int | None]] = []
    for event in events[:-1]:
        if event["type"] not in ("response.created", "response.queued", "response.started"):
            break
        head.append((event["type"].split(".")[1], event.get("queue_position")))
    later = {e["type"] for e in events[len(head):]}
    assert not later & {"response.created", "response.queued", "response.started"}
    positions = [p for _, p in head if p is not None]
    assert positions == sorted(set(positions), reverse=True)  # only down, never repeated
    return head


async def test_a_waiting_request_counts_down_then_starts(server: Server) -> None:
    conn = await connect(await server(delay_ms=10))
    for rid in "abcd":
        await conn.send(create(rid, "w " * 5))
    done = await conn.until_done(set("abcd"))
    assert {d["status"] for d in done.values()} == {"completed"}
    assert lifecycle(conn, "a") == [("created", 0), ("started", None)]
    assert lifecycle(conn, "b") == [("created", 0), ("started", None)]  # 0: next
    assert lifecycle(conn, "c") == [("created", 1), ("queued", 0), ("started", None)]
    assert lifecycle(conn, "d") == [("created", 2), ("queued", 1), ("queued", 0),
                                    ("started", None)]
    queued = next(e for e in conn.events if e["type"] == "response.queued")
    assert set(queued) == {"type", "request_id", "queue_position"}
    started = next(e for e in conn.events if e["type"] == "response.started")
    assert set(started) == {"type", "request_id"}


async def test_a_request_cancelled_while_queued_gets_no_start(server: Server) -> None:
    conn = await connect(await server(delay_ms=20))
    for rid in "abc":
        await conn.send(create(rid, "w " * 500))
    await conn.recv_type("response.output_text.delta")  # a runs; b and c wait
    await conn.send({"type": "response.cancel", "request_id": "b"})
    assert (await conn.until_done({"b"}))["b"]["status"] == "cancelled"
    while not any(e["type"] == "response.queued" for e in conn.events):
        await conn.recv()
    moved = next(e for e in conn.events if e["type"] == "response.queued")
    assert (moved["request_id"], moved["queue_position"]) == ("c", 0)
    await conn.send({"type": "response.cancel", "request_id": "a"})
    await conn.send({"type": "response.cancel", "request_id": "c"})
    await conn.until_done({"a", "c"})
    assert lifecycle(conn, "b") == [("created", 0)]
    assert lifecycle(conn, "c")[:2] == [("created", 1), ("queued", 0)]


async def test_positions_move_across_connections(server: Server) -> None:
    client = await server(delay_ms=20)
    first, second = await connect(client), await connect(client)
    await first.send(create("a", "w " * 500))
    await first.recv_type("response.started")
    await second.send(create("b", "w " * 3))
    assert (await second.recv_type("response.created"))["queue_position"] == 0
    await first.send(create("c", "x " * 3))
    assert (await first.recv_type("response.created"))["queue_position"] == 1
    await first.send({"type": "response.cancel", "request_id": "a"})  # b starts, c is next
    started = await second.recv_type("response.started")
    assert started["request_id"] == "b"
    await second.until_done({"b"})
    await first.until_done({"a", "c"})
    assert lifecycle(first, "c") == [("created", 1), ("queued", 0), ("started", None)]
    assert not any(e.get("request_id") == "c" for e in second.events)
