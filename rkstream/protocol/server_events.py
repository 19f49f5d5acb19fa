"""Builders for every server event of protocol v1, as plain maps."""

from __future__ import annotations

from typing import Any, Literal

from rkstream.errors import ProtocolError, RequestError, error_spec
from rkstream.protocol.events import PROTOCOL


def error_body(code: str, message: str, *, param: str | None = None,
               event_id: str | None = None) -> dict[str, Any]:
    """The ``error`` object; its type (client or server) comes from the error table."""
    body: dict[str, Any] = {"type": error_spec(code).error_type, "code": code,
                            "message": message}
    if param is not None:
        body["param"] = param
    if event_id is not None:
        body["event_id"] = event_id
    return body


def error_body_of(exc: RequestError) -> dict[str, Any]:
    event_id = exc.event_id if isinstance(exc, ProtocolError) else None
    return error_body(exc.code, exc.message, param=exc.param, event_id=event_id)


def error(body: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "error", "error": body}
    if request_id is not None:
        event["request_id"] = request_id
    return event


def session_created(
    session_id: str, server_version: str, model: dict[str, Any], limits: dict[str, Any],
    models: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``model`` is the default model; ``models`` every model the server serves."""
    return {
        "type": "session.created",
        "session_id": session_id,
        "protocol": PROTOCOL,
        "server": {"name": "rkstream", "version": server_version},
        "model": model,
        "models": models if models is not None else [model],
        "limits": limits,
    }


def model_loading(request_id: str, model: str, queue_position: int) -> dict[str, Any]:
    """The request waits while its model loads (``queue_position`` loads ahead of it)."""
    return {"type": "model.loading", "request_id": request_id, "model": model,
            "queue_position": queue_position}


def model_loaded(request_id: str, model: str, load_ms: float) -> dict[str, Any]:
    """The model is loaded; the request goes to its queue."""
    return {"type": "model.loaded", "request_id": request_id, "model": model,
            "load_ms": round(load_ms, 3)}


def session_updated(session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.updated", "session": session}


def response_created(request_id: str, queue_position: int) -> dict[str, Any]:
    return {"type": "response.created", "request_id": request_id,
            "queue_position": queue_position}


def response_queued(request_id: str, queue_position: int) -> dict[str, Any]:
    """A waiting request moved up: ``queue_position`` requests wait ahead of it."""
    return {"type": "response.queued", "request_id": request_id,
            "queue_position": queue_position}


def response_started(request_id: str) -> dict[str, Any]:
    """The request holds a model instance: its vision step and prefill come next."""
    return {"type": "response.started", "request_id": request_id}


DeltaKind = Literal["text", "reasoning"]
_DELTA_TYPES: dict[DeltaKind, str] = {"text": "response.output_text.delta",
                                      "reasoning": "response.output_reasoning.delta"}


def text_delta(request_id: str, seq: int, delta: str) -> dict[str, Any]:
    return delta_event("text", request_id, seq, delta)


def delta_event(kind: DeltaKind, request_id: str, seq: int, delta: str) -> dict[str, Any]:
    """A piece of the answer's text, or of its reasoning."""
    return {"type": _DELTA_TYPES[kind], "request_id": request_id, "seq": seq, "delta": delta}


def tool_call(request_id: str, index: int, call_id: str, name: str, arguments: str,
              problem: str | None) -> dict[str, Any]:
    """``response.output_tool_call``: one whole call (its ``seq`` is added when sent)."""
    event: dict[str, Any] = {"type": "response.output_tool_call", "request_id": request_id,
                             "index": index, "call_id": call_id, "name": name,
                             "arguments": arguments}
    if problem is not None:
        event["problem"] = problem
    return event


def pong() -> dict[str, Any]:
    return {"type": "pong"}
