"""Errors of the OpenAI-compatible API, in OpenAI's shape.

Every refusal under ``/v1`` is one :class:`APIError` (status, code, message,
param), turned into ``{"error": {"message", "type", "param", "code"}}`` in one
place: :func:`openai_error_middleware`. The project's :class:`RequestError`
codes (docs/protocol.md) are reused, with an HTTP status per code.

Codes used only here: ``request_too_large`` (413), ``not_found`` (404, no such
route), ``method_not_allowed`` (405), ``model_not_found`` (404),
``model_loading`` (503), ``remote_image_url`` and ``fim_unsupported`` (400).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import RequestError
from ..log import server_log
from ..protocol.server_events import SERVER_ERROR_CODES
from .state import STATE

# Codes that are not the client's fault, or that a retry may fix.
_STATUS_BY_CODE: dict[str, int] = {
    "queue_full": 429,
    "too_many_requests": 429,
    "model_loading": 503,
    "shutting_down": 503,
    "runtime_error": 500,
    "encoder_error": 500,
    "internal_error": 500,
}
# The openai SDK retries 429 and 5xx; Retry-After tells it when.
_RETRY_AFTER_S = {"queue_full": "1", "too_many_requests": "1", "model_loading": "1",
                  "shutting_down": "1"}


class APIError(Exception):
    """A refusal answered in OpenAI's error shape.

    Attributes:
        status: the HTTP status.
        code: the machine-readable code (docs/protocol.md, or the codes above).
        message: a sentence a person can act on.
        param: the request field at fault, when there is one.
        error_type: OpenAI's ``type`` (``invalid_request_error`` or ``server_error``).
        headers: extra response headers (``Retry-After``, ``Allow``).
    """

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 error_type: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type or (
            "server_error" if status >= 500 or code in SERVER_ERROR_CODES
            else "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` object, for a response or an SSE event."""
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        """A JSON response with this error's status and headers."""
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def from_code(code: str, message: str, *, param: str | None = None,
              error_type: str | None = None) -> APIError:
    """An :class:`APIError` for a protocol error code, with the status that fits it."""
    status = _STATUS_BY_CODE.get(code, 400)
    headers = {"Retry-After": _RETRY_AFTER_S[code]} if code in _RETRY_AFTER_S else None
    return APIError(status, code, message, param=param, error_type=error_type,
                    headers=headers)


def from_request_error(exc: RequestError) -> APIError:
    """Convert the project's :class:`RequestError` (queue full, vision, ...)."""
    return from_code(exc.code, exc.message, param=exc.param, error_type=exc.error_type)


def _from_http(request: web.Request, exc: web.HTTPException) -> APIError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[STATE].settings.limits.max_message_bytes
        return APIError(413, "request_too_large",
                        f"the request body is larger than this server's limit of {limit} "
                        "bytes (limits.max_message_bytes); send smaller images")
    if isinstance(exc, web.HTTPNotFound):
        return APIError(404, "not_found",
                        f"no such endpoint: {request.method} {request.path}; see /v1/models, "
                        "/v1/chat/completions and /v1/completions")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = exc.headers.get("Allow", "")
        return APIError(405, "method_not_allowed",
                        f"{request.method} is not allowed on {request.path}; use {allow}",
                        headers={"Allow": allow})
    return APIError(exc.status, "http_error", exc.reason or exc.text or "HTTP error")


@web.middleware
async def openai_error_middleware(request: web.Request, handler: Handler
                                  ) -> web.StreamResponse:
    """Answer every failure under /v1 in OpenAI's error shape; other paths pass through."""
    if not (request.path == "/v1" or request.path.startswith("/v1/")):
        return await handler(request)
    try:
        return await handler(request)
    except APIError as exc:
        return exc.response()
    except RequestError as exc:
        return from_request_error(exc).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(request, exc).response()
    except ConnectionError:
        raise  # the client went away; aiohttp ends the request quietly
    except Exception as exc:  # a bug: report it, keep serving
        server_log.exception("%s %s failed", request.method, request.path)
        return APIError(500, "internal_error",
                        f"internal error: {type(exc).__name__}: {exc}").response()


async def read_json(request: web.Request) -> Any:
    """The request body as JSON.

    Raises:
        APIError: 413 above ``limits.max_message_bytes``, 400 for a body that
            is not UTF-8 JSON.
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _from_http(request, exc) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise APIError(400, "invalid_encoding",
                       f"the request body is not valid JSON: {exc}") from None
