"""Limits from issue 6: connections per address, request timeout, idle timeout,
all announced in session.created."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from rkstream.config import LimitSettings, Settings
from rkstream.server.app import make_app

from fakes import FakeEngine
from helpers import MS, WSClient, create


def app_with(delay_ms: float = 1, **limits: Any) -> Any:
    settings = replace(Settings(), limits=replace(LimitSettings(), **limits))
    return make_app(settings, lambda s: FakeEngine(s, delay_ms * MS))


async def test_limits_are_announced(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with(request_timeout_s=30, idle_timeout_s=60))
    conn = WSClient(await client.ws_connect("/ws"))
    limits = (await conn.recv())["limits"]
    assert limits["request_timeout_s"] == 30 and limits["idle_timeout_s"] == 60
    assert limits["max_connections_per_address"] == 16
    assert limits["max_image_pixels"] == Settings().vision.max_image_pixels


async def test_connections_per_address(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with(max_connections_per_address=2))
    first = await client.ws_connect("/ws")
    second = await client.ws_connect("/ws")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 429
    await first.close()
    for _ in range(100):  # the slot frees once the server has seen the close
        try:
            third = await client.ws_connect("/ws")
            break
        except aiohttp.WSServerHandshakeError:
            await asyncio.sleep(10 * MS)
    await third.close()
    await second.close()


async def test_request_timeout(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with(delay_ms=20, request_timeout_s=0.2))
    conn = WSClient(await client.ws_connect("/ws"))
    await conn.recv()
    await conn.send(create("slow", "w " * 500))
    done = (await conn.until_done({"slow"}))["slow"]
    assert done["status"] == "failed" and done["error"]["code"] == "request_timeout"
    assert conn.text("slow")  # what was generated before the stop was delivered
    await conn.send(create("next", "ok"))
    assert (await conn.until_done({"next"}))["next"]["status"] == "completed"


async def test_idle_connection_is_closed(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with(idle_timeout_s=0.2))
    ws = await client.ws_connect("/ws")
    await ws.receive()  # session.created
    msg = await ws.receive(timeout=5000 * MS)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1000 and msg.extra == "idle timeout"


async def test_open_request_is_not_idle(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with(delay_ms=30, idle_timeout_s=0.1))
    conn = WSClient(await client.ws_connect("/ws"))
    await conn.recv()
    await conn.send(create("long", "w " * 15))  # ~0.45 s, well past the idle limit
    done = (await conn.until_done({"long"}))["long"]
    assert done["status"] == "completed"
