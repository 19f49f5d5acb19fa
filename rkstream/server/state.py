"""The application's shared state, stored under one typed AppKey."""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from ..config import Settings
from ..engines.base import Engine
from ..scheduler import Scheduler
from ..vision.service import VisionService
from .connection import Connection
from .metrics import Metrics


@dataclass
class AppState:
    settings: Settings
    engine: Engine | None = None
    scheduler: Scheduler | None = None
    vision: VisionService | None = None
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    connections: weakref.WeakSet[Connection] = field(default_factory=weakref.WeakSet)
    metrics: Metrics = field(default_factory=Metrics)
    per_address: Counter[str] = field(default_factory=Counter)
    closing: bool = False
    load_error: str | None = None


STATE = web.AppKey("rkstream_state", AppState)
