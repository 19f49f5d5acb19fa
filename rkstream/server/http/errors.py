"""One error middleware per dialect, built the same way for all.

Generations answer their own refusals through the runner; a dialect's
middleware catches what is left on its paths: unknown routes (404), wrong
methods (405), a refusal raised by an endpoint outside a generation, and
bugs (500, logged), each answered in that dialect's error shape.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from rkstream.errors import RequestError
from rkstream.log import server_log

# A refusal in the dialect's shape, with the given status (None: the table's).
Render = Callable[[RequestError, int | None], web.Response]


def error_middleware(applies: Callable[[str], bool], render: Render,
                     endpoints: str) -> Middleware:
    """The middleware answering failures on the paths ``applies`` accepts.

    Args:
        applies: whether a path is the dialect's.
        render: the dialect's error response.
        endpoints: what a 404 points to ("/v1/models, /v1/chat/completions ...").
    """
    def from_http(request: web.Request, exc: web.HTTPException) -> web.Response:
        if isinstance(exc, web.HTTPNotFound):
            return render(RequestError("not_found", f"no such endpoint: {request.method} "
                                                    f"{request.path}; see {endpoints}"), None)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allow = exc.headers.get("Allow", "")
            response = render(RequestError(
                "method_not_allowed", f"{request.method} is not allowed on {request.path}; "
                                      f"use {allow}"), None)
            response.headers["Allow"] = allow
            return response
        return render(RequestError("http_error", exc.reason or exc.text or "HTTP error"),
                      exc.status)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not applies(request.path):
            return await handler(request)
        try:
            return await handler(request)
        except RequestError as exc:
            return render(exc, None)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return from_http(request, exc)
        except ConnectionError:
            raise  # the client went away; aiohttp ends the request quietly
        except Exception as exc:  # a bug: report it, keep serving
            server_log.exception("%s %s failed", request.method, request.path)
            return render(RequestError("internal_error",
                                       f"internal error: {type(exc).__name__}: {exc}"), None)

    return middleware
