"""The least a Python asyncio server can add on this machine: the asyncio floor.

The stand-in runtime runs as the peers run it (bench/floor_runtime.py: one
handle through ctypes, its result callback on the runtime's thread); the
callback hands each token's text to the loop with one
``call_soon_threadsafe``, and the loop sends it. Same hops as rkstream,
nothing else: no protocol, no scheduler, no worker process.

- ``GET /ws``: ``session.created``, then for each ``response.create`` its
  ``[[n_tokens=N]]`` tokens ``[[token_delay_us=U]]`` apart, one msgpack
  ``response.output_text.delta`` message each, then ``response.done``.
- ``POST /v1/chat/completions`` (``"stream": true``): the same tokens as
  Server-Sent Events (HTTP/1.1 chunked), one ``data:`` chunk each, written
  in order as each comes off the loop, then ``data: [DONE]``.
- ``GET /health``: 200.

Used by bench/ws_latency.py and bench/sse_latency.py to print the machine's
floor beside rkstream's figures (and beside bench/floor_threaded.py, the
thread-per-connection floor).

``--writer-thread``: the design that would take the loop off the token path
(issue 17's remaining question). aiohttp still accepts the socket, reads it
and writes ``session.created`` and ``response.done``, but each /ws delta goes
from the runtime's callback through a ``queue.Queue`` to a writer thread that
owns that socket's writes during the run and sends the frame on the raw file
descriptor: the threaded floor's handoff inside an asyncio server. It is
safe here only because nothing else writes to the socket during a run (no
pings, no second request, no compression, no slow client): what rkstream
would have to give up, or rebuild around aiohttp's transport, to use it.

    python bench/floor_server.py PORT [LIBRARY] [--writer-thread]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import select
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import msgpack
from aiohttp import web
from floor_runtime import StandinRuntime  # noqa: E402

LIB = Path(__file__).resolve().parent.parent / "lib" / "build" / "librkllmrt-standin-1.3.so"

RUNTIME = web.AppKey("floor_runtime", StandinRuntime)
WRITER_THREAD = web.AppKey("floor_writer_thread", bool)


def start_emitter(app: web.Application, loop: asyncio.AbstractEventLoop,
                  deliver: Callable[[str | None], None], prompt: str) -> None:
    """Run ``prompt`` on a thread; the runtime's callback hands each token's text
    to ``deliver`` on the loop with one call_soon_threadsafe; None after the last."""
    def on_text(text: str) -> None:  # on the runtime's callback thread
        loop.call_soon_threadsafe(deliver, text)

    def run() -> None:
        app[RUNTIME].generate(prompt, on_text)
        loop.call_soon_threadsafe(deliver, None)

    threading.Thread(target=run, daemon=True).start()


async def stream(app: web.Application, ws: web.WebSocketResponse, rid: str, prompt: str
                 ) -> None:
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    seqs = itertools.count()

    def send(text: str | None) -> None:
        if text is None:
            finished.set()
            return
        loop.create_task(ws.send_bytes(msgpack.packb(
            {"type": "response.output_text.delta", "request_id": rid, "seq": next(seqs),
             "delta": text})))

    start_emitter(app, loop, send, prompt)
    await finished.wait()
    # Every send task was created (and, uncompressed, wrote its frame in its
    # first step) before finished.set() ran, so response.done cannot overtake one.
    await ws.send_bytes(msgpack.packb({"type": "response.done", "request_id": rid}))


def binary_frame(payload: bytes) -> bytes:
    """An unmasked, final RFC 6455 binary frame (a server's)."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x82, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x82, 126, size) + payload
    return struct.pack("!BBQ", 0x82, 127, size) + payload


def write_all(fd: int, data: bytes) -> None:
    """Send on the loop's non-blocking socket from another thread (waiting while full)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


async def stream_by_thread(app: web.Application, ws: web.WebSocketResponse, fd: int,
                           rid: str, prompt: str) -> None:
    """The ``--writer-thread`` run: callback -> queue.Queue -> this socket's writer thread."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    tokens: queue.Queue[str | None] = queue.Queue()

    def writer() -> None:
        seq = 0
        while (text := tokens.get()) is not None:
            write_all(fd, binary_frame(msgpack.packb(
                {"type": "response.output_text.delta", "request_id": rid, "seq": seq,
                 "delta": text})))
            seq += 1
        loop.call_soon_threadsafe(finished.set_result, None)

    def run() -> None:
        app[RUNTIME].generate(prompt, tokens.put)
        tokens.put(None)

    threading.Thread(target=writer, daemon=True).start()
    threading.Thread(target=run, daemon=True).start()
    await finished  # the writer has sent the last delta: response.done goes after it
    await ws.send_bytes(msgpack.packb({"type": "response.done", "request_id": rid}))


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=0)
    await ws.prepare(request)
    await ws.send_bytes(msgpack.packb({"type": "session.created"}))
    transport = request.transport
    assert transport is not None
    fd = transport.get_extra_info("socket").fileno()
    async for msg in ws:
        event = msgpack.unpackb(msg.data)
        rid, prompt = event["request_id"], str(event["input"][0]["content"])
        if request.app[WRITER_THREAD]:
            await stream_by_thread(request.app, ws, fd, rid, prompt)
        else:
            await stream(request.app, ws, rid, prompt)
    return ws


async def chat_handler(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        raise web.HTTPBadRequest(text="only stream=true")
    prompt = str(body["messages"][-1]["content"])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)  # HTTP/1.1 without a length: chunked
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    start_emitter(request.app, asyncio.get_running_loop(), queue.put_nowait, prompt)
    while (text := await queue.get()) is not None:
        chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
        await response.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode()
                             + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--writer-thread"]
    app = web.Application()
    app[RUNTIME] = StandinRuntime(args[1] if len(args) > 1 else str(LIB))
    app[WRITER_THREAD] = "--writer-thread" in sys.argv
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/v1/chat/completions", chat_handler)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=int(args[0]), print=None)
