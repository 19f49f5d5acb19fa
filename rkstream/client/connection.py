"""The socket under :class:`AsyncClient`: connecting, reconnecting with backoff,
reading events and matching answers to calls."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgpack

from rkstream.client.conversation import check_conversation_key, conversation_in, with_conversation
from rkstream.client.errors import (
    AuthError,
    ConnectionLostError,
    RkstreamClientError,
    from_body,
    from_handshake,
)
from rkstream.client.events import ModelInfo, SessionInfo, parse_event

if TYPE_CHECKING:
    from rkstream.client.camera import Camera
    from rkstream.client.stream import Stream

log = logging.getLogger("rkstream.client")

SUBPROTOCOL = "rkstream.v1+msgpack"
DEFAULT_URL = "http://127.0.0.1:8080/ws"
KEPT_UPLOADS = 16  # uploads re-sent after a reconnect (their ids belong to the socket)
_UNSET: Any = object()


def ws_url(url: str) -> str:
    """``host:port``, ``http://host:port`` or a full ``ws://host:port/ws`` -> the /ws URL."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


_ENDS = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


def _why(url: str, ending: tuple[aiohttp.WSMsgType, Any, Any] | None) -> str:
    """Why a socket ended: the server's close frame (its code and reason), or none
    (the server or the link went down; a balancer passes that on as it is)."""
    if ending is not None and ending[0] == aiohttp.WSMsgType.CLOSE:
        reason = f" {ending[2]}" if ending[2] else ""
        return f"the server closed the connection to {url} ({ending[1]}{reason})"
    if ending is not None and ending[0] == aiohttp.WSMsgType.CLOSING:
        return f"the client closed its connection to {url} (a new conversation, or close())"
    return (f"the connection to {url} ended without a close frame (the server or the link "
            "went down)")


