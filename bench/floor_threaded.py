"""A token-delivery floor with the fastest peer's design: a thread per connection.

The way gunicorn's gthread workers or Flask stream: every connection has its
own thread. For each request a producer thread runs the stand-in runtime as
the peers run it (bench/floor_runtime.py: one handle through ctypes); the
runtime's result callback puts each token's text in a ``queue.Queue``, and
the connection's thread takes it off the queue and writes it to the socket
right there, one ``sendall`` per token. No event loop.

- ``GET /health``: 200.
- ``GET /ws``: a minimal RFC 6455 WebSocket. ``session.created`` first; then
  each ``response.create`` (msgpack, binary frame) runs its prompt (the
  stand-in's directives: ``[[n_tokens=N]]``, ``[[token_delay_us=U]]``,
  ``[[stamp=1]]``) and streams each token as one
  ``response.output_text.delta`` frame, then ``response.done``.
- ``POST /v1/chat/completions`` (``"stream": true``): the same tokens as
  Server-Sent Events, one ``data:`` chunk each, HTTP/1.1 chunked, then
  ``data: [DONE]``. Connections are kept alive between requests.

Sockets run with TCP_NODELAY, as aiohttp's do. Used by bench/ws_latency.py
and bench/sse_latency.py beside bench/floor_server.py (the asyncio floor).

    python bench/floor_threaded.py PORT [LIBRARY]
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import queue
import struct
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgpack
from floor_runtime import StandinRuntime  # noqa: E402

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
LIB = Path(__file__).resolve().parent.parent / "lib" / "build" / "librkllmrt-standin-1.3.so"

Tokens = queue.Queue[str | None]
RUNTIME: list[StandinRuntime] = []  # the one handle, made at start


def produce(tokens: Tokens, prompt: str) -> None:
    """Run ``prompt``; the runtime's callback puts each token's text in the queue."""
    RUNTIME[0].generate(prompt, tokens.put)
    tokens.put(None)


def generate(prompt: str) -> Iterator[str]:
    """Start the run of ``prompt`` on a producer thread; yield each token's text as
    it comes off the queue, in the calling (the connection's) thread."""
    tokens: Tokens = queue.Queue()
    threading.Thread(target=produce, args=(tokens, prompt), daemon=True).start()
    while (text := tokens.get()) is not None:
        yield text


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def read_exact(stream: io.BufferedIOBase, n: int) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise ConnectionError("the peer closed the connection")
    return data


def read_frame(stream: io.BufferedIOBase) -> tuple[bool, int, bytes]:
    """(fin, opcode, unmasked payload) of the next client frame."""
    b0, b1 = read_exact(stream, 2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", read_exact(stream, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", read_exact(stream, 8))
    mask = read_exact(stream, 4) if b1 & 0x80 else b""
    payload = read_exact(stream, n)
    if mask and n:
        key = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return bool(b0 & 0x80), b0 & 0x0F, payload


def sse_event(text: str) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses
    disable_nagle_algorithm = True  # TCP_NODELAY, as aiohttp sets it

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self.reply(200, b"ok")
        elif path == "/ws":
            try:
                self.websocket()
            except OSError:  # the client left
                self.close_connection = True
        else:
            self.reply(404, b"not found")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?", 1)[0] != "/v1/chat/completions":
            self.reply(404, b"not found")
            return
        try:
            request = json.loads(body or b"{}")
            content = str((request.get("messages") or [{}])[-1].get("content", ""))
        except (ValueError, AttributeError, IndexError):
            self.reply(400, b"a JSON body with messages, please")
            return
        if not request.get("stream"):
            self.reply(400, b"only stream=true")
            return
        try:
            self.chat(content)
        except OSError:
            self.close_connection = True

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- SSE ----------------------------------------------------------------------------
    def chat(self, content: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sock = self.connection
        for text in generate(content):
            data = sse_event(text)
            sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))
        done = b"data: [DONE]\n\n"
        sock.sendall(b"%x\r\n%b\r\n0\r\n\r\n" % (len(done), done))

    # -- WebSocket ----------------------------------------------------------------------
    def websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key")
        if (self.headers.get("Upgrade") or "").lower() != "websocket" or not key:
            self.reply(400, b"a WebSocket upgrade, please")
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.close_connection = True  # no more HTTP on this connection
        sock = self.connection
        sock.sendall(ws_frame(OP_BINARY, msgpack.packb({"type": "session.created"})))
        while (message := self.ws_receive()) is not None:
            event = msgpack.unpackb(message)
            if not isinstance(event, dict) or event.get("type") != "response.create":
                continue
            rid = event.get("request_id", "")
            for seq, text in enumerate(generate(str(event["input"][0]["content"]))):
                sock.sendall(ws_frame(OP_BINARY, msgpack.packb(
                    {"type": "response.output_text.delta", "request_id": rid, "seq": seq,
                     "delta": text})))
            sock.sendall(ws_frame(OP_BINARY, msgpack.packb(
                {"type": "response.done", "request_id": rid})))

    def ws_receive(self) -> bytes | None:
        """The next whole data message; None once the client closes (its close
        frame answered) or leaves."""
        parts: list[bytes] = []
        while True:
            try:
                fin, opcode, payload = read_frame(self.rfile)
            except ConnectionError:
                return None
            if opcode == OP_CLOSE:
                self.connection.sendall(ws_frame(OP_CLOSE, payload[:2]))
                return None
            if opcode == OP_PING:
                self.connection.sendall(ws_frame(OP_PONG, payload))
                continue
            if opcode == OP_PONG:
                continue
            parts.append(payload)
            if fin:
                return b"".join(parts)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    RUNTIME.append(StandinRuntime(sys.argv[2] if len(sys.argv) > 2 else str(LIB)))
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
