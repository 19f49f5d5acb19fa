"""Who may use the server: API keys, and which web pages may open /ws.

- With ``server.api_keys`` (or RKSTREAM_API_KEYS) set, every API route
  (/ws, /v1, /api, /rkllm_chat) and /admin/drain need a key: ``Authorization: Bearer KEY``,
  ``X-API-Key: KEY`` (Anthropic's clients), or ``?token=KEY`` on /ws
  (browsers cannot set headers on a WebSocket).
  A wrong or missing key is a 401 before any upgrade. Keys are compared in
  constant time. /, /static and /health stay open.
- A browser always sends ``Origin`` on a WebSocket upgrade. Unless that
  origin is the server's own or listed in ``server.allowed_origins``, the
  upgrade is refused with 403, so a page on another site cannot drive a
  board on the user's network. Clients that send no Origin (robots,
  scripts) are not affected.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from rkstream.errors import RequestError
from rkstream.server.http.anthropic.errors import error_body, is_anthropic
from rkstream.server.ops.client_address import client_address

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROTECTED = ("/ws", "/v1/", "/api/", "/rkllm_chat", "/admin/")


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every key (no early exit on a match)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def presented_key(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    if request.path == "/ws":
        return request.query.get("token", "")
    return request.headers.get("X-API-Key", "")


def refuse(request: web.Request, exc: RequestError,
           headers: dict[str, str] | None = None) -> web.Response:
    """A refusal before any handler runs, in the shape of the API the path belongs to."""
    # OpenAI clients read {"error": {...}}, Anthropic's theirs; the rest {"error": message}.
    if is_anthropic(request.path):
        body: object = error_body(exc)
    elif request.path.startswith(("/v1/", "/admin/")):
        body = {"error": {"message": exc.message, "type": exc.error_type,
                          "param": None, "code": exc.code}}
    else:
        body = {"error": exc.message}
    return web.json_response(body, status=exc.spec.status, headers=headers)


def _unauthorized(request: web.Request) -> web.Response:
    message = ("a valid API key is required: send 'Authorization: Bearer <key>'"
               + (" or ?token=<key>" if request.path == "/ws" else "")
               + (" or 'x-api-key: <key>'" if is_anthropic(request.path) else ""))
    return refuse(request, RequestError("invalid_api_key", message),
                   {"WWW-Authenticate": 'Bearer realm="rkstream"'})


def _same_origin(request: web.Request, origin: str) -> bool:
    parts = urlsplit(origin)
    return parts.netloc.lower() == request.host.lower()


def access_middleware(keys: tuple[str, ...], allowed_origins: tuple[str, ...]) -> Middleware:
    origins = {o.rstrip("/") for o in allowed_origins}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith(PROTECTED) or request.method == "OPTIONS":
            return await handler(request)
        if keys and not key_matches(presented_key(request), keys):
            return _unauthorized(request)
        origin = request.headers.get("Origin")
        if path == "/ws" and origin is not None and not _same_origin(request, origin) \
                and "*" not in origins and origin.rstrip("/") not in origins:
            return refuse(request, RequestError(
                "origin_not_allowed", f"WebSocket connections from {origin} are not allowed; "
                                      "add it to server.allowed_origins"))
        return await handler(request)

    return middleware


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line, with an API key sent in the URL (``?token=``, the
    only way a browser page can send one on /ws) written as ``***``; a ``/health``
    that answered 200 is not logged. The address is the client's, through
    ``server.trusted_proxies`` (client_address.py)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path == "/health" and response.status == 200:
            return  # a balancer checks every few seconds: only the failures are news
        url = request.rel_url
        if "token" in url.query:
            url = url.update_query(token="***")
        started = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=time)
        self.logger.info('%s [%s] "%s %s HTTP/%d.%d" %d %s "%s" "%s"',
                         client_address(request) or "-", started.strftime("%d/%b/%Y:%H:%M:%S %z"),
                         request.method, url, request.version.major, request.version.minor,
                         response.status, response.body_length,
                         request.headers.get("Referer", "-"),
                         request.headers.get("User-Agent", "-"))
