"""limits.max_message_bytes at its default (8 MiB): an oversize message closes the
socket with 1009, and the client reads that close instead of losing the connection.

The small-limit case is test_ws_protocol.py's test_oversize_message_closes_with_1009;
here the message is too large to sit in the socket buffers, so the client is still
writing it when the server refuses it.
"""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from dataclasses import replace
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestClient

from rkstream.config import LimitSettings, Settings
from rkstream.server.app import make_app
from rkstream.server.ws import handler

from fakes import FakeEngine
from helpers import MS, WSClient, create

LIMIT = Settings().limits.max_message_bytes
OPCODE_BINARY, OPCODE_CLOSE = 0x2, 0x8


async def start(aiohttp_client: Any, **limits: Any) -> TestClient[Any, Any]:
    settings = replace(Settings(), limits=replace(LimitSettings(), **limits))
    client: TestClient[Any, Any] = await aiohttp_client(
        make_app(settings, lambda s: FakeEngine(s, 1 * MS)))
    return client


async def still_serving(client: TestClient[Any, Any]) -> None:
    """A new client gets session.created and an answer."""
    conn = WSClient(await client.ws_connect("/ws"))
    assert (await conn.recv())["type"] == "session.created"
    await conn.send(create("a", "fine"))
    assert (await conn.until_done({"a"}))["a"]["status"] == "completed"
    await conn.ws.close()


class RawSocket:
    """A WebSocket client on a bare TCP stream, to send a frame piece by piece."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, client: TestClient[Any, Any]) -> RawSocket:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5000 * MS)
        assert head.startswith(b"HTTP/1.1 101"), head
        raw = cls(reader, writer)
        opcode, payload = await raw.frame()
        assert opcode == OPCODE_BINARY
        assert msgpack.unpackb(payload)["type"] == "session.created"
        return raw

    async def frame(self, timeout: float = 5000 * MS) -> tuple[int, bytes]:
        """The next frame from the server (unmasked, unfragmented): opcode, payload."""
        return await asyncio.wait_for(self._frame(), timeout)

    async def _frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(size)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), 5000 * MS)

    async def start_binary(self, size: int) -> None:
        """Send the header of a binary frame of ``size`` bytes; the payload follows."""
        # Masked as a client must; a zero mask leaves the payload as sent.
        await self.send(struct.pack("!BBQ", 0x80 | OPCODE_BINARY, 0x80 | 127, size)
                        + b"\0\0\0\0")

    async def until_eof(self, timeout: float = 5000 * MS) -> None:
        """Read until the server closes; a reset (not a FIN) raises."""
        await asyncio.wait_for(self._until_eof(), timeout)

    async def _until_eof(self) -> None:
        while await self.reader.read(1 << 16):
            pass

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def close_code(payload: bytes) -> int:
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


async def test_oversize_message_at_default_limit_closes_with_1009(aiohttp_client: Any
                                                                  ) -> None:
    client = await start(aiohttp_client)
    # The client's own limit is for what it receives; raise it so only the server's counts.
    ws = await client.ws_connect("/ws", max_msg_size=4 * LIMIT)
    conn = WSClient(ws)
    assert (await conn.recv())["type"] == "session.created"
    # Without lingering the server reset the socket mid-write: "Connection lost" here.
    await ws.send_bytes(msgpack.packb({"type": "image.upload",
                                       "data": b"x" * (LIMIT + 1024)}))
    msg = await ws.receive(timeout=5000 * MS)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009, msg
    assert ws.close_code == 1009
    await still_serving(client)


async def test_oversize_frame_is_refused_from_its_header(aiohttp_client: Any,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # Long enough for any machine to send the rest: only the client's EOF ends it.
    monkeypatch.setattr(handler, "OVERSIZE_LINGER_S", 30000 * MS)
    client = await start(aiohttp_client)
    raw = await RawSocket.open(client)
    try:
        # 1 GiB announced, 64 KiB sent: the refusal cannot have waited for the message.
        await raw.start_binary(1 << 30)
        chunk = bytes(1 << 16)
        await raw.send(chunk)
        opcode, payload = await raw.frame()
        assert opcode == OPCODE_CLOSE and close_code(payload) == 1009
        # The rest is read and dropped, not kept: the server's memory stays flat
        # (the client's chunk is one reused buffer).
        tracemalloc.start()
        try:
            for _ in range(4 * LIMIT // len(chunk)):
                await raw.send(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < LIMIT // 4, f"{peak} bytes held while {4 * LIMIT} were sent"
        raw.writer.write_eof()  # the client is done: the server closes (FIN, not RST)
        await raw.until_eof()
    finally:
        await raw.close()
    await still_serving(client)


async def test_oversize_linger_is_bounded(aiohttp_client: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "OVERSIZE_LINGER_S", 300 * MS)
    client = await start(aiohttp_client)
    raw = await RawSocket.open(client)
    try:
        await raw.start_binary(LIMIT + 1024)
        opcode, payload = await raw.frame()
        assert opcode == OPCODE_CLOSE and close_code(payload) == 1009
        refused = asyncio.get_running_loop().time()
        # A client that neither finishes nor closes is closed for it, after the linger.
        await raw.until_eof()
        assert asyncio.get_running_loop().time() - refused >= 300 * MS / 2
    finally:
        await raw.close()
    await still_serving(client)
