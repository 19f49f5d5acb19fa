"""CORS for the HTTP APIs, so browser clients on other origins can call them.

``server.cors_origins`` is a comma-separated list of origins, or ``*`` for
any; empty (the default) sends no CORS headers, so a page on another site
cannot read the answers. Preflight (OPTIONS) requests are answered here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CORS_ORIGIN = web.RequestKey("rkstream_cors_origin", str)

# The Anthropic SDKs send their key and version in headers of their own.
ALLOW_HEADERS = ("Authorization, Content-Type, X-Requested-With, X-API-Key, "
                 "Anthropic-Version, Anthropic-Beta, Anthropic-Dangerous-Direct-Browser-Access, "
                 "X-Rkstream-Conversation")
# A page may read which server answered, and the conversation key it echoes.
EXPOSE_HEADERS = "X-Rkstream-Server, X-Rkstream-Conversation"
ALLOW_METHODS = "GET, POST, OPTIONS"


def cors_middleware(origins: frozenset[str]) -> Middleware:
    """A middleware that allows ``origins`` (``*`` = any) on every HTTP route."""

    def allowed(origin: str | None) -> str | None:
        if origin is None or not origins:
            return None
        if "*" in origins:
            return "*"
        return origin if origin.rstrip("/") in origins else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = allowed(request.headers.get("Origin"))
        if request.method == "OPTIONS" and origin is not None and \
                "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": "600", "Vary": "Origin"})
        if origin is not None:
            request[CORS_ORIGIN] = origin  # added when the response is prepared
        return await handler(request)

    return middleware


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: streaming answers (SSE, NDJSON) are prepared inside
    their handler, so the headers are added here rather than after it."""
    origin = request.get(CORS_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers["Vary"] = "Origin"
