"""The camera helper: newest-frame-wins streaming of camera frames, and questions
about the newest frame.

The caller's ``send()`` only stores the frame and wakes a sender task on the
client's loop; it never waits for the network or an encoder. The sender sends
one frame at a time, then waits for the server to have read it (a ``ping``
answered after it: the server answers events in order) and for the fps budget.
A frame that a newer one replaces meanwhile is dropped on the client, so a slow
link carries the newest frames, not a backlog.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from rkstream.client.errors import ConnectionLostError, ImageError, RkstreamClientError
from rkstream.client.events import FrameAnswer, frame_part

if TYPE_CHECKING:
    from rkstream.client.aio import AsyncClient

log = logging.getLogger("rkstream.client")

COLORS = ("bgr", "rgb")
ENCODINGS = ("jpeg", "raw")
KEPT_FRAMES = 4  # sent frames kept so that an answer can hand back the one it used
ENVELOPE_BYTES = 512  # room for the frame.append fields around the data


def to_wire(image: Any, color: str, encoding: str, quality: int) -> dict[str, Any]:
    """The ``data`` (and ``format``, ``width``, ``height``) for an image.

    Bytes (JPEG, PNG, WebP) go as they are. A numpy ``uint8`` image (H x W x 3 or 4,
    or H x W grey) is encoded as JPEG with OpenCV when it is installed, else Pillow
    (``encoding="jpeg"``), or sent as raw pixels (``encoding="raw"``, no encoder:
    about 15 times the bytes).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return {"data": bytes(image)}
    shape = getattr(image, "shape", None)
    if shape is None:
        raise TypeError(f"a frame is JPEG/PNG/WebP bytes or a numpy image, "
                        f"not {type(image).__name__}")
    import numpy as np

    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise TypeError(f"a numpy image must be uint8, not {pixels.dtype}")
    if pixels.ndim == 2:
        pixels, color = np.repeat(pixels[:, :, None], 3, axis=2), "rgb"
    elif pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"a numpy image is H x W x 3 (or 4, or H x W), not {pixels.shape}")
    pixels = pixels[:, :, :3]
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if encoding == "raw":
        return {"data": np.ascontiguousarray(pixels).tobytes(), "format": color,
                "width": width, "height": height}
    return {"data": _jpeg(pixels, color, quality), "format": "jpeg"}


def _jpeg(pixels: Any, color: str, quality: int) -> bytes:
    import numpy as np

    try:
        import cv2
    except ImportError:
        pass
    else:
        bgr = pixels if color == "bgr" else pixels[:, :, ::-1]
        ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(bgr),
                                  [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        if not ok:
            raise ValueError("OpenCV could not encode the frame as JPEG")
        return bytes(buffer.tobytes())
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("encoding a numpy frame as JPEG needs Pillow or OpenCV: pip install "
                          "pillow (or opencv-python-headless), or use encoding='raw'") from None
    rgb = pixels if color == "rgb" else pixels[:, :, ::-1]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, "JPEG", quality=quality)
    return out.getvalue()


