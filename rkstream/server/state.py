"""The application's shared state, stored under one typed AppKey.

It names no front end: the WebSocket side registers its connections as
:class:`Closable`, so an HTTP dialect never pulls in the socket stack.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from rkstream.config import Settings
from rkstream.errors import SHUTTING_DOWN, RequestError
from rkstream.models.pool import ModelPool, Resident
from rkstream.server.ops.metrics import Metrics


class Closable(Protocol):
    """Something that ends its open requests at shutdown (a WebSocket connection)."""

    async def shutdown(self) -> None: ...


@dataclass
class AppState:
    settings: Settings
    pool: ModelPool | None = None
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    connections: weakref.WeakSet[Closable] = field(default_factory=weakref.WeakSet)
    metrics: Metrics = field(default_factory=Metrics)
    per_address: Counter[str] = field(default_factory=Counter)
    closing: bool = False

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
