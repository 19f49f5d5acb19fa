"""The aiohttp application: routes, startup and shutdown.

Startup (cleanup_ctx): make the model pool and load the default model
(in the background for ``rkstream serve``); other models load on demand.
A drain (SIGTERM under ``rkstream serve``, or POST /admin/drain; see
server/ops/drain.py) comes first when there is one: /health 503 draining for
server.drain_s, then new work refused while open requests finish.
Shutdown, in this order:
1. on_shutdown: mark the server closing, cancel every connection's requests
   (each gets a response.done, status cancelled, code shutting_down), then
   close every WebSocket with 1001.
2. cleanup: the pool stops loading; for each loaded model the scheduler
   refuses new work, cancels queued requests, aborts running ones and waits
   for them; its vision encoder is released (RKNNLite.release) and its engine
   frees every native handle (rkllm_destroy) on its owner thread.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypedDict

from aiohttp import WSCloseCode, web

from rkstream.config import Settings, parsed, vision_preset
from rkstream.engines.base import Engine
from rkstream.errors import EngineInitError, RequestError
from rkstream.log import server_log
from rkstream.models.encoders import VisionFactory
from rkstream.models.pool import EngineFactory, ModelPool
from rkstream.resources import static_dir
from rkstream.server.http.anthropic.routes import add_anthropic_routes
from rkstream.server.http.ollama.routes import add_ollama_routes
from rkstream.server.http.openai.routes import add_openai_routes
from rkstream.server.http.rkllm_demo import add_rkllm_demo_routes
from rkstream.server.ops.access import access_middleware
from rkstream.server.ops.affinity import add_server_headers, affinity_middleware
from rkstream.server.ops.client_address import client_address_middleware
from rkstream.server.ops.cors import add_cors_headers, cors_middleware
from rkstream.server.ops.drain import add_admin_routes
from rkstream.server.ops.health import health
from rkstream.server.ops.metrics import METRICS, metrics_handler
from rkstream.server.state import STATE, AppState
from rkstream.server.ws.connection import CLOSE_S
from rkstream.server.ws.handler import websocket_handler
from rkstream.vision.cpus import decode_cpus
from rkstream.vision.service import VisionService


def default_engine(settings: Settings) -> Engine:
    from rkstream.engines.select import make_engine

    # Runtime 1.2 takes the image tags at init, so the engine is told them up front.
    tags = vision_preset(settings.vision).tags if settings.vision.encoder else None
    return make_engine(settings, tags)


def _vision_factory(state: AppState) -> VisionFactory:
    def load(settings: Settings) -> VisionService:  # blocking: the pool runs it off the loop
        from rkstream.vision.loader import load_encoder

        vision = settings.vision
        preset = vision_preset(vision)
        encoder = load_encoder(vision.encoder, preset, core_mask=vision.core_mask,
                               threads=vision.threads)
        server_log.info("vision encoder %s ready: %dx%d input, %d tokens x %d per image",
                        vision.encoder, *encoder.input_size, encoder.n_tokens, encoder.width)
        return VisionService(encoder, preset, cache_bytes=vision.cache_bytes,
                             max_image_pixels=vision.max_image_pixels,
                             decode_cpus=decode_cpus(vision.decode_cpus,
                                                     settings.rkllm.enabled_cpus_mask),
                             observer=state.metrics)

    return load


async def _preload(pool: ModelPool) -> None:
    """Load the default model, as at start: a failure is kept for /health and
    the next request for the model tries again."""
    try:
        await pool.preload()
    except RequestError as exc:
        server_log.error("%s", exc.message)


async def _models_ctx(app: web.Application) -> AsyncIterator[None]:
    """Make the model pool and load the default model (the language model, then
    its vision encoder, as the official demo); other models load on demand."""
    state = app[STATE]
    # What was imported and built so far lives as long as the server: out of the
    # collector's sight, a full collection mid-request walks far fewer objects.
    gc.collect()
    gc.freeze()
    pool = ModelPool(state.settings, app[ENGINE_FACTORY], _vision_factory(state), state.metrics)
    for spec in pool.table:
        server_log.info("model %s: %s%s", spec.name, spec.model_file or "(bundled, missing)",
                        " (default, loads now)" if spec.default else " (loads on request)")
    if app[LOAD_IN_BACKGROUND]:
        state.pool = pool
        task = asyncio.create_task(_preload(pool))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    else:
        try:
            await pool.preload()
        except RequestError as exc:
            await pool.close()
            if isinstance(exc.__cause__, Exception):
                raise exc.__cause__ from None  # the load's own error (EngineInitError...)
            raise EngineInitError(exc.message) from None
        state.pool = pool
        yield
    state.enter("stopping")
    await pool.close()
    server_log.info("models closed")


async def _close_sockets(app: web.Application) -> None:
    state = app[STATE]
    state.enter("stopping")
    # Every open request gets its response.done before the socket closes.
    await asyncio.gather(*(conn.shutdown() for conn in list(state.connections)))
    # All at once and bounded: a peer that never answers the close frame would
    # otherwise hold the shutdown for aiohttp's close timeout (10 s) each.
    await asyncio.gather(*(asyncio.wait_for(
        ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown"), CLOSE_S)
        for ws in list(state.sockets)), return_exceptions=True)


def _static_dir(settings: Settings) -> Path | None:
    return static_dir(settings.server.static_dir)


# How the server around the app must run. handler_cancellation: a client that
# disconnects cancels its handler at once, which aborts its generation (HTTP).
class ServerOptions(TypedDict):
    handler_cancellation: bool


SERVER_OPTIONS = ServerOptions(handler_cancellation=True)

ENGINE_FACTORY: web.AppKey[EngineFactory] = web.AppKey("rkstream_engine_factory")
LOAD_IN_BACKGROUND = web.AppKey("rkstream_load_in_background", bool)


def make_app(settings: Settings, engine_factory: EngineFactory = default_engine, *,
             load_in_background: bool = False) -> web.Application:
    """Build the application; the models load when the app starts.

    Args:
        settings: the effective settings.
        engine_factory: builds (not loads) the engine; tests pass fakes.
        load_in_background: serve at once and load the default model
            meanwhile (``rkstream serve`` does); /health answers 503
            "loading", then 200, or 503 "failed" with the reason. Otherwise
            startup waits for the load and a failure stops it.
    """
    server = settings.server
    origins = frozenset(parsed("server.cors_origins", server.cors_origins))
    middlewares = [cors_middleware(origins)] if origins else []
    trusted = parsed("server.trusted_proxies", server.trusted_proxies)
    if trusted:  # first, so every answer (a refusal too) is logged with the client's address
        middlewares.insert(0, client_address_middleware(trusted))
    middlewares.append(access_middleware(parsed("server.api_keys", server.api_keys),
                                         parsed("server.allowed_origins",
                                                server.allowed_origins)))
    state = AppState(settings=settings)
    middlewares.append(affinity_middleware(state))
    app = web.Application(client_max_size=settings.limits.max_message_bytes,
                          middlewares=middlewares)
    if origins:
        app.on_response_prepare.append(add_cors_headers)
    app.on_response_prepare.append(add_server_headers)
    app[STATE] = state
    state.metrics.watch(state)  # live gauges are read from the state per scrape
    app[METRICS] = state.metrics
    app[ENGINE_FACTORY] = engine_factory
    app[LOAD_IN_BACKGROUND] = load_in_background
    app.cleanup_ctx.append(_models_ctx)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_handler)
    add_openai_routes(app)
    add_anthropic_routes(app)  # after OpenAI's: its middleware answers /v1/messages first
    add_ollama_routes(app)
    add_rkllm_demo_routes(app)
    add_admin_routes(app)
    static = _static_dir(settings)
    if static is not None:
        index = static / "index.html"

        async def page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(index)

        if index.is_file():
            app.router.add_get("/", page)
        app.router.add_static("/static/", static)
    return app
