"""What a load balancer in front of several servers needs from each one.

- **A conversation key.** ``X-Rkstream-Conversation: <key>`` on any API call
  (on /ws also ``?conversation=<key>``: browsers cannot set headers on a
  WebSocket) names the conversation. The balancer hashes on it, so every turn
  reaches the board whose KV cache holds the conversation. rkstream only
  checks the key (1 to 128 URL-safe characters) and echoes it; within one
  server the scheduler already gives a request the instance whose cache holds
  most of its conversation, by content, so the key is not needed there.
- **The server's name** (``server.id``) on every answer, as
  ``X-Rkstream-Server``, so a client and an operator see which board answered.
- **API calls in flight** are counted, so a drain knows when they are done.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from rkstream.errors import RequestError
from rkstream.server.ops.access import refuse
from rkstream.server.state import STATE, AppState

CONVERSATION_HEADER = "X-Rkstream-Conversation"
CONVERSATION_PARAM = "conversation"  # on /ws only
SERVER_HEADER = "X-Rkstream-Server"
# The generation APIs whose calls a drain waits for (/ws counts its own requests).
API_PATHS = ("/v1/", "/api/", "/rkllm_chat")
# Only characters a URL never percent-encodes (RFC 3986 "unreserved"): a
# balancer copies ?conversation= into the header raw, and the query is decoded
# here, so any other character would make the two differ.
_KEY = re.compile(r"[A-Za-z0-9._~-]{1,128}")


def _given(request: web.Request) -> tuple[str | None, str | None]:
    query = request.query.get(CONVERSATION_PARAM) if request.path == "/ws" else None
    return request.headers.get(CONVERSATION_HEADER), query


def conversation_of(request: web.Request) -> str | None:
    """The request's conversation key, or None when it names none.

    Raises:
        RequestError: ``invalid_field``: a key that is empty, too long or has a
            character other than a letter, a digit, ``-``, ``.``, ``_`` or ``~``,
            or a header and a query parameter that disagree.
    """
    header, query = _given(request)
    if header is not None and query is not None and header != query:
        raise RequestError("invalid_field", f"the {CONVERSATION_HEADER} header and "
                           f"?{CONVERSATION_PARAM}= name different conversations; send one",
                           param=CONVERSATION_HEADER)
    key, name = (header, CONVERSATION_HEADER) if header is not None \
        else (query, f"?{CONVERSATION_PARAM}=")
    if key is None or _KEY.fullmatch(key):
        return key
    bad = next((c for c in key if not _KEY.fullmatch(c)), None)
    raise RequestError("invalid_field", f"{name} must be 1 to 128 letters, digits, '-', '.', "
                       f"'_' or '~' (characters a URL leaves as they are), such as a UUID; "
                       f"this one has {len(key)} characters"
                       + (f" and {bad!r} at {key.index(bad)}" if bad is not None else ""),
                       param=name)


def affinity_middleware(state: AppState) -> Middleware:
    """Refuse a malformed conversation key; count API calls while they run."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path != "/ws" and not path.startswith(API_PATHS):
            return await handler(request)
        try:
            conversation_of(request)
        except RequestError as exc:
            return refuse(request, exc)
        if path == "/ws":
            return await handler(request)
        state.http_inflight += 1
        try:
            return await handler(request)
        finally:
            state.http_inflight -= 1

    return middleware


async def add_server_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer names its server, and echoes a
    well-formed conversation key."""
    response.headers[SERVER_HEADER] = request.app[STATE].server_id
    header, query = _given(request)
    key = header if header is not None else query
    if key is not None and _KEY.fullmatch(key):
        response.headers[CONVERSATION_HEADER] = key
