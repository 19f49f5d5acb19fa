"""Typed client events of protocol v1, as the parser returns them.

These are plain values: no socket, no engine. See docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

PROTOCOL = "rkstream.v1"
SUBPROTOCOL_MSGPACK = "rkstream.v1+msgpack"
SUBPROTOCOL_JSON = "rkstream.v1+json"

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "rgb", "bgr")


@dataclass(frozen=True)
class Params:
    """Generation parameters; None means "use the session or server default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] | None = None

    def over(self, base: Params) -> Params:
        """Return ``base`` with every field this object sets taking precedence."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, object]:
        """The fields that are set, as protocol values (stop as a list)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An inline image (``data``) or a reference to an uploaded one (``image_id``)."""

    data: bytes | None = None
    image_id: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class FramePart:
    """The newest frame of a camera stream, taken when the request's vision step runs."""

    stream: str


Part = TextPart | ImagePart | FramePart


@dataclass(frozen=True)
class Message:
    role: Role
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        """The message's text parts joined; images are not included."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    def text_with(self, placeholder: str) -> str:
        """The text with ``placeholder`` where each image or frame part stands."""
        return "".join(p.text if isinstance(p, TextPart) else placeholder
                       for p in self.parts)

    @property
    def has_media(self) -> bool:
        return any(not isinstance(p, TextPart) for p in self.parts)

    @property
    def media(self) -> tuple[ImagePart | FramePart, ...]:
        return tuple(p for p in self.parts if not isinstance(p, TextPart))


@dataclass(frozen=True)
class SessionUpdate:
    instructions: str | None = None
    params: Params = field(default_factory=Params)
    clear_instructions: bool = False
    event_id: str | None = None


@dataclass(frozen=True)
class ResponseCreate:
    request_id: str
    input: tuple[Message, ...]
    params: Params = field(default_factory=Params)
    stream: bool = True
    event_id: str | None = None

    @property
    def has_media(self) -> bool:
        return any(m.has_media for m in self.input)


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
