"""Typed server events, the session's facts, and whole answers: small frozen
dataclasses built from the wire maps of docs/protocol.md ("Server events").

Every dataclass keeps the event's map as ``raw``, so a field this client does not
name yet is still there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rkstream.client.errors import RkstreamClientError, from_body


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class Created:
    """``response.created``: the server took the request; 0 = running now or next."""

    request_id: str
    queue_position: int


@dataclass(frozen=True)
class Queued:
    """``response.queued``: a waiting request's place in the queue changed
    (``queue_position`` as in :class:`Created`: 0 = running now or next).

    Servers before this event send only :class:`Created`'s position."""

    request_id: str
    queue_position: int


@dataclass(frozen=True)
class Started:
    """``response.started``: the request got a model instance; the vision step (if
    any) and the prefill come next. Servers before this event do not send it."""

    request_id: str


@dataclass(frozen=True)
class ModelLoading:
    """``model.loading``: the request waits while its model loads."""

    request_id: str
    model: str
    queue_position: int


@dataclass(frozen=True)
class ModelLoaded:
    """``model.loaded``: the model is ready after ``load_ms``."""

    request_id: str
    model: str
    load_ms: float


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer's text (complete UTF-8)."""

    request_id: str
    seq: int
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning (``<think>``), never part of the text."""

    request_id: str
    seq: int
    text: str


@dataclass(frozen=True)
class ToolCall:
    """One complete tool call; ``arguments`` is JSON text as the model wrote it.

    ``problem`` is set when the call is broken (bad JSON, an undeclared tool, cut off).
    """

    request_id: str
    seq: int
    index: int
    call_id: str
    name: str
    arguments: str
    problem: str | None = None

    def parsed_arguments(self) -> Any:
        """The arguments as Python values (raises ``ValueError`` on broken JSON)."""
        return json.loads(self.arguments)


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    """``response.done.timings``, in milliseconds unless the name says otherwise."""

    total_ms: float | None = None
    ttft_ms: float | None = None
    queued_ms: float | None = None
    load_ms: float | None = None
    vision_ms: float | None = None
    prompt_n: float | None = None
    prompt_ms: float | None = None
    predicted_n: float | None = None
    predicted_ms: float | None = None
    predicted_per_second: float | None = None
    cache_n: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class FrameInfo:
    """Which camera frame a request used (``response.done.frame``).

    ``seq`` is the newest frame when the server looked; ``encoded_seq`` the one whose
    embedding the model got (older when the newest was judged unchanged);
    ``superseded`` counts frames the server dropped for newer ones. ``age_ms`` is how
    old the frame whose embedding the model got was when the prefill began (server
    clock, from its arrival), ``taken_age_ms`` the same for the frame taken (``seq``);
    a still scene makes ``age_ms`` grow while ``taken_age_ms`` stays small. Both are
    None from servers that do not say.
    """

    stream: str
    seq: int
    ts_ns: int | None = None
    superseded: int = 0
    encoded_seq: int | None = None
    encoded_ts_ns: int | None = None
    unchanged: int = 0
    age_ms: float | None = None
    taken_age_ms: float | None = None


@dataclass(frozen=True)
class Done:
    """``response.done``: the request's end, exactly once.

    ``status`` is ``completed``, ``incomplete`` (max_tokens), ``cancelled`` or
    ``failed``; ``error`` is the typed exception when the server gave one. ``text``,
    ``reasoning`` and ``tool_calls`` are filled only for ``stream=False``.
    ``server_id`` names the server that answered (``session.created.server.id`` of
    the socket the request ran on; None from a server that names none).
    """

    request_id: str
    status: str
    finish_reason: str | None
    usage: Usage
    timings: Timings
    model: str | None = None
    error: RkstreamClientError | None = None
    text: str | None = None
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    frame: FrameInfo | None = None
    server_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


Event = (Created | Queued | Started | ModelLoading | ModelLoaded | TextDelta | ReasoningDelta
         | ToolCall | Done)


def _tool_call(rid: str, ev: Mapping[str, Any], seq: int = -1) -> ToolCall:
    problem = ev.get("problem")
    return ToolCall(rid, int(ev.get("seq", seq)), int(ev.get("index", 0)),
                    str(ev.get("call_id", ev.get("id", ""))), str(ev.get("name", "")),
                    str(ev.get("arguments", "")), str(problem) if problem else None)


def _done(rid: str, ev: Mapping[str, Any], server_id: str | None) -> Done:
    usage = ev.get("usage") or {}
    times = ev.get("timings") or {}
    timings = Timings(**{name: _float(times.get(name)) for name in (
        "total_ms", "ttft_ms", "queued_ms", "load_ms", "vision_ms", "prompt_n", "prompt_ms",
        "predicted_n", "predicted_ms", "predicted_per_second", "cache_n")}, raw=times)
    frame = ev.get("frame")
    info = None
    if isinstance(frame, Mapping):
        info = FrameInfo(str(frame.get("stream", "")), int(frame.get("seq", -1)),
                         frame.get("ts_ns"), int(frame.get("superseded") or 0),
                         frame.get("encoded_seq"), frame.get("encoded_ts_ns"),
                         int(frame.get("unchanged") or 0), _float(frame.get("age_ms")),
                         _float(frame.get("taken_age_ms")))
    error = from_body(ev["error"], rid) if isinstance(ev.get("error"), Mapping) else None
    calls = tuple(_tool_call(rid, c, i) for i, c in enumerate(ev.get("tool_calls") or ()))
    model = ev.get("model")
    return Done(rid, str(ev.get("status", "")), ev.get("finish_reason"),
                Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0),
                      int(usage.get("reasoning_tokens") or 0)),
                timings, str(model) if model is not None else None, error, ev.get("text"),
                ev.get("reasoning"), calls, info, server_id, ev)


def parse_event(ev: Mapping[str, Any], server_id: str | None = None) -> Event | None:
    """The typed event for one of a request's server events.

    None for a type this client does not know: a newer server's events are skipped,
    so old clients and new servers (and the reverse) work together. ``server_id`` is
    put in a :class:`Done`.
    """
    kind, rid = ev.get("type"), str(ev.get("request_id", ""))
    if kind == "response.output_text.delta":
        return TextDelta(rid, int(ev["seq"]), str(ev["delta"]))
    if kind == "response.output_reasoning.delta":
        return ReasoningDelta(rid, int(ev["seq"]), str(ev["delta"]))
    if kind == "response.output_tool_call":
        return _tool_call(rid, ev)
    if kind == "response.done":
        return _done(rid, ev, server_id)
    if kind == "response.created":
        return Created(rid, int(ev.get("queue_position", 0)))
    if kind == "response.queued":
        return Queued(rid, int(ev.get("queue_position", 0)))
    if kind == "response.started":
        return Started(rid)
    if kind == "model.loading":
        return ModelLoading(rid, str(ev.get("model", "")), int(ev.get("queue_position", 0)))
    if kind == "model.loaded":
        return ModelLoaded(rid, str(ev.get("model", "")), float(ev.get("load_ms", 0)))
    return None


@dataclass(frozen=True)
class Answer:
    """A whole answer (:meth:`AsyncClient.complete`): what the deltas said, and the end."""

    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    done: Done

    def __str__(self) -> str:  # print(answer) prints what the model said
        return self.text

    @property
    def status(self) -> str:
        return self.done.status

    @property
    def usage(self) -> Usage:
        return self.done.usage

    @property
    def timings(self) -> Timings:
        return self.done.timings

    @property
    def server_id(self) -> str | None:
        """The server that answered (see :attr:`Done.server_id`)."""
        return self.done.server_id


@dataclass(frozen=True)
class FrameAnswer(Answer):
    """An answer about a camera frame: ``frame`` says which one the model saw, and
    ``image`` is that frame as given to ``send()`` (None if it is no longer kept)."""

    frame: FrameInfo | None = None
    image: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class ModelInfo:
    """One served model, from ``session.created``."""

    id: str
    engine: str
    vision: bool
    loaded: bool
    default: bool
    context_length: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, m: Mapping[str, Any]) -> ModelInfo:
        ctx = m.get("context_length")
        return cls(str(m.get("id", "")), str(m.get("engine", "")), bool(m.get("vision")),
                   bool(m.get("loaded", True)), bool(m.get("default")),
                   int(ctx) if isinstance(ctx, int) else None, m)


@dataclass(frozen=True)
class SessionInfo:
    """The facts of ``session.created``: the server, its models and its limits.

    ``server`` is ``{name, version, id}``: ``id`` (also :attr:`server_id`) names the
    board behind a load balancer. ``conversation`` is the conversation key the
    server got (None: none, or a server from before keys). ``limits`` holds
    ``max_tokens``, ``max_queue``, ``max_message_bytes``... as the server announced
    them; ``vision`` its camera-frame policy.
    """

    session_id: str
    protocol: str
    server: Mapping[str, Any]
    model: ModelInfo
    models: tuple[ModelInfo, ...]
    limits: Mapping[str, Any]
    vision: Mapping[str, Any]
    conversation: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def server_id(self) -> str | None:
        """``server.id``: which server this socket reached (None if it names none)."""
        sid = self.server.get("id")
        return str(sid) if sid is not None else None

    @classmethod
    def of(cls, ev: Mapping[str, Any]) -> SessionInfo:
        server = ev.get("server")
        key = ev.get("conversation")
        return cls(str(ev.get("session_id", "")), str(ev.get("protocol", "")),
                   server if isinstance(server, Mapping) else {},
                   ModelInfo.of(ev.get("model") or {}),
                   tuple(ModelInfo.of(m) for m in ev.get("models") or ()),
                   ev.get("limits") or {}, ev.get("vision") or {},
                   str(key) if key is not None else None, ev)


# -- building a request's input ---------------------------------------------------------
Messages = str | Sequence[Mapping[str, Any]]


def as_input(messages: Messages) -> list[Mapping[str, Any]]:
    """A user's text as one user message; a list of ``{role, content}`` as it is."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = list(messages)
    if not out:
        raise ValueError("messages is empty: give a text or at least one message")
    return out


def image_part(image: bytes | str, format: str | None = None) -> dict[str, Any]:
    """A content part for an image: JPEG/PNG/WebP bytes, or an uploaded ``image_id``."""
    if isinstance(image, str):
        return {"type": "image", "image_id": image}
    part: dict[str, Any] = {"type": "image", "data": bytes(image)}
    if format:
        part["format"] = format
    return part


def frame_part(stream: str) -> dict[str, Any]:
    """A content part for the newest frame of a camera stream."""
    return {"type": "frame", "stream": stream}
