"""Ollama embeddings: ``POST /api/embed`` and the legacy ``POST /api/embeddings``.

- ``/api/embed``: ``input`` a string or a list of strings; ``truncate``,
  ``keep_alive`` and ``options`` are accepted (an input longer than the
  context is refused with ``context_overflow`` whatever ``truncate`` says:
  this server does not cut texts). Missing or empty ``input`` loads nothing
  and answers ``{"model", "embeddings": []}``, as Ollama does. The answer has
  ``total_duration``, ``load_duration`` (0: the model is always loaded) and
  ``prompt_eval_count``.
- ``/api/embeddings``: ``prompt`` → ``{"embedding": [...]}``; an empty or
  missing prompt gives ``{"embedding": []}``.

Vectors are L2-normalised. Errors are ``{"error": "..."}`` with the table's
status.
"""

from __future__ import annotations

import time

from aiohttp import web

from rkstream.errors import RequestError
from rkstream.server.http.embed_input import embed, read_input
from rkstream.server.http.ollama.models import model_name
from rkstream.server.http.runner import read_body
from rkstream.server.state import STATE, ready


def _error(exc: RequestError) -> web.Response:
    return web.json_response({"error": exc.message}, status=exc.spec.status)


async def embed_route(request: web.Request) -> web.Response:
    """``POST /api/embed``."""
    started = time.perf_counter_ns()
    state = request.app[STATE]
    try:
        f = await read_body(request)
        ready(state)
        assert state.engine is not None
        model = model_name(state, f.string("model"))
        raw = f.get("input")
        if raw is None or raw == "" or raw == []:
            return web.json_response({"model": model, "embeddings": []})
        items = read_input(f, "input", tokens=False)
        assert items is not None
        f.flag("truncate")
        f.get("keep_alive")
        f.mapping("options")
        result = await embed(state, "ollama_embed", items)
    except RequestError as exc:
        return _error(exc)
    return web.json_response({
        "model": model, "embeddings": result.vectors,
        "total_duration": time.perf_counter_ns() - started, "load_duration": 0,
        "prompt_eval_count": result.tokens})


async def embeddings_route(request: web.Request) -> web.Response:
    """``POST /api/embeddings`` (legacy)."""
    state = request.app[STATE]
    try:
        f = await read_body(request)
        ready(state)
        assert state.engine is not None
        f.string("model")
        f.get("keep_alive")
        f.mapping("options")
        prompt = f.string("prompt")
        if not prompt:
            return web.json_response({"embedding": []})
        result = await embed(state, "ollama_embed", [prompt])
    except RequestError as exc:
        return _error(exc)
    return web.json_response({"embedding": result.vectors[0]})


def add_embed_routes(app: web.Application) -> None:
    """Serve the Ollama embedding endpoints on ``app``."""
    app.router.add_post("/api/embed", embed_route)
    app.router.add_post("/api/embeddings", embeddings_route)