class Camera:
    """One camera stream of a client: ``send(frame)`` from any thread, ``ask()`` about
    the newest frame. Made by ``client.camera(name)``.

    Attributes:
        stream: the stream's name on the server.
        given, sent, dropped: frames given to :meth:`send`, sent, and replaced by a
            newer one before they could be sent.
        error: the last error for a frame: the server's, or the client's when it could
            not send one (too large, not encodable); raised by the next ask.
    """

    def __init__(self, client: AsyncClient, stream: str, *, max_fps: float | None,
                 color: str, encoding: str, quality: int) -> None:
        if color not in COLORS or encoding not in ENCODINGS:
            raise ValueError(f"color is one of {COLORS}, encoding one of {ENCODINGS}")
        assert client.loop is not None
        self.stream = stream
        self.max_fps = max_fps
        self.color = color
        self.encoding = encoding
        self.quality = quality
        self.given = self.sent = self.dropped = 0
        self.error: RkstreamClientError | None = None
        self._client = client
        self._loop = client.loop
        self._lock = threading.Lock()  # send() runs on any thread
        self._pending: tuple[int, Any, int, str] | None = None
        self._sent_seq = 0
        self._sent_generation = 0
        self._last: dict[str, Any] | None = None  # the last frame.append, for a reconnect
        self._recent: OrderedDict[int, Any] = OrderedDict()
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._stopped = False
        self._task = self._loop.create_task(self._sender())

    def send(self, frame: Any, *, color: str | None = None, ts_ns: int | None = None) -> int:
        """Hand over the newest frame; returns its seq. Never blocks on the network.

        ``frame`` is JPEG/PNG/WebP bytes or a numpy ``uint8`` image (``color``: ``bgr``
        as OpenCV gives, or ``rgb``; default the camera's). A numpy frame is copied,
        so the caller may reuse its buffer. ``ts_ns`` defaults to now (epoch ns).
        """
        if self._stopped:
            raise ConnectionLostError("closed", "the client was closed")
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            if getattr(frame, "shape", None) is None:
                raise TypeError(f"a frame is image bytes or a numpy image, "
                                f"not {type(frame).__name__}")
            frame = frame.copy()
        else:
            frame = bytes(frame)
        stamp = time.time_ns() if ts_ns is None else ts_ns
        with self._lock:
            self.given += 1
            if self._pending is not None:
                self.dropped += 1
            self._pending = (self.given, frame, stamp, color or self.color)
            seq = self.given
        self._wake_up()
        return seq

    def _wake_up(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass  # the client's loop is closed

    async def _sender(self) -> None:
        client = self._client
        last_sent = float("-inf")
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            if not client.connected:
                continue  # woken again on connect
            if self.max_fps:  # the fps budget, before taking the newest frame
                await asyncio.sleep(max(0.0, last_sent + 1.0 / self.max_fps - time.monotonic()))
            with self._lock:
                item, self._pending = self._pending, None
            generation = client.generation
            sent = False
            try:
                if item is not None:
                    seq, image, stamp, color = item
                    wire = {"data": image} if isinstance(image, bytes) else \
                        await asyncio.to_thread(to_wire, image, color, self.encoding,
                                                self.quality)
                    event = {"type": "frame.append", "stream": self.stream, "seq": seq,
                             "ts_ns": stamp, **wire}
                    self._check_size(wire)
                elif self._last is not None and self._sent_generation != generation:
                    seq, image, event = self._last["seq"], None, self._last  # after a reconnect
                else:
                    continue
                await client._send({**event, "event_id": f"frame:{self.stream}:{seq}"})
                sent = True
                last_sent = time.monotonic()
                self._last = event
                if image is not None:
                    self.sent += 1
                    self._recent[seq] = image
                    while len(self._recent) > KEPT_FRAMES:
                        self._recent.popitem(last=False)
                self._sent_seq, self._sent_generation = seq, generation
                self._settle_flushes()
                await client._call("ping", "", {"type": "ping"})  # the server has it
            except ConnectionLostError:
                with self._lock:  # send it on the next connection unless a newer one came
                    if self._pending is None and item is not None:
                        self._pending = item
            except Exception as exc:  # noqa: BLE001 - an encoder's own error (cv2.error,
                # OSError...) must not end the sender: the camera goes on with the next frame
                error = exc if isinstance(exc, RkstreamClientError) else ImageError(
                    "invalid_image", f"frame {item[0] if item else self._sent_seq}: "
                                     f"{type(exc).__name__}: {exc}")
                self._failed(error)
                if item is not None and not sent:
                    self._refuse_flushes(item[0], error)
            with self._lock:
                if self._pending is not None:
                    self._wake.set()

    def _check_size(self, wire: dict[str, Any]) -> None:
        limit = int(self._client.limits.get("max_message_bytes") or 0)
        if limit and len(wire["data"]) + ENVELOPE_BYTES > limit:
            raise ImageError("image_too_large", f"a frame of {len(wire['data'])} bytes is above "
                             f"the server's max_message_bytes ({limit}); send smaller frames")

    def _settle_flushes(self) -> None:
        still = []
        for target, future in self._flushes:
            if self._sent_seq >= target and self._sent_generation == self._client.generation:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((target, future))
        self._flushes = still

    def _refuse_flushes(self, seq: int, error: RkstreamClientError) -> None:
        """Frame ``seq`` was refused before it was sent (too large, not encodable): the
        asks waiting for it get its error now rather than a timeout."""
        still = []
        for target, future in self._flushes:
            if target <= seq:
                if not future.done():
                    future.set_exception(error)
            else:
                still.append((target, future))
        self._flushes = still

    def _failed(self, error: RkstreamClientError) -> None:
        self.error = error
        log.warning("rkstream: camera %s: %s", self.stream, error)

    def _stop(self) -> None:
        self._stopped = True
        self._task.cancel()
        for _, future in self._flushes:
            if not future.done():
                future.set_exception(ConnectionLostError("closed", "the client was closed"))

    async def flush(self) -> int:
        """Wait until the frame that is newest now (or a newer one) is on the server
        of the current connection; returns the seq that was sent."""
        target = self.given
        if target == 0:
            raise ImageError("unknown_stream", f"camera {self.stream!r} has no frame yet: "
                             "send() one before asking")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append((target, future))
        self._settle_flushes()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(future), self._client.timeout_s)
        finally:  # given up on (a timeout): nobody will read what it gets later
            if not future.done():
                future.cancel()
            self._flushes = [(t, f) for t, f in self._flushes if f is not future]
        return self._sent_seq

    async def ask(self, question: str, *, system: str | None = None,
                  **options: Any) -> FrameAnswer:
        """Ask about the newest frame: the frame that is newest now is sent first (if it
        is not already), then the question. Returns the answer with the frame it used
        (``answer.frame``, and ``answer.image`` as given to send()).

        ``options`` are :meth:`AsyncClient.stream`'s (``max_tokens``...).

        Raises:
            ImageError: no frame yet, the frame could not be sent (``image_too_large``,
                ``invalid_image`` when it could not be encoded), or the server refused
                the frames (no encoder...).
        """
        try:
            await self.flush()
        except asyncio.TimeoutError:
            raise ConnectionLostError("not_connected", f"camera {self.stream!r}: the frame "
                                      "could not be sent in time") from None
        except RkstreamClientError as exc:  # the frame was refused before it was sent
            if exc is self.error:
                self.error = None
            raise
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        content = [frame_part(self.stream), {"type": "text", "text": question}]
        messages: list[Any] = [{"role": "user", "content": content}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        answer = await self._client.complete(messages, **options)
        frame = answer.done.frame
        used = None
        if frame is not None:
            used = frame.encoded_seq if frame.encoded_seq is not None else frame.seq
        return FrameAnswer(answer.text, answer.reasoning, answer.tool_calls, answer.done,
                           frame=frame, image=self._recent.get(used) if used is not None
                           else None)
