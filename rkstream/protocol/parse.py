"""Turn one decoded client message into a typed event, or refuse it.

Every refusal is a ProtocolError with a code from docs/protocol.md and a
message that names the field and says what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rkstream.core.fields import Fields, kind_of
from rkstream.core.messages import (
    IMAGE_FORMATS,
    ROLES,
    FramePart,
    ImagePart,
    Message,
    Part,
    TextPart,
)
from rkstream.core.params import PARAM_RULES, Params
from rkstream.core.request import GenerationRequest
from rkstream.core.tool_fields import read_tool_calls, read_tool_choice, read_tools
from rkstream.errors import ProtocolError
from rkstream.protocol.events import (
    ClientEvent,
    FrameAppend,
    ImageUpload,
    Ping,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
)

MAX_ID_CHARS = 128
# /ws names its parameters as the Params fields do.
PARAMS = {name: name for name in PARAM_RULES}


def parse_params(f: Fields) -> Params:
    """Parse a ``params`` object: unknown names are refused, every value is checked."""
    values = f.params(PARAMS)
    f.finish("unknown_param")
    return Params(**values)


def _parse_image_fields(f: Fields) -> dict[str, Any]:
    fmt = f.choice("format", IMAGE_FORMATS)
    width = f.integer("width", minimum=1, maximum=1 << 16)
    height = f.integer("height", minimum=1, maximum=1 << 16)
    if fmt in ("rgb", "bgr") and (width is None or height is None):
        raise f.error("missing_field",
                      f"{f.where}: raw {fmt} pixels need width and height", f.path("width"))
    return {"format": fmt, "width": width, "height": height}


def _parse_part(f: Fields, raw: Any, where: str) -> Part:
    p = f.child(raw, where)
    kind = p.choice("type", ("text", "image", "frame"), required=True)
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
    else:
        part = FramePart(stream=p.string("stream", required=True, max_chars=MAX_ID_CHARS,
                                      non_empty=True) or "")
    p.finish()
    return part


def _parse_message(f: Fields, raw: Any, where: str) -> Message:
    m = f.child(raw, where)
    role = m.choice("role", ROLES, required=True)
    content = m.get("content", role != "assistant")
    parts: tuple[Part, ...]
    if isinstance(content, str):
        parts = (TextPart(content),)
    elif isinstance(content, (list, tuple)):
        parts = tuple(
            _parse_part(m, item, f"{m.path('content')}[{i}]") for i, item in enumerate(content)
        )
    elif content is None and role == "assistant" and m.obj.get("tool_calls"):
        parts = ()  # an answer that was only tool calls
    else:
        raise m.wrong(m.path("content"), "a string or a list of parts", content)
    tool_calls = read_tool_calls(m) if role == "assistant" else ()
    call_id = name = None
    if role == "tool":
        call_id = m.string("tool_call_id", max_chars=256)
        name = m.string("name", max_chars=64)
    m.finish()
    return Message(role=role, parts=parts, tool_calls=tool_calls,  # type: ignore[arg-type]
                   tool_call_id=call_id, tool_name=name)


def _session_update(f: Fields) -> SessionUpdate:
    session = f.mapping("session", required=True)
    assert session is not None
    s = f.child(session, "session")
    clear = "instructions" in session and session["instructions"] is None
    instructions = s.string("instructions")
    raw_params = s.mapping("params")
    params = parse_params(s.child(raw_params, "session.params")) if raw_params else Params()
    model = _model_name(s, "model")
    s.finish()
    return SessionUpdate(instructions=instructions, params=params, clear_instructions=clear,
                         model=model, event_id=f.event_id)


def _model_name(f: Fields, name: str) -> str | None:
    value = f.string(name)
    if value is not None and not 1 <= len(value) <= 256:
        raise f.error("invalid_field", f"{name} must be a model name of 1 to 256 characters",
                      name)
    return value


def _response_create(f: Fields) -> ResponseCreate:
    messages = f.array("input", required=True) or []
    if not messages:
        raise f.error("invalid_field", "input must hold at least one message", "input")
    parsed = tuple(_parse_message(f, m, f"input[{i}]") for i, m in enumerate(messages))
    raw_params = f.mapping("params")
    params = parse_params(f.child(raw_params, "params")) if raw_params else Params()
    stream = f.flag("stream", True)
    tools = read_tools(f)
    choice = read_tool_choice(f, tools)
    parallel = f.flag("parallel_tool_calls", True)
    thinking = f.flag("enable_thinking")
    model = _model_name(f, "model")
    assert f.request_id is not None and stream is not None  # request_id: read before dispatch
    request = GenerationRequest(parsed, params, stream=stream, tools=tools, tool_choice=choice,
                                parallel_tool_calls=parallel is not False,
                                enable_thinking=thinking, model=model)
    return ResponseCreate(request_id=f.request_id, request=request, event_id=f.event_id)


def _response_cancel(f: Fields) -> ResponseCancel:
    assert f.request_id is not None
    return ResponseCancel(request_id=f.request_id, event_id=f.event_id)


def _image_upload(f: Fields) -> ImageUpload:
    image_id = f.string("image_id", max_chars=MAX_ID_CHARS, non_empty=True)
    data = f.blob("data", required=True) or b""
    return ImageUpload(data=data, image_id=image_id, event_id=f.event_id,
                       **_parse_image_fields(f))


def _frame_append(f: Fields) -> FrameAppend:
    stream = f.string("stream", required=True, max_chars=MAX_ID_CHARS, non_empty=True) or ""
    seq = f.integer("seq", required=True, minimum=0)
    ts_ns = f.integer("ts_ns", minimum=0)
    data = f.blob("data", required=True) or b""
    assert seq is not None
    return FrameAppend(stream=stream, seq=seq, ts_ns=ts_ns, data=data, event_id=f.event_id,
                       **_parse_image_fields(f))


def _ping(f: Fields) -> Ping:
    return Ping(event_id=f.event_id)


_PARSERS: dict[str, tuple[Callable[[Fields], ClientEvent], bool]] = {
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
                            f"an event must be an object with a string type, not {kind_of(obj)}")
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
    f = Fields(obj, "", event_id=event_id, binary=binary)
    f.used.add("type")
    f.string("event_id", max_chars=MAX_ID_CHARS)
    if needs_id:
        f.request_id = f.string("request_id", required=True, max_chars=MAX_ID_CHARS,
                             non_empty=True)
    event = parser(f)
    f.finish()
    return event
