"""Every failure under /v1 in OpenAI's error shape, in one middleware
(:func:`rkstream.server.http.errors.error_middleware`); /v1/messages has
Anthropic's own, which answers first."""

from __future__ import annotations

from aiohttp import web

from rkstream.errors import RequestError
from rkstream.server.http.errors import error_middleware
from rkstream.server.http.openai.dialect import json_error


def _render(exc: RequestError, status: int | None) -> web.Response:
    response = json_error(exc)
    if status is not None:
        response.set_status(status)
    return response


openai_error_middleware = error_middleware(
    lambda path: path == "/v1" or path.startswith("/v1/"), _render,
    "/v1/models, /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings "
    "and /v1/messages")
