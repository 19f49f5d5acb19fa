"""The least a Python asyncio WebSocket server can add on this machine.

A plain thread (standing in for the runtime's callback thread) stamps each
token with CLOCK_MONOTONIC and hands it to the loop with one
``call_soon_threadsafe``; the loop sends it as one msgpack delta. Same hops
as rkstream, nothing else: no ctypes, no protocol, no scheduler. Used by
bench/ws_latency.py to print the machine's floor beside rkstream's figures.

    python bench/floor_server.py PORT
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time

import msgpack
from aiohttp import web

DIRECTIVE = re.compile(r"\[\[(\w+)=(\d+)\]\]")


async def stream(ws: web.WebSocketResponse, rid: str, count: int, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()

    def send(stamp: int, seq: int) -> None:
        loop.create_task(ws.send_bytes(msgpack.packb(
            {"type": "response.output_text.delta", "request_id": rid, "seq": seq,
             "delta": f"[{stamp}]"})))

    def emit() -> None:
        for seq in range(count):
            if delay_s:
                time.sleep(delay_s)
            loop.call_soon_threadsafe(send, time.monotonic_ns(), seq)
        loop.call_soon_threadsafe(finished.set)

    threading.Thread(target=emit, daemon=True).start()
    await finished.wait()
    await asyncio.sleep(0.05)
    await ws.send_bytes(msgpack.packb({"type": "response.done", "request_id": rid}))


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=0)
    await ws.prepare(request)
    await ws.send_bytes(msgpack.packb({"type": "session.created"}))
    async for msg in ws:
        event = msgpack.unpackb(msg.data)
        keys = {k: int(v) for k, v in DIRECTIVE.findall(event["input"][0]["content"])}
        await stream(ws, event["request_id"], keys["n_tokens"], keys["token_delay_us"] / 1e6)
    return ws


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
