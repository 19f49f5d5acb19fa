"""Server-sent events over an aiohttp StreamResponse, as OpenAI clients read them.

Each event is ``data: <one JSON object>\\n\\n``; the stream ends with
``data: [DONE]``. A write to a client that has gone away raises
:class:`ClientGone`, so a handler can stop without a traceback.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx-style proxies would otherwise buffer the whole answer.
    "X-Accel-Buffering": "no",
}


class ClientGone(Exception):
    """The client closed the connection while the stream was being written."""


class SSEStream:
    """One SSE response; :meth:`open` sends the headers."""

    def __init__(self) -> None:
        self.response = web.StreamResponse(status=200, headers=HEADERS)

    async def open(self, request: web.Request) -> None:
        """Send the status line and headers.

        Raises:
            ClientGone: the client has already disconnected.
        """
        try:
            await self.response.prepare(request)
        except ConnectionError as exc:  # includes aiohttp's ClientConnectionResetError
            raise ClientGone() from exc

    async def _write(self, data: bytes) -> None:
        try:
            await self.response.write(data)
        except ConnectionError as exc:
            raise ClientGone() from exc

    async def send(self, obj: dict[str, Any]) -> None:
        """Send one ``data:`` event holding ``obj`` as compact JSON."""
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        await self._write(f"data: {text}\n\n".encode())

    async def comment(self, text: str) -> None:
        """Send a comment line (a keepalive; SSE parsers skip it)."""
        await self._write(f": {text}\n\n".encode())

    async def done(self) -> None:
        """Send ``data: [DONE]`` and end the response."""
        await self._write(b"data: [DONE]\n\n")
        try:
            await self.response.write_eof()
        except ConnectionError as exc:
            raise ClientGone() from exc
