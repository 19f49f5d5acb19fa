"""A malformed event from the server (not msgpack, not JSON, a field of the wrong
type) is logged and skipped: the client's reader and its reconnects go on, and a
request whose end could not be read fails instead of waiting forever."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from aiohttp import WSMsgType, web

from rkstream.client import AsyncClient, RkstreamClientError
from rkstream.client.connection import SUBPROTOCOL

from helpers import MS, eventually


def pack(event: Any) -> bytes:
    return bytes(msgpack.packb(event, use_bin_type=True))


def garbling_app(sockets: list[web.WebSocketResponse]) -> web.Application:
    """A /ws that answers a ping after two malformed events, and a request with
    a delta and a Done that cannot be read."""
    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(protocols=(SUBPROTOCOL,))
        await socket.prepare(request)
        sockets.append(socket)
        await socket.send_bytes(pack({"type": "session.created", "session_id": "s",
                                      "protocol": "rkstream.v1"}))
        async for message in socket:
            if message.type != WSMsgType.BINARY:
                continue
            event = msgpack.unpackb(message.data, raw=False)
            if event["type"] == "ping":
                await socket.send_bytes(b"\xc1")  # a byte msgpack never uses
                await socket.send_str("{not json")
                await socket.send_bytes(pack({"type": "pong", "event_id": event["event_id"]}))
            elif event["type"] == "response.create":
                rid = event["request_id"]
                await socket.send_bytes(pack({"type": "response.output_text.delta",
                                              "request_id": rid, "seq": "x", "delta": "a"}))
                await socket.send_bytes(pack({"type": "response.done", "request_id": rid,
                                              "status": "completed", "usage": "none"}))
        return socket

    app = web.Application()
    app.router.add_get("/ws", ws)
    return app


async def test_malformed_events_are_skipped_and_the_client_goes_on(
        aiohttp_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    sockets: list[web.WebSocketResponse] = []
    server = await aiohttp_server(garbling_app(sockets))
    async with AsyncClient(str(server.make_url("/ws")), timeout_s=3000 * MS,
                           min_delay_s=20 * MS, max_delay_s=100 * MS) as client:
        await asyncio.wait_for(client.ping(), 2000 * MS)  # read after the garbage
        assert caplog.text.count("skipped a malformed event") >= 2
        with pytest.raises(RkstreamClientError) as unread:
            await asyncio.wait_for(client.complete("hi"), 2000 * MS)
        assert unread.value.code == "invalid_event"
        await sockets[0].close()  # the reader still reconnects after a drop
        await eventually(lambda: client.generation == 2 and client.connected)
        assert client.generation == 2
        await asyncio.wait_for(client.ping(), 2000 * MS)
