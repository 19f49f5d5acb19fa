"""What the client's tests share besides fixtures: the server maker's type, a
server's /ws URL, and a slow link."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestServer

ServerMaker = Callable[..., Awaitable[TestServer]]


def url(server: TestServer) -> str:
    return str(server.make_url("/ws"))


class SlowLink:
    """A TCP proxy to ``127.0.0.1:upstream`` that carries at most ``rate`` bytes a
    second from the client to the server (a slow uplink, as a robot's Wi-Fi)."""

    def __init__(self, upstream: int, rate: float) -> None:
        self.upstream = upstream
        self.rate = rate
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        for task in (self._pump(reader, up_writer, self.rate), self._pump(up_reader, writer)):
            spawned = asyncio.ensure_future(task)
            self._tasks.add(spawned)
            spawned.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    rate: float | None = None) -> None:
        try:
            while data := await reader.read(8192 if rate else 65536):
                writer.write(data)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
