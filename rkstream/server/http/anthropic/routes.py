"""The Anthropic Messages API, served from the same scheduler and engines as /ws.

Routes (see :func:`add_anthropic_routes`):

- ``POST /v1/messages``: a message, whole or streamed as Anthropic's typed
  SSE events (dialect.py), through the one HTTP runner: the same queue,
  cancel on disconnect, limits and metrics (``api="anthropic_messages"``)
  as every other front end. Requests: schema.py.
- ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}`` for the same
  body without ``max_tokens``. The conversation is rendered as a generation
  would render it (the chat format, tools, system prompt, thinking switch)
  and counted by the engine: exactly on llama.cpp (the model's tokenizer),
  estimated at 3 bytes a token on RKLLM (its runtime has no tokenizer call).
  Each image counts the vision encoder's rows. ``X-Rkstream-Token-Count``
  says ``exact`` or ``estimate``.

``x-api-key`` and ``Authorization: Bearer`` both carry the key when
``server.api_keys`` is set (rkstream/server/ops/access.py); ``anthropic-version``
and ``anthropic-beta`` are accepted and not checked. Errors have Anthropic's
shape and types (errors.py).
"""

from __future__ import annotations

import uuid

from aiohttp import web

from rkstream.core.fields import Fields
from rkstream.core.messages import IMAGE_PLACEHOLDER
from rkstream.core.params import Params, effective_sampling
from rkstream.engines.prompt import render_prompt
from rkstream.models.pool import Resident
from rkstream.server.http.anthropic.dialect import AnthropicDialect
from rkstream.server.http.anthropic.errors import anthropic_error_middleware
from rkstream.server.http.anthropic.schema import parse_messages
from rkstream.server.http.runner import read_body, serve
from rkstream.server.jobs import make_job
from rkstream.server.media import Media
from rkstream.server.state import STATE, AppState, ready

COUNT_HEADER = "X-Rkstream-Token-Count"


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    return await serve(request, AnthropicDialect())


async def count_tokens(request: web.Request) -> web.Response:
    """``POST /v1/messages/count_tokens``: refusals are raised, and answered in
    Anthropic's shape by the middleware."""
    state = request.app[STATE]
    body = await read_body(request)
    lease = await ready(state).acquire(body.string("model"))  # its tokenizer counts
    try:
        return await _count(state, body, lease.model)
    finally:
        lease.release()


async def _count(state: AppState, body: Fields, model: Resident) -> web.Response:
    engine = model.engine
    fmt = engine.chat_format
    settings = state.settings
    req = parse_messages(body, settings.limits.max_tokens,
                         fmt.markup.think if fmt is not None else None, counting=True).request
    # max_tokens 1: the count is of the conversation as it is, not cut to leave room.
    sampling = effective_sampling(settings.sampling, settings.limits.max_tokens, req.params,
                                  Params(max_tokens=1))
    job = make_job(engine, settings, f"count-{uuid.uuid4().hex[:12]}", req, sampling)
    images = len(req.media)
    rows = 0
    if images:  # refused as a generation would be: no encoder, too many images
        Media(settings.limits.max_images_per_request, lambda: False).check(
            req, model.vision is not None)
        assert model.vision is not None
        rows = images * model.vision.encoder.n_tokens  # each image is that many rows
    # Without a chat format the engine (RKLLM's runtime, llama.cpp's GGUF template)
    # wraps this transcript itself: a count of it is close, not exact.
    text = job.prompt.text if job.prompt is not None else \
        render_prompt(job.messages, job.instructions)[0]
    count, exact = await engine.count_tokens(
        text.replace(IMAGE_PLACEHOLDER, "") if images else text)
    exact = exact and job.prompt is not None and not images
    count += rows
    return web.json_response({"input_tokens": count},
                             headers={COUNT_HEADER: "exact" if exact else "estimate"})


def add_anthropic_routes(app: web.Application) -> None:
    """Register /v1/messages and its error middleware. Call after
    :func:`~rkstream.server.http.openai.routes.add_openai_routes`: the later
    middleware is the inner one, so it answers these paths first."""
    app.middlewares.append(anthropic_error_middleware)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
