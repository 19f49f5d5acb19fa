"""Ollama embeddings: ``POST /api/embed`` and the legacy ``POST /api/embeddings``.

- ``/api/embed``: ``input`` a string or a list of strings; ``truncate``,
  ``keep_alive`` and ``options`` are accepted (an input longer than the
  context is refused with ``context_overflow`` whatever ``truncate`` says:
  this server does not cut texts). Missing or empty ``input`` only loads
  the model and answers ``{"model", "embeddings": []}``, as Ollama does.
  The answer has ``total_duration``, ``load_duration`` (the model's load,
  0 when it was loaded) and ``prompt_eval_count``.
- ``/api/embeddings``: ``prompt`` → ``{"embedding": [...]}``; an empty or
  missing prompt loads the model and gives ``{"embedding": []}``.

``model`` names the model (404 ``model 'x' not found`` for an unknown one)
and ``keep_alive`` works as on /api/chat.

Vectors are L2-normalised. Errors are ``{"error": "..."}`` with the table's
status.
"""

from __future__ import annotations

import time

from aiohttp import web

from rkstream.errors import RequestError
from rkstream.server.http.embed_input import embed, read_input
from rkstream.server.http.ollama.keep_alive import read_keep_alive
from rkstream.server.http.runner import read_body
from rkstream.server.state import STATE


def _error(exc: RequestError) -> web.Response:
    return web.json_response({"error": exc.message}, status=exc.spec.status)


async def embed_route(request: web.Request) -> web.Response:
    """``POST /api/embed``."""
    started = time.perf_counter_ns()
    state = request.app[STATE]
    try:
        f = await read_body(request)
        model = f.string("model")
        raw = f.get("input")
        empty = raw is None or raw == "" or raw == []
        items = [] if empty else read_input(f, "input", tokens=False)
        assert items is not None
        f.flag("truncate")
        keep = read_keep_alive(f)
        f.mapping("options")
        embedded = await embed(state, "ollama_embed", model, items, keep)
    except RequestError as exc:
        return _error(exc)
    name = model or embedded.model
    if empty:  # Ollama's way to load a model for embedding
        return web.json_response({"model": name, "embeddings": []})
    return web.json_response({
        "model": name, "embeddings": embedded.result.vectors,
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": int(embedded.load_ms * 1e6),
        "prompt_eval_count": embedded.result.tokens})


async def embeddings_route(request: web.Request) -> web.Response:
    """``POST /api/embeddings`` (legacy)."""
    state = request.app[STATE]
    try:
        f = await read_body(request)
        model = f.string("model")
        keep = read_keep_alive(f)
        f.mapping("options")
        prompt = f.string("prompt")
        embedded = await embed(state, "ollama_embed", model, [prompt] if prompt else [], keep)
    except RequestError as exc:
        return _error(exc)
    vectors = embedded.result.vectors
    return web.json_response({"embedding": vectors[0] if vectors else []})


def add_embed_routes(app: web.Application) -> None:
    """Serve the Ollama embedding endpoints on ``app``."""
    app.router.add_post("/api/embed", embed_route)
    app.router.add_post("/api/embeddings", embeddings_route)
