"""The application's shared state, stored under one typed AppKey.

It names no front end: the WebSocket side registers its connections as
:class:`Closable`, so an HTTP dialect never pulls in the socket stack.
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from rkstream.config import Settings
from rkstream.errors import SHUTTING_DOWN, RequestError
from rkstream.models.pool import ModelPool, Resident
from rkstream.server.ops.metrics import SERVER_PHASES, Metrics


class Closable(Protocol):
    """Something that ends its open requests at shutdown (a WebSocket connection)."""

    async def shutdown(self) -> None: ...

    @property
    def idle(self) -> bool:
        """No request of its own is open (a drain may close it)."""
        ...

    async def go_away(self, until: float) -> None:
        """Close the socket with 1001 (going away) once its queued events are written
        (waiting until ``until`` at most, by the loop's clock): the client reconnects
        elsewhere."""
        ...


# What the server is doing, for /health, /metrics and the drain: serving;
# draining (503 on /health, every request still served); stopping (new work
# refused with shutting_down while open requests finish).
PHASES = SERVER_PHASES


def server_id(settings: Settings) -> str:
    """``server.id``, else ``<hostname>:<port>``: stable across restarts, distinct per board."""
    return settings.server.id or f"{socket.gethostname()}:{settings.server.port}"


@dataclass
class AppState:
    settings: Settings
    pool: ModelPool | None = None
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    connections: weakref.WeakSet[Closable] = field(default_factory=weakref.WeakSet)
    metrics: Metrics = field(default_factory=Metrics)
    per_address: Counter[str] = field(default_factory=Counter)
    phase: str = "serving"  # one of PHASES
    phase_since_s: float = 0.0  # time.monotonic() when the phase began
    http_inflight: int = 0  # API calls being answered (not /ws, /health or /metrics)
    drain: asyncio.Task[None] | None = None  # the drain, once begun (server/ops/drain.py)

    def enter(self, phase: str) -> None:
        """Begin ``phase`` (one of PHASES), now."""
        if phase != self.phase:
            self.phase = phase
            self.phase_since_s = time.monotonic()

    @property
    def closing(self) -> bool:
        """New work is refused: a drain's stop, or the app shutting down."""
        return self.phase == "stopping"

    @property
    def server_id(self) -> str:
        return server_id(self.settings)

    @property
    def open_requests(self) -> int:
        """Requests queued or running on the loaded models."""
        return sum(r.scheduler.queue_depth + r.scheduler.running for r in self.residents)

    @property
    def busy(self) -> bool:
        """Whether any request is still open, on an HTTP API or a WebSocket."""
        return self.http_inflight > 0 or any(not c.idle for c in list(self.connections))

    @property
    def residents(self) -> list[Resident]:
        """The models loaded now (the metrics read them)."""
        return self.pool.residents if self.pool is not None else []


STATE = web.AppKey("rkstream_state", AppState)


def ready(state: AppState) -> ModelPool:
    """The model pool, refusing new work while the server starts or stops.

    Raises:
        RequestError: ``shutting_down``, or ``model_loading`` before the pool exists.
    """
    if state.closing:
        raise RequestError("shutting_down", SHUTTING_DOWN)
    if state.pool is None:
        raise RequestError("model_loading", "the server is starting; retry shortly")
    return state.pool
