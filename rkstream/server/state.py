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
from rkstream.engines.base import Engine
from rkstream.errors import SHUTTING_DOWN, RequestError
from rkstream.scheduler import Scheduler
from rkstream.server.ops.metrics import Metrics
from rkstream.vision.service import VisionService


class Closable(Protocol):
    """Something that ends its open requests at shutdown (a WebSocket connection)."""

    async def shutdown(self) -> None: ...


@dataclass
class AppState:
    settings: Settings
    engine: Engine | None = None
    scheduler: Scheduler | None = None
    vision: VisionService | None = None
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    connections: weakref.WeakSet[Closable] = field(default_factory=weakref.WeakSet)
    metrics: Metrics = field(default_factory=Metrics)
    per_address: Counter[str] = field(default_factory=Counter)
    closing: bool = False
    load_error: str | None = None


STATE = web.AppKey("rkstream_state", AppState)


def ready(state: AppState) -> None:
    """Refuse new work while the models load or the server stops.

    Raises:
        RequestError: ``shutting_down`` or ``model_loading`` (with the load
            failure's reason, when loading failed).
    """
    if state.closing:
        raise RequestError("shutting_down", SHUTTING_DOWN)
    if state.engine is None or state.scheduler is None:
        raise RequestError("model_loading", state.load_error
                           or "the model is still loading; retry shortly")
