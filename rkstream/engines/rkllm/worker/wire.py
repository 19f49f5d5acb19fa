"""What crosses between the server and a worker process, and how it is framed.

Two channels per worker (bench/worker_transport.py chose them):

- the **token pipe**, worker to server only: a run's text, then its end;
  or an embedding run's one vector frame.
  One writer at a time (the callback thread during rkllm_run, then the
  worker's main thread), so frames never interleave and the end always
  follows the last text. The server reads it with ``loop.add_reader``.
- the **control socket**, both ways: orders to the worker (init, run, stop,
  cancel, close) and its replies to init and close. A worker's control
  thread reads it while rkllm_run is under way, so a cancel reaches
  rkllm_abort at once.

Frames are a one-byte kind and a four-byte length. Payloads other than
text are pickles: both ends are this package, on a private socketpair and
pipe the server made, so nothing else can write to them.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any

from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.embeddings import ImageTags
from rkstream.engines.rkllm.native import EmbedEnd, NativeEnd
from rkstream.engines.rkllm.prompt_cache import SystemBlock

HEADER = struct.Struct("<cI")
TEXT = b"T"
END = b"E"
CONTROL = b"C"
VECTOR = b"V"  # an EmbedEnd: one embedding (or why there is none)


@dataclass(frozen=True)
class WorkerInit:
    """What a worker needs to load its model, sent as its first order."""

    library: str
    line: str
    settings: RKLLMSettings
    defaults: SamplingDefaults
    model_path: str
    index: int
    image_tags: ImageTags | None
    raw_prompts: bool
    system_block: SystemBlock | None


def text_frame(text: str) -> bytes:
    data = text.encode("utf-8")
    return HEADER.pack(TEXT, len(data)) + data


def end_frame(end: NativeEnd) -> bytes:
    data = pickle.dumps(end)
    return HEADER.pack(END, len(data)) + data


def vector_frame(end: EmbedEnd) -> bytes:
    data = pickle.dumps(end)
    return HEADER.pack(VECTOR, len(data)) + data


def control_frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message)
    return HEADER.pack(CONTROL, len(data)) + data


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is out (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FrameReader:
    """Splits the token pipe's bytes back into text, ends and vectors, across reads."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[str | NativeEnd | EmbedEnd]:
        self._buffer += data
        items: list[str | NativeEnd | EmbedEnd] = []
        buffer, start = self._buffer, 0
        while len(buffer) - start >= HEADER.size:
            kind, size = HEADER.unpack_from(buffer, start)
            body = start + HEADER.size
            if len(buffer) - body < size:
                break
            payload = bytes(buffer[body:body + size])
            start = body + size
            if kind == TEXT:
                items.append(payload.decode("utf-8"))
            elif kind in (END, VECTOR):
                items.append(pickle.loads(payload))
            else:
                raise ValueError(f"unknown frame kind {kind!r} on the token pipe")
        del buffer[:start]
        return items

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame (left at the end: the worker died mid-write)."""
        return len(self._buffer)


def receive(sock: socket.socket) -> tuple[Any, ...] | None:
    """The next control message (blocking), or None once the other end closed."""
    header = _exact(sock, HEADER.size)
    if header is None:
        return None
    _, size = HEADER.unpack(header)
    body = _exact(sock, size)
    if body is None:
        return None
    message: tuple[Any, ...] = pickle.loads(body)
    return message


def _exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


async def receive_async(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next control message on the server's side, or None at the end."""
    try:
        header = await reader.readexactly(HEADER.size)
        _, size = HEADER.unpack(header)
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    message: tuple[Any, ...] = pickle.loads(body)
    return message
