"""The asyncio client: :class:`AsyncClient`, one WebSocket to one rkstream server."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rkstream.client.camera import Camera, to_wire
from rkstream.client.connection import _UNSET, KEPT_UPLOADS, Connection
from rkstream.client.conversation import new_conversation_key
from rkstream.client.errors import ConnectionLostError, RkstreamClientError
from rkstream.client.events import Answer, Messages, as_input
from rkstream.client.stream import Stream


class AsyncClient(Connection):
    """A client of one rkstream server over protocol v1 (msgpack), for asyncio code.

    One WebSocket carries every request, upload and camera frame. When it drops,
    the client reconnects by itself with a doubling delay (``min_delay_s`` to
    ``max_delay_s``, with jitter). Across a reconnect:

    - requests that were open end with :class:`ConnectionLostError` (a generation is
      never sent again on its own: the caller decides);
    - session settings given to :meth:`update_session` are applied again;
    - the last 16 images given to :meth:`upload_image` are uploaded again under
      the same ids (older ids give ``unknown_image``; upload them again);
    - each camera sends its newest frame again.

    Calls made while the socket is down wait up to ``timeout_s`` for it to come
    back, then raise :class:`ConnectionLostError`. A refused key raises
    :class:`AuthError` and is not retried.

    **Several servers behind a balancer.** ``conversation`` (a key such as
    :func:`new_conversation_key`'s, 1 to 128 letters, digits, ``-._~``; ValueError
    otherwise) is sent as ``?conversation=`` on every connection and reconnection,
    so the balancer sends the conversation's turns to the board whose KV cache
    holds it; :meth:`new_conversation` starts another. :attr:`server_id` names the
    server the socket reached, and each request's :class:`Stream`, :class:`Done`
    and :class:`Answer` carry the ``server_id`` that answered it. After a
    reconnect it is usually the same board, but another one if the board went
    down or drains (its cache is then cold: the next turn is prefilled in full).

    Args:
        url: ``host:port``, ``http://host:port`` or ``ws://host:port/ws``.
        api_key: the server's key (default: ``RKSTREAM_API_KEY`` from the environment).
        conversation: the conversation key (default: none, or the URL's
            ``?conversation=``).
        reconnect: reconnect after a drop (False: the first drop is final).
        timeout_s: how long a call waits for a connection.
        min_delay_s, max_delay_s: the reconnect delays.
        heartbeat_s: the client's WebSocket ping interval (None: none).

    Use it as ``async with AsyncClient(url, api_key=...) as client:``, or call
    :meth:`connect` and :meth:`close`.
    """

    async def __aenter__(self) -> AsyncClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests --------------------------------------------------------------------------
    def stream(self, messages: Messages, *, model: str | None = None,
               tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
               parallel_tool_calls: bool | None = None, enable_thinking: bool | None = None,
               stream: bool = True, **params: Any) -> Stream:
        """Start a response: ``async for event in client.stream("Hello", max_tokens=50)``.

        Args:
            messages: a user's text, or messages ``[{role, content}]`` (content may be a
                list of parts: see :func:`image_part` and :func:`frame_part`).
            model: a served model's name (default: the session's).
            tools, tool_choice, parallel_tool_calls, enable_thinking: as in the protocol.
            stream: False sends no deltas; the text comes in the Done.
            **params: ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``...

        Returns:
            a :class:`Stream` of typed events (see its notes on cancelling).
        """
        rid = f"r{next(self._ids)}"
        event: dict[str, Any] = {"type": "response.create", "request_id": rid,
                                 "input": as_input(messages)}
        if tools is not None:
            event["tools"] = list(tools)
        for name, value in (("model", model), ("tool_choice", tool_choice),
                            ("parallel_tool_calls", parallel_tool_calls),
                            ("enable_thinking", enable_thinking)):
            if value is not None:
                event[name] = value
        if not stream:
            event["stream"] = False
        if params:
            event["params"] = params
        return Stream(self, rid, event)

    async def complete(self, messages: Messages, **options: Any) -> Answer:
        """The whole answer (same arguments as :meth:`stream`); raises its typed error.

        Cancelling the awaiting task cancels the request on the server.
        """
        async with self.stream(messages, **options) as stream:
            return await stream.result()

    async def cancel(self, request: Stream | str) -> None:
        """Cancel an open request (a :class:`Stream` or its ``request_id``)."""
        stream = request if isinstance(request, Stream) else self._requests.get(request)
        if stream is not None:
            await stream.cancel()

    async def new_conversation(self, key: str | None = None) -> str:
        """Start another conversation: a fresh key (or ``key``) and a new socket that
        carries it, so the balancer may pick another board. Returns the key.

        The new socket is a new session: requests still open end with
        :class:`ConnectionLostError`; session settings, uploads and cameras are
        restored as after any reconnect. Before :meth:`connect` it only sets the key.
        """
        key = key if key is not None else new_conversation_key()
        await self._switch(key)
        return key

    async def _start(self, stream: Stream, event: dict[str, Any]) -> bool:
        """Send ``stream``'s request; False if it was cancelled before it could be."""
        if not await self._ready_unless(stream._cancelled):
            return False
        stream.server_id = self.server_id
        self._requests[stream.request_id] = stream
        try:
            await self._send(event)
        except RkstreamClientError:
            self._requests.pop(stream.request_id, None)
            raise
        return True

    async def _ready_unless(self, stop: asyncio.Event) -> bool:
        """:meth:`_ready`, but False as soon as ``stop`` is set (a cancel must not wait
        for the reconnect, nor be sent after it)."""
        if stop.is_set():
            return False
        if self._connected.is_set():
            return True
        ready = asyncio.ensure_future(self._ready())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((ready, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, stopped):
                task.cancel()
        if stop.is_set():
            if ready.done() and not ready.cancelled():
                ready.exception()  # retrieved: no "never retrieved" warning
            return False
        ready.result()
        return True

    async def _send_cancel(self, request_id: str) -> None:
        if request_id in self._requests:
            try:
                await self._send({"type": "response.cancel", "request_id": request_id})
            except ConnectionLostError:
                pass  # the socket is gone: the server has cancelled it already

    def _abandon(self, stream: Stream) -> None:
        """A caller left a stream early: cancel it without waiting (also from a finaliser)."""
        if not self._closed and stream.request_id in self._requests:
            self._spawn(self._send_cancel(stream.request_id))

    # -- the session, images, ping ---------------------------------------------------------
    async def update_session(self, *, instructions: str | None = _UNSET,
                             model: str | None = None, **params: Any) -> Mapping[str, Any]:
        """Set the session's instructions (None clears them), model and params; they are
        applied again after a reconnect. Returns the effective session."""
        change: dict[str, Any] = {}
        if instructions is not _UNSET:
            change["instructions"] = instructions
        if model is not None:
            change["model"] = model
        if params:
            change["params"] = params
        await self._ready()
        answer: Mapping[str, Any] = await self._call(
            "session", "", {"type": "session.update", "session": change})
        self._wanted = {**self._wanted, **change,
                        "params": {**self._wanted.get("params", {}), **params}}
        if not self._wanted["params"]:
            del self._wanted["params"]
        return answer

    async def upload_image(self, image: bytes | str | os.PathLike[str] | Any,
                           format: str | None = None, *, image_id: str | None = None,
                           color: str = "bgr") -> str:
        """Encode an image once on the server; returns its ``image_id`` for
        :func:`image_part`. ``image`` is JPEG/PNG/WebP bytes, a file path, or a numpy
        image (``color`` says its channel order; sent as JPEG)."""
        def prepare() -> tuple[dict[str, Any], str]:  # file, encoder and hash off the loop
            data = Path(image).read_bytes() if isinstance(image, (str, os.PathLike)) else image
            wire = to_wire(data, color, "jpeg", 90)
            return wire, "img_" + hashlib.sha256(wire["data"]).hexdigest()[:24]

        wire, digest = await asyncio.to_thread(prepare)
        upload: dict[str, Any] = {"type": "image.upload", "data": wire["data"]}
        upload.update({k: v for k, v in wire.items() if k != "data"})
        if format is not None:
            upload["format"] = format
        image_id = image_id or digest
        await self._ready()
        await self._call("image", image_id, {**upload, "image_id": image_id})
        self._uploads[image_id] = upload
        self._uploads.move_to_end(image_id)
        while len(self._uploads) > KEPT_UPLOADS:
            self._uploads.popitem(last=False)
        return image_id

    async def ping(self) -> float:
        """A protocol ping; returns the round trip in seconds."""
        await self._ready()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._call("ping", "", {"type": "ping"})
        return loop.time() - started

    def camera(self, stream: str = "cam0", *, max_fps: float | None = 5.0,
               color: str = "bgr", encoding: str = "jpeg", quality: int = 80) -> Camera:
        """A camera helper for ``stream`` (see :class:`Camera`); one per stream name."""
        if stream in self._cameras:
            raise ValueError(f"camera {stream!r} exists already: use client.cameras")
        if self.loop is None:
            raise ConnectionLostError("not_connected", "call connect() first")
        camera = Camera(self, stream, max_fps=max_fps, color=color, encoding=encoding,
                        quality=quality)
        self._cameras[stream] = camera
        return camera

    @property
    def cameras(self) -> Mapping[str, Camera]:
        return dict(self._cameras)
