"""Every failure under /v1 in OpenAI's error shape, in one middleware.

Generations answer their own refusals through the runner; this catches what
is left: unknown routes (404), wrong methods (405), a refusal raised by the
model endpoints, and bugs (500, logged).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from rkstream.errors import RequestError
from rkstream.log import server_log
from rkstream.server.http.openai.dialect import json_error


def _from_http(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        return json_error(RequestError(
            "not_found", f"no such endpoint: {request.method} {request.path}; see "
                         "/v1/models, /v1/chat/completions, /v1/completions, /v1/responses "
                         "and /v1/messages"))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = exc.headers.get("Allow", "")
        response = json_error(RequestError(
            "method_not_allowed", f"{request.method} is not allowed on {request.path}; "
                                  f"use {allow}"))
        response.headers["Allow"] = allow
        return response
    response = json_error(RequestError("http_error", exc.reason or exc.text or "HTTP error"))
    response.set_status(exc.status)
    return response


@web.middleware
async def openai_error_middleware(request: web.Request, handler: Handler
                                  ) -> web.StreamResponse:
    """Answer every failure under /v1 in OpenAI's error shape; other paths pass through."""
    if not (request.path == "/v1" or request.path.startswith("/v1/")):
        return await handler(request)
    try:
        return await handler(request)
    except RequestError as exc:
        return json_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(request, exc)
    except ConnectionError:
        raise  # the client went away; aiohttp ends the request quietly
    except Exception as exc:  # a bug: report it, keep serving
        server_log.exception("%s %s failed", request.method, request.path)
        return json_error(RequestError("internal_error",
                                       f"internal error: {type(exc).__name__}: {exc}"))
