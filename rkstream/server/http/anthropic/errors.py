"""Anthropic's error shape, and every failure under /v1/messages in it.

Anthropic answers ``{"type": "error", "error": {"type", "message"}}`` with
its own error types, one per status: invalid_request_error (400 and the other
4xx), authentication_error 401, permission_error 403, not_found_error 404,
request_too_large 413, rate_limit_error 429, api_error 500, timeout_error
504, overloaded_error 529. The status and type come from the one error table
(:mod:`rkstream.errors`); only a full queue moves, from 429 to 529
``overloaded_error``: the server is busy, which is what Anthropic's clients
(and their retries) expect it to say, not that this client asked too often.

The middleware (:func:`rkstream.server.http.errors.error_middleware`) answers
what is left under /v1/messages: unknown routes, wrong methods, a refusal
raised by count_tokens, and bugs. It sits inside the OpenAI middleware,
which would otherwise answer these paths in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from rkstream.errors import RequestError
from rkstream.server.http.errors import error_middleware

PREFIX = "/v1/messages"
OVERLOADED = 529  # Anthropic's status for "busy, retry"

# Anthropic's error type by HTTP status; any other 4xx is invalid_request_error.
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
          504: "timeout_error", OVERLOADED: "overloaded_error"}


def is_anthropic(path: str) -> bool:
    """Whether ``path`` is one of Anthropic's routes (answered in its shape)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def status_of(exc: RequestError) -> int:
    """The table's status; a full queue is Anthropic's 529."""
    return OVERLOADED if exc.code == "queue_full" else exc.spec.status


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(exc: RequestError, status: int | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``."""
    kind = error_type(status or status_of(exc))
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_response(exc: RequestError, status: int | None = None) -> web.Response:
    """A refusal in Anthropic's shape, with Retry-After where the table has one."""
    retry = exc.spec.retry_after_s
    headers = {"Retry-After": str(retry)} if retry is not None else None
    status = status or status_of(exc)
    return web.json_response(error_body(exc, status), status=status, headers=headers)


anthropic_error_middleware = error_middleware(
    is_anthropic, error_response, "POST /v1/messages and POST /v1/messages/count_tokens")
