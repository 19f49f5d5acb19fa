"""Typed client events of protocol v1, as the parser returns them.

These are plain values: no socket, no engine. See docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rkstream.core.params import Params
from rkstream.core.request import GenerationRequest

PROTOCOL = "rkstream.v1"
SUBPROTOCOL_MSGPACK = f"{PROTOCOL}+msgpack"
SUBPROTOCOL_JSON = f"{PROTOCOL}+json"


@dataclass(frozen=True)
class SessionUpdate:
    instructions: str | None = None
    params: Params = field(default_factory=Params)
    clear_instructions: bool = False
    model: str | None = None  # the model the session's requests go to (None: unchanged)
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCreate:
    """``response.create``: the request's id on this socket and the request itself."""

    request_id: str
    request: GenerationRequest
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCancel:
    request_id: str
    event_id: str | None = None


@dataclass(frozen=True)
class ImageUpload:
    data: bytes
    image_id: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class FrameAppend:
    stream: str
    seq: int
    data: bytes
    ts_ns: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class Ping:
    event_id: str | None = None


ClientEvent = (
    SessionUpdate | ResponseCreate | ResponseCancel | ImageUpload | FrameAppend | Ping
)