class Connection:
    """The socket's life: connecting, reconnecting, reading and matching answers;
    :class:`AsyncClient` adds the calls."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None,
                 conversation: str | None = None, reconnect: bool = True,
                 timeout_s: float = 30.0, min_delay_s: float = 0.25,
                 max_delay_s: float = 10.0, heartbeat_s: float | None = 10.0) -> None:
        url = ws_url(url)
        given = conversation_in(url)
        if conversation is not None and given is not None and given != conversation:
            raise ValueError(f"the URL names conversation {given!r} and conversation= "
                             f"{conversation!r}: give one")
        key = conversation if conversation is not None else given
        self._conversation = check_conversation_key(key) if key is not None else None
        self.url = with_conversation(url, self._conversation) if key is not None else url
        """The /ws URL, with ``?conversation=`` when there is a key."""
        self.api_key = api_key if api_key is not None else os.environ.get("RKSTREAM_API_KEY")
        self.reconnect = reconnect
        self.timeout_s = timeout_s
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self.heartbeat_s = heartbeat_s
        self.session: SessionInfo | None = None
        """The last ``session.created`` (None before the first connection)."""
        self.generation = 0
        """How many connections have been made: a change means a new server-side session."""
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()  # set on every connect, drop or fatal error
        self._fatal: RkstreamClientError | None = None
        self._last_error: RkstreamClientError | None = None
        self._closed = False
        self._switching = False  # a new conversation: reconnect at once, whatever reconnect
        self._ids = itertools.count(1)
        self._requests: dict[str, Stream] = {}
        self._calls: dict[str, tuple[str, str, asyncio.Future[Any]]] = {}
        self._wanted: dict[str, Any] = {}
        self._uploads: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cameras: dict[str, Camera] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- facts of the session --------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the socket is up and ``session.created`` has come."""
        return self._connected.is_set()

    @property
    def model(self) -> ModelInfo | None:
        """The default model (``session.created.model``)."""
        return self.session.model if self.session else None

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        """Every served model, the default first."""
        return self.session.models if self.session else ()

    @property
    def limits(self) -> Mapping[str, Any]:
        """The server's limits: ``max_tokens``, ``max_queue``, ``max_message_bytes``..."""
        return self.session.limits if self.session else {}

    @property
    def conversation(self) -> str | None:
        """The conversation key sent as ``?conversation=`` on every (re)connection."""
        return self._conversation

    @property
    def server_id(self) -> str | None:
        """Which server the socket reached (``session.created.server.id``; None before
        the first connection or from a server that names none). After a reconnect it
        is the new socket's: behind a balancer the same board while it serves (with a
        conversation key), another one if it went down or drains."""
        return self.session.server_id if self.session else None

    # -- connecting -----------------------------------------------------------------------
    async def connect(self) -> SessionInfo:
        """Connect (or wait for the reconnect under way); returns the session facts.

        Raises:
            AuthError: the server refused the key.
            ConnectionLostError: no connection within ``timeout_s``.
        """
        if self._closed:
            raise ConnectionLostError("closed", "the client was closed")
        if self._runner is None:
            self.loop = asyncio.get_running_loop()
            self._http = aiohttp.ClientSession()
            self._runner = asyncio.create_task(self._run())
        await self._ready()
        assert self.session is not None
        return self.session

    async def close(self) -> None:
        """Close for good: open requests and calls end with :class:`ConnectionLostError`
        code ``closed`` (not ``connection_lost``: the caller closed it); no reconnect."""
        if self._closed:
            return
        self._closed = True
        self._fail_all(ConnectionLostError("closed", "the client was closed"))  # before the
        # socket's end fails them as a dropped link
        for camera in list(self._cameras.values()):
            camera._stop()
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        self._fail_all(ConnectionLostError("closed", "the client was closed"))
        self._changed.set()
        if self._http is not None:
            await self._http.close()

    async def _switch(self, key: str | None) -> None:
        """Use ``key`` from now on: a new socket carries it (see ``new_conversation``)."""
        key = check_conversation_key(key) if key is not None else None
        if self._closed:
            raise ConnectionLostError("closed", "the client was closed")
        self._conversation = key
        self.url = with_conversation(self.url, key)
        if self._runner is None:
            return
        if self._runner.done() and not isinstance(self._fatal, AuthError):
            self._fatal = None  # reconnect=False and the socket is gone: a new one, once
            self._runner = asyncio.create_task(self._run())
        generation = self.generation
        self._switching = True
        self._connected.clear()
        if self._ws is not None:
            await self._ws.close()
        while True:
            await self._ready()
            if self.generation != generation:
                return
            self._connected.clear()  # the old socket's restore came late: wait on

    async def _ready(self) -> None:
        """Return once connected; wait up to timeout_s while a reconnect is under way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while not self._connected.is_set():
            if self._closed:
                raise ConnectionLostError("closed", "the client was closed")
            if self._fatal is not None:
                raise self._fatal
            if self._runner is None:
                raise ConnectionLostError("not_connected", "call connect() first")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                last = f" (last: {self._last_error.message})" if self._last_error else ""
                raise ConnectionLostError(
                    "not_connected", f"not connected to {self.url} within "
                                     f"{self.timeout_s:g} s{last}") from None

    async def _run(self) -> None:
        assert self._http is not None
        attempt = 0
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while not self._closed:
            url = self.url
            try:
                ws = await self._http.ws_connect(
                    url, protocols=(SUBPROTOCOL,), headers=headers,
                    heartbeat=self.heartbeat_s, timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
            except aiohttp.WSServerHandshakeError as exc:
                error = from_handshake(exc.status, self.url)
                if isinstance(error, AuthError):
                    self._fatal = error
                    self._changed.set()
                    return
                self._last_error = error
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                self._last_error = ConnectionLostError(
                    "connection_lost", f"cannot reach {self.url}: {exc or type(exc).__name__}")
            else:
                if await self._serve(ws, url):
                    attempt = 0
            if self._closed:
                return
            if self._switching:  # to another conversation: at once
                self._switching = False
                continue
            if not self.reconnect:
                self._fatal = self._last_error or ConnectionLostError(
                    "connection_lost", f"the connection to {self.url} closed")
                self._changed.set()
                return
            delay = min(self.max_delay_s, self.min_delay_s * 2 ** attempt)
            attempt += 1
            log.info("rkstream: reconnecting to %s in %.2f s", self.url, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse[bool], url: str) -> bool:
        """Run one connection until it closes; True if it got its session."""
        try:
            first = await ws.receive(timeout=self.timeout_s)
            event = self._decode(first)
            if event is None or event.get("type") != "session.created":
                raise ConnectionLostError("connection_lost", f"no session.created: {first!r}")
            session = SessionInfo.of(event)
        except Exception as exc:  # noqa: BLE001 - a malformed first event: try again later
            self._last_error = exc if isinstance(exc, RkstreamClientError) else \
                ConnectionLostError("connection_lost", f"{self.url}: {exc!r}")
            await ws.close()
            return False
        if url != self.url:  # the conversation changed while this one connected
            await ws.close()
            return True
        self._switching = False
        self._ws = ws
        self.session = session
        self.generation += 1
        restore = self._spawn(self._restore(self.generation))
        ending: tuple[aiohttp.WSMsgType, Any, Any] | None = None
        try:
            while True:
                message = await ws.receive()
                if message.type in _ENDS:
                    ending = (message.type, message.data, message.extra)
                    break
                event = None
                try:
                    event = self._decode(message)
                    if event is not None:
                        self._dispatch(event)
                except Exception as exc:  # noqa: BLE001 - one bad event must not end the reader
                    log.warning("rkstream: skipped a malformed event from %s (%s: %s): %.200r",
                                self.url, type(exc).__name__, exc, message.data)
                    self._unreadable_done(event, exc)
        finally:
            restore.cancel()
            self._ws = None
            self._connected.clear()
            self._changed.set()
            self._last_error = ConnectionLostError("connection_lost", _why(url, ending))
            self._fail_all(self._last_error)
            for camera in self._cameras.values():
                camera._wake_up()
        return True

    async def _restore(self, generation: int) -> None:
        """Apply what outlives a connection again, then let callers in."""
        try:
            if self._wanted:
                await self._call("session", "", {"type": "session.update",
                                                 "session": self._wanted})
            for image_id, upload in list(self._uploads.items()):
                await self._call("image", image_id, {**upload, "image_id": image_id})
        except RkstreamClientError as exc:
            log.warning("rkstream: restoring the session after a reconnect: %s", exc)
        if generation == self.generation and self._ws is not None:
            self._connected.set()
            self._changed.set()
            for camera in self._cameras.values():
                camera._wake_up()

    # -- the wire ------------------------------------------------------------------------
    def _decode(self, message: Any) -> dict[str, Any] | None:
        if message.type == aiohttp.WSMsgType.BINARY:
            event = msgpack.unpackb(message.data, raw=False)
        elif message.type == aiohttp.WSMsgType.TEXT:
            import json

            event = json.loads(message.data)
        else:
            return None
        return event if isinstance(event, dict) else None

    async def _send(self, event: Mapping[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionLostError("not_connected", f"not connected to {self.url}")
        try:
            await ws.send_bytes(msgpack.packb(event, use_bin_type=True))
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise ConnectionLostError("connection_lost", f"sending to {self.url}: {exc}") from None

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind, rid = event.get("type"), event.get("request_id")
        if rid is not None and rid in self._requests:
            if kind == "error":  # a failed request's Done carries the same error
                return
            typed = parse_event(event, self.server_id)
            if typed is not None:
                self._requests[rid]._push(typed)
                if kind == "response.done":
                    del self._requests[rid]
        elif kind == "error":
            body = event.get("error") or {}
            error = from_body(body, rid)
            eid = str(body.get("event_id", ""))
            if eid in self._calls:
                self._settle(eid, error=error)
            elif eid.startswith("frame:") and eid[6:].rpartition(":")[0] in self._cameras:
                self._cameras[eid[6:].rpartition(":")[0]]._failed(error)
            else:
                log.warning("rkstream: %s", error)
        elif kind == "image.stored":
            self._settle(self._first("image", str(event.get("image_id"))), event)
        elif kind == "session.updated":
            self._settle(self._first("session"), event.get("session"))
        elif kind == "pong":
            self._settle(self._first("ping"), None)

    def _unreadable_done(self, event: dict[str, Any] | None, exc: Exception) -> None:
        """A request whose ``response.done`` could not be read still ends (with an error)."""
        rid = event.get("request_id") if event is not None else None
        if event is None or event.get("type") != "response.done" or not isinstance(rid, str):
            return
        stream = self._requests.pop(rid, None)
        if stream is not None:
            stream._fail(RkstreamClientError("invalid_event", f"its response.done could not "
                                             f"be read: {type(exc).__name__}: {exc}",
                                             request_id=rid))

    def _first(self, kind: str, key: str | None = None) -> str | None:
        for eid, (k, kk, _) in self._calls.items():
            if k == kind and (key is None or kk == key):
                return eid
        return None

    def _settle(self, eid: str | None, value: Any = None,
                error: RkstreamClientError | None = None) -> None:
        if eid is None or eid not in self._calls:
            return
        future = self._calls.pop(eid)[2]
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    async def _call(self, kind: str, key: str, event: dict[str, Any]) -> Any:
        """Send an event that gets one answer (or an error with its event_id)."""
        eid = f"{kind}:{next(self._ids)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[eid] = (kind, key, future)
        try:
            await self._send({**event, "event_id": eid})
            return await future
        finally:
            self._calls.pop(eid, None)

    def _fail_all(self, error: RkstreamClientError) -> None:
        requests, self._requests = list(self._requests.values()), {}
        for stream in requests:
            stream._fail(error)
        calls, self._calls = list(self._calls.values()), {}
        for _, _, future in calls:
            if not future.done():
                future.set_exception(error)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
