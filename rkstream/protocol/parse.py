"""Turn one decoded client message into a typed event, or refuse it.

Every refusal is a ProtocolError with a code from docs/protocol.md and a
message that names the field and says what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ProtocolError
from .events import (
    IMAGE_FORMATS,
    ROLES,
    ClientEvent,
    FrameAppend,
    FramePart,
    ImagePart,
    ImageUpload,
    Message,
    Params,
    Part,
    Ping,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    TextPart,
)

MAX_ID_CHARS = 128
MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 256

# name -> (kind, lowest, highest); kind "int" refuses floats and bools.
PARAM_RANGES: dict[str, tuple[str, float, float]] = {
    "max_tokens": ("int", 1, 1 << 31),
    "temperature": ("float", 0.0, 5.0),
    "top_p": ("float", 0.0, 1.0),
    "top_k": ("int", 0, 1 << 20),
    "repeat_penalty": ("float", 0.0, 10.0),
    "frequency_penalty": ("float", -2.0, 2.0),
    "presence_penalty": ("float", -2.0, 2.0),
}
PARAM_NAMES = (*PARAM_RANGES, "stop")


class _Fields:
    """Typed access to one event map that remembers which keys were read."""

    def __init__(
        self,
        obj: Mapping[str, Any],
        where: str,
        *,
        request_id: str | None = None,
        event_id: str | None = None,
        binary: bool = True,
    ) -> None:
        self.obj = obj
        self.where = where
        self.used: set[str] = set()
        self.request_id = request_id
        self.event_id = event_id
        self.binary = binary

    def error(self, code: str, message: str, param: str | None = None) -> ProtocolError:
        return ProtocolError(
            code, message, param=param, request_id=self.request_id, event_id=self.event_id
        )

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, required: bool) -> Any:
        self.used.add(key)
        if key not in self.obj or self.obj[key] is None:
            if required:
                raise self.error(
                    "missing_field", f"{self.path(key)} is required", self.path(key)
                )
            return None
        return self.obj[key]

    def _wrong(self, key: str, expected: str, value: Any) -> ProtocolError:
        return self.error(
            "invalid_field",
            f"{self.path(key)} must be {expected}, not {_type_name(value)}",
            self.path(key),
        )

    def string(self, key: str, *, required: bool = False, max_chars: int | None = None,
            non_empty: bool = False) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        if non_empty and not value:
            raise self.error("invalid_field", f"{self.path(key)} must not be empty",
                             self.path(key))
        if max_chars is not None and len(value) > max_chars:
            raise self.error(
                "invalid_field",
                f"{self.path(key)} is {len(value)} characters long; the most is {max_chars}",
                self.path(key),
            )
        return value

    def integer(self, key: str, *, required: bool = False, minimum: int | None = None,
            maximum: int | None = None, accept_float: bool = False) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if accept_float and isinstance(value, float) and math.isfinite(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        if (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum
        ):
            raise self.error(
                "invalid_field",
                f"{self.path(key)} = {value} is out of range {_range(minimum, maximum)}",
                self.path(key),
            )
        return value

    def flag(self, key: str) -> bool | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def blob(self, key: str, *, required: bool = False) -> bytes | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise self.error(
                    "invalid_field", f"{self.path(key)} is not valid base64", self.path(key)
                ) from None
        expected = "binary (msgpack bin)" if self.binary else "a base64 string"
        raise self._wrong(key, expected, value)

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self._get(key, False)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self._wrong(key, "a map", value)
        return value

    def array(self, key: str, *, required: bool = False) -> list[Any] | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise self._wrong(key, "a list", value)
        return list(value)

    def child(self, obj: Mapping[str, Any], where: str) -> _Fields:
        return _Fields(obj, where, request_id=self.request_id, event_id=self.event_id,
                       binary=self.binary)

    def finish(self, code: str = "unknown_field") -> None:
        extra = sorted(str(k) for k in self.obj if k not in self.used)
        if extra:
            what = "parameter" if code == "unknown_param" else "field"
            raise self.error(
                code,
                f"unknown {what} {self.path(extra[0])!s}; allowed: "
                + ", ".join(sorted(self.used - {"type"})),
                self.path(extra[0]),
            )


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (bytes, bytearray)):
        return "binary"
    return {
        int: "an integer", float: "a number", str: "a string", list: "a list",
        tuple: "a list", dict: "a map",
    }.get(type(value), type(value).__name__)


def _range(lo: float | None, hi: float | None) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def parse_params(f: _Fields) -> Params:
    """Parse a ``params`` map: unknown names are refused, every value is checked."""
    values: dict[str, Any] = {}
    for name, (kind, lo, hi) in PARAM_RANGES.items():
        raw = f._get(name, False)
        if raw is None:
            continue
        if kind == "int":
            values[name] = f.integer(name, minimum=int(lo), maximum=int(hi))
            continue
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise f._wrong(name, "a number", raw)
        if not (math.isfinite(raw) and lo <= raw <= hi):
            raise f.error("invalid_param",
                          f"{f.path(name)} = {raw} is out of range {_range(lo, hi)}",
                          f.path(name))
        values[name] = float(raw)
    stops = f.array("stop")
    if stops is not None:
        if len(stops) > MAX_STOP_SEQUENCES:
            raise f.error("invalid_param",
                          f"{f.path('stop')} has {len(stops)} sequences; the most is "
                          f"{MAX_STOP_SEQUENCES}", f.path("stop"))
        for s in stops:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
                raise f.error("invalid_param",
                              f"{f.path('stop')} must hold non-empty strings of at most "
                              f"{MAX_STOP_CHARS} characters", f.path("stop"))
        values["stop"] = tuple(stops)
    f.finish("unknown_param")
    return Params(**values)


def _parse_image_fields(f: _Fields) -> dict[str, Any]:
    fmt = f.string("format")
    if fmt is not None and fmt not in IMAGE_FORMATS:
        raise f.error("invalid_field",
                      f"{f.path('format')} = {fmt!r} is not one of " + ", ".join(IMAGE_FORMATS),
                      f.path("format"))
    width = f.integer("width", minimum=1, maximum=1 << 16)
    height = f.integer("height", minimum=1, maximum=1 << 16)
    if fmt in ("rgb", "bgr") and (width is None or height is None):
        raise f.error("missing_field",
                      f"{f.where}: raw {fmt} pixels need width and height", f.path("width"))
    return {"format": fmt, "width": width, "height": height}


def _parse_part(f: _Fields, raw: Any, where: str) -> Part:
    if not isinstance(raw, Mapping):
        raise f.error("invalid_field", f"{where} must be a map, not {_type_name(raw)}", where)
    p = f.child(raw, where)
    kind = p.string("type", required=True)
    part: Part
    if kind == "text":
        part = TextPart(text=p.string("text", required=True) or "")
    elif kind == "image":
        image_id = p.string("image_id", max_chars=MAX_ID_CHARS, non_empty=True)
        data = None if image_id is not None else p.blob("data", required=True)
        if image_id is not None and "data" in raw:
            raise p.error("invalid_field", f"{where}: give data or image_id, not both",
                          p.path("data"))
        part = ImagePart(data=data, image_id=image_id, **_parse_image_fields(p))
    elif kind == "frame":
        part = FramePart(stream=p.string("stream", required=True, max_chars=MAX_ID_CHARS,
                                      non_empty=True) or "")
    else:
        raise p.error("invalid_field",
                      f"{p.path('type')} = {kind!r} is not one of text, image, frame",
                      p.path("type"))
    p.finish()
    return part


def _parse_message(f: _Fields, raw: Any, where: str) -> Message:
    if not isinstance(raw, Mapping):
        raise f.error("invalid_field", f"{where} must be a map, not {_type_name(raw)}", where)
    m = f.child(raw, where)
    role = m.string("role", required=True)
    if role not in ROLES:
        raise m.error("invalid_field",
                      f"{m.path('role')} = {role!r} is not one of " + ", ".join(ROLES),
                      m.path("role"))
    content = m._get("content", True)
    parts: tuple[Part, ...]
    if isinstance(content, str):
        parts = (TextPart(content),)
    elif isinstance(content, (list, tuple)):
        parts = tuple(
            _parse_part(m, item, f"{m.path('content')}[{i}]") for i, item in enumerate(content)
        )
    else:
        raise m._wrong("content", "a string or a list of parts", content)
    m.finish()
    return Message(role=role, parts=parts)  # type: ignore[arg-type]


def _session_update(f: _Fields) -> SessionUpdate:
    session = f.mapping("session")
    if session is None:
        raise f.error("missing_field", "session is required", "session")
    s = f.child(session, "session")
    clear = "instructions" in session and session["instructions"] is None
    instructions = s.string("instructions")
    raw_params = s.mapping("params")
    params = parse_params(s.child(raw_params, "session.params")) if raw_params else Params()
    s.finish()
    return SessionUpdate(instructions=instructions, params=params, clear_instructions=clear,
                         event_id=f.event_id)


def _response_create(f: _Fields) -> ResponseCreate:
    messages = f.array("input", required=True) or []
    if not messages:
        raise f.error("invalid_field", "input must hold at least one message", "input")
    parsed = tuple(_parse_message(f, m, f"input[{i}]") for i, m in enumerate(messages))
    raw_params = f.mapping("params")
    params = parse_params(f.child(raw_params, "params")) if raw_params else Params()
    stream = f.flag("stream")
    assert f.request_id is not None  # read by parse_event before dispatch
    return ResponseCreate(request_id=f.request_id, input=parsed, params=params,
                          stream=True if stream is None else stream, event_id=f.event_id)


def _response_cancel(f: _Fields) -> ResponseCancel:
    assert f.request_id is not None
    return ResponseCancel(request_id=f.request_id, event_id=f.event_id)


def _image_upload(f: _Fields) -> ImageUpload:
    image_id = f.string("image_id", max_chars=MAX_ID_CHARS, non_empty=True)
    data = f.blob("data", required=True) or b""
    return ImageUpload(data=data, image_id=image_id, event_id=f.event_id,
                       **_parse_image_fields(f))


def _frame_append(f: _Fields) -> FrameAppend:
    stream = f.string("stream", required=True, max_chars=MAX_ID_CHARS, non_empty=True) or ""
    seq = f.integer("seq", required=True, minimum=0)
    ts_ns = f.integer("ts_ns", minimum=0, accept_float=True)
    data = f.blob("data", required=True) or b""
    assert seq is not None
    return FrameAppend(stream=stream, seq=seq, ts_ns=ts_ns, data=data, event_id=f.event_id,
                       **_parse_image_fields(f))


def _ping(f: _Fields) -> Ping:
    return Ping(event_id=f.event_id)


_PARSERS: dict[str, tuple[Callable[[_Fields], ClientEvent], bool]] = {
    # type -> (parser, needs request_id)
    "session.update": (_session_update, False),
    "response.create": (_response_create, True),
    "response.cancel": (_response_cancel, True),
    "image.upload": (_image_upload, False),
    "frame.append": (_frame_append, False),
    "ping": (_ping, False),
}
EVENT_TYPES = tuple(_PARSERS)


def parse_event(obj: Any, *, binary: bool = True) -> ClientEvent:
    """Validate one decoded message and return its typed event.

    Args:
        obj: what the codec decoded (should be a map with a string ``type``).
        binary: whether it came as msgpack (bytes fields are bin) or JSON
            (bytes fields are base64 strings); only used in messages.

    Raises:
        ProtocolError: the event is not valid; ``request_id``/``event_id``
            carry what could be read.
    """
    if not isinstance(obj, Mapping):
        raise ProtocolError("invalid_event",
                            f"an event must be a map with a string type, not {_type_name(obj)}")
    event_id = obj.get("event_id")
    event_id = event_id if isinstance(event_id, str) else None
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_event", "an event needs a string field type",
                            param="type", event_id=event_id)
    entry = _PARSERS.get(kind)
    if entry is None:
        raise ProtocolError("unknown_event",
                            f"unknown event type {kind!r}; allowed: " + ", ".join(EVENT_TYPES),
                            param="type", event_id=event_id)
    parser, needs_id = entry
    f = _Fields(obj, "", event_id=event_id, binary=binary)
    f.used.add("type")
    f.string("event_id", max_chars=MAX_ID_CHARS)
    if needs_id:
        f.request_id = f.string("request_id", required=True, max_chars=MAX_ID_CHARS,
                             non_empty=True)
    event = parser(f)
    f.finish()
    return event
