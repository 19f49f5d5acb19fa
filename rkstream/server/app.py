"""The aiohttp application: routes, startup and shutdown.

Startup (cleanup_ctx): load the engine off the loop, then the vision
encoder, then make the scheduler (in the background for ``rkstream serve``).
Shutdown, in this order:
1. on_shutdown: mark the server closing, cancel every connection's requests
   (each gets a response.done, status cancelled, code shutting_down), then
   close every WebSocket with 1001.
2. cleanup: the scheduler refuses new work, cancels queued requests, aborts
   running ones and waits for them.
3. cleanup: the vision encoder is released (RKNNLite.release), then the
   engine frees every native handle (rkllm_destroy) on its owner thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypedDict

from aiohttp import WSCloseCode, web

from rkstream.config import Settings, parsed, vision_preset
from rkstream.engines.base import Engine
from rkstream.log import server_log
from rkstream.resources import static_dir
from rkstream.scheduler import Scheduler
from rkstream.server.http.anthropic.routes import add_anthropic_routes
from rkstream.server.http.ollama.routes import add_ollama_routes
from rkstream.server.http.openai.routes import add_openai_routes
from rkstream.server.http.rkllm_demo import add_rkllm_demo_routes
from rkstream.server.ops.access import access_middleware
from rkstream.server.ops.cors import add_cors_headers, cors_middleware
from rkstream.server.ops.health import health
from rkstream.server.ops.metrics import METRICS, metrics_handler
from rkstream.server.state import STATE, AppState
from rkstream.server.ws.handler import websocket_handler
from rkstream.vision.service import VisionService

EngineFactory = Callable[[Settings], Engine]

def default_engine(settings: Settings) -> Engine:
    from rkstream.engines.select import make_engine

    # Runtime 1.2 takes the image tags at init, so the engine is told them up front.
    tags = vision_preset(settings.vision).tags if settings.vision.encoder else None
    return make_engine(settings, tags)


async def _load_vision(state: AppState) -> VisionService:
    from rkstream.vision.loader import load_encoder

    settings = state.settings.vision
    preset = vision_preset(settings)
    encoder = await asyncio.get_running_loop().run_in_executor(
        None, lambda: load_encoder(settings.encoder, preset, core_mask=settings.core_mask,
                                   threads=settings.threads))
    server_log.info("vision encoder %s ready: %dx%d input, %d tokens x %d per image",
                    settings.encoder, *encoder.input_size, encoder.n_tokens, encoder.width)
    return VisionService(encoder, preset, cache_bytes=settings.cache_bytes,
                         max_image_pixels=settings.max_image_pixels,
                         encode_ahead=settings.encode_ahead,
                         on_encode=state.metrics.vision_encode.observe)


async def _load_models(app: web.Application) -> None:
    """Load the language model, then the vision encoder (the official demo's
    order), and only then open the scheduler."""
    state = app[STATE]
    # The factory may load a library to decide which engine fits: off the loop.
    engine = await asyncio.get_running_loop().run_in_executor(
        None, app[ENGINE_FACTORY], state.settings)
    try:
        await engine.load()
        vision = await _load_vision(state) if state.settings.vision.encoder else None
    except BaseException:
        await engine.close()
        raise
    state.engine, state.vision = engine, vision
    state.scheduler = Scheduler(engine.instances, state.settings.limits.max_queue,
                                state.metrics, state.settings.limits.request_timeout_s)
    server_log.info("model %s ready on %d instance(s)", engine.info.id,
                    len(engine.instances))


async def _load_in_background(app: web.Application) -> None:
    state = app[STATE]
    try:
        await _load_models(app)
    except Exception as exc:  # reported by /health; the server keeps answering
        state.load_error = str(exc)
        server_log.error("loading the model failed: %s", exc)


async def _models_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    if app[LOAD_IN_BACKGROUND]:
        task = asyncio.create_task(_load_in_background(app))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    else:
        await _load_models(app)
        yield
    state.closing = True
    if state.scheduler is not None:
        await state.scheduler.close()
    if state.vision is not None:
        await state.vision.close()
    if state.engine is not None:
        await state.engine.close()
        server_log.info("engine closed")


async def _close_sockets(app: web.Application) -> None:
    state = app[STATE]
    state.closing = True
    # Every open request gets its response.done before the socket closes.
    await asyncio.gather(*(conn.shutdown() for conn in list(state.connections)))
    for ws in list(state.sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


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
        load_in_background: serve at once and load meanwhile (``rkstream
            serve`` does); /health answers 503 "loading", then 200, or 503
            "failed" with the reason. Otherwise startup waits for the load
            and a failure stops it.
    """
    server = settings.server
    origins = frozenset(parsed("server.cors_origins", server.cors_origins))
    middlewares = [cors_middleware(origins)] if origins else []
    middlewares.append(access_middleware(parsed("server.api_keys", server.api_keys),
                                         parsed("server.allowed_origins",
                                                server.allowed_origins)))
    app = web.Application(client_max_size=settings.limits.max_message_bytes,
                          middlewares=middlewares)
    if origins:
        app.on_response_prepare.append(add_cors_headers)
    state = app[STATE] = AppState(settings=settings)
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
    static = _static_dir(settings)
    if static is not None:
        index = static / "index.html"

        async def page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(index)

        if index.is_file():
            app.router.add_get("/", page)
        app.router.add_static("/static/", static)
    return app
