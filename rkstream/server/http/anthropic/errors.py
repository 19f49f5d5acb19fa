"""Anthropic's error shape, and every failure under /v1/messages in it.

Anthropic answers ``{"type": "error", "error": {"type", "message"}}`` with
its own error types, one per status: invalid_request_error (400 and the other
4xx), authentication_error 401, permission_error 403, not_found_error 404,
request_too_large 413, rate_limit_error 429, api_error 500, timeout_error
504, overloaded_error 529. The status and type come from the one error table
(:mod:`rkstream.errors`); only a full queue moves, from 429 to 529
``overloaded_error``: the server is busy, which is what Anthropic's clients
(and their retries) expect it to say, not that this client asked too often.

Generations answer their own refusals through the runner; the middleware
catches what is left under /v1/messages: unknown routes, wrong methods, a
refusal raised by count_tokens, and bugs (500, logged). It sits inside the
OpenAI middleware, which would otherwise answer these paths in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from rkstream.errors import RequestError
from rkstream.log import server_log

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


def _from_http(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        return error_response(RequestError(
            "not_found", f"no such endpoint: {request.method} {request.path}; see "
                         "POST /v1/messages and POST /v1/messages/count_tokens"))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = exc.headers.get("Allow", "")
        response = error_response(RequestError(
            "method_not_allowed", f"{request.method} is not allowed on {request.path}; "
                                  f"use {allow}"))
        response.headers["Allow"] = allow
        return response
    return error_response(RequestError("http_error", exc.reason or exc.text or "HTTP error"),
                          exc.status)


@web.middleware
async def anthropic_error_middleware(request: web.Request, handler: Handler
                                     ) -> web.StreamResponse:
    """Answer every failure under /v1/messages in Anthropic's shape."""
    if not is_anthropic(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except RequestError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(request, exc)
    except ConnectionError:
        raise  # the client went away; aiohttp ends the request quietly
    except Exception as exc:  # a bug: report it, keep serving
        server_log.exception("%s %s failed", request.method, request.path)
        return error_response(RequestError("internal_error",
                                           f"internal error: {type(exc).__name__}: {exc}"))
