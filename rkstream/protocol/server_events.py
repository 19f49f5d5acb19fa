"""Builders for every server event of protocol v1, as plain maps."""

from __future__ import annotations

from typing import Any

from ..errors import ProtocolError, RequestError

SERVER_ERROR_CODES = frozenset({"runtime_error", "internal_error", "shutting_down",
                                "encoder_error", "queue_full"})


def error_type_of(code: str) -> str:
    """``server_error`` for conditions on the server, else ``invalid_request_error``."""
    return "server_error" if code in SERVER_ERROR_CODES else "invalid_request_error"


def error_body(
    code: str, message: str, *, error_type: str = "invalid_request_error",
    param: str | None = None, event_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": error_type, "code": code, "message": message}
    if param is not None:
        body["param"] = param
    if event_id is not None:
        body["event_id"] = event_id
    return body


def error_body_of(exc: RequestError) -> dict[str, Any]:
    event_id = exc.event_id if isinstance(exc, ProtocolError) else None
    return error_body(exc.code, exc.message, error_type=exc.error_type, param=exc.param,
                      event_id=event_id)


def error(body: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "error", "error": body}
    if request_id is not None:
        event["request_id"] = request_id
    return event


def session_created(
    session_id: str, server_version: str, model: dict[str, Any], limits: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "session.created",
        "session_id": session_id,
        "protocol": "rkstream.v1",
        "server": {"name": "rkstream", "version": server_version},
        "model": model,
        "limits": limits,
    }


def session_updated(session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.updated", "session": session}


def response_created(request_id: str, queue_position: int) -> dict[str, Any]:
    return {"type": "response.created", "request_id": request_id,
            "queue_position": queue_position}


def response_progress(request_id: str, stage: str,
                      queue_position: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.progress", "request_id": request_id,
                             "stage": stage}
    if queue_position is not None:
        event["queue_position"] = queue_position
    return event


def text_delta(request_id: str, seq: int, delta: str) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "request_id": request_id, "seq": seq,
            "delta": delta}


def pong() -> dict[str, Any]:
    return {"type": "pong"}
