"""The OpenAI-compatible HTTP API, served from the same scheduler and engines as /ws.

Routes (see :func:`add_openai_routes`):

- ``POST /v1/chat/completions``: chat, whole or streamed (SSE), with
  ``stream_options.include_usage``. Images come as ``image_url`` parts holding
  ``data:image/...;base64,`` URLs and go through the vision encoder; remote
  http(s) URLs are refused (the server never fetches them). ``tools`` are
  declared to the model in its chat format, and its calls come back as
  ``tool_calls`` (streamed as argument pieces; ``finish_reason``
  ``tool_calls``); ``tool_choice`` ``required`` or a named function is asked
  for in the prompt, not enforced; ``parallel_tool_calls`` false ends the
  answer after the first call. A thinking model's reasoning comes back as
  ``reasoning_content`` (and ``reasoning``); ``chat_template_kwargs.
  enable_thinking`` or a top-level ``enable_thinking`` switches it.
  ``response_format`` and the like are accepted and ignored. ``seed`` is
  accepted but not applied (the engines take it from the config).
- ``POST /v1/completions``: the legacy text endpoint: the prompt goes to the
  model raw, without the chat format (on RKLLM without a chat format, the
  runtime's own template still wraps it). ``suffix`` (fill-in-the-middle)
  works where the model's GGUF has FIM tokens or its chat family defines FIM
  markers (Qwen2.5-Coder, also on RKLLM); elsewhere it is refused with
  ``fim_unsupported``.
- ``POST /v1/responses``: OpenAI Responses, stateless (responses.py and
  responses_schema.py): ``input`` as a string or items, ``instructions``,
  function tools, ``reasoning.effort``; streamed as the Responses event
  sequence. Routes beneath it (retrieving a stored response) are 404s that
  say the server keeps none.
- ``POST /v1/embeddings``: vectors from the engine's ``embed`` (embeddings.py).
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the one loaded model.

Every error under /v1 has OpenAI's shape ``{"error": {message, type, param,
code}}`` (see errors.py): 400 bad input, 404 unknown model or route,
413 body over ``limits.max_message_bytes``, 429 with ``Retry-After`` when the
queue is full, 503 while the model loads, 500 only for bugs and runtime
failures.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from rkstream.models.pool import ModelPool
from rkstream.models.table import ModelSpec
from rkstream.server.http.openai.dialect import OpenAIDialect
from rkstream.server.http.openai.embeddings import embeddings
from rkstream.server.http.openai.errors import openai_error_middleware
from rkstream.server.http.openai.responses import add_responses_routes
from rkstream.server.http.runner import serve
from rkstream.server.state import STATE, ready

CREATED: web.AppKey[int] = web.AppKey("rkstream_openai_created", int)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    return await serve(request, OpenAIDialect(chat=True))


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions`` (the prompt goes through the chat template)."""
    return await serve(request, OpenAIDialect(chat=False))


def _model_object(request: web.Request, pool: ModelPool, spec: ModelSpec) -> dict[str, Any]:
    resident = pool.resident(spec.name)
    vision = spec.encoder_file is not None or (resident is not None
                                               and resident.engine.info.vision)
    return {
        "id": spec.name,
        "object": "model",
        "created": request.app[CREATED],
        "owned_by": "rkstream",
        # llama.cpp's way to say a model takes images; clients ignore what they don't know.
        "architecture": {"input_modalities": ["text", "image"] if vision else ["text"],
                         "output_modalities": ["text"]},
        # llama-server's router says the same: loaded now, or loads on first use.
        "status": {"value": pool.status(spec.name)},
    }


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: every served model, the default first."""
    pool = ready(request.app[STATE])
    return web.json_response({"object": "list",
                              "data": [_model_object(request, pool, s) for s in pool.table]})


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}``: one served model, or 404 ``model_not_found``."""
    pool = ready(request.app[STATE])
    spec = pool.table.find(request.match_info["model_id"])
    return web.json_response(_model_object(request, pool, spec))


def add_openai_routes(app: web.Application) -> None:
    """Register the /v1 routes and the middleware that answers /v1 errors in
    OpenAI's shape. Call before the application starts."""
    app[CREATED] = int(time.time())
    app.middlewares.append(openai_error_middleware)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    add_responses_routes(app)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id:.+}", get_model)
