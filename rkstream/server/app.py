"""The aiohttp application: routes, startup and shutdown.

Startup (cleanup_ctx): load the engine off the loop, then make the scheduler.
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

from aiohttp import WSCloseCode, web

from ..config import Settings
from ..engines.base import Engine
from ..log import server_log
from ..scheduler import Scheduler
from .cors import add_cors_headers, cors_middleware, parse_origins
from .ollama_api import add_ollama_routes
from .openai_api import add_openai_routes
from .rkllm_demo_api import add_rkllm_demo_routes
from .state import STATE, AppState
from .ws import websocket_handler

EngineFactory = Callable[[Settings], Engine]

REPO_STATIC = Path(__file__).resolve().parent.parent.parent / "static"


def default_engine(settings: Settings) -> Engine:
    from ..engines.select import make_engine

    return make_engine(settings)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    # The factory may load a library to decide which engine fits: off the loop.
    engine = await asyncio.get_running_loop().run_in_executor(
        None, app[ENGINE_FACTORY], state.settings)
    try:
        await engine.load()
    except BaseException:
        await engine.close()
        raise
    state.engine = engine
    state.scheduler = Scheduler(engine.instances, state.settings.limits.max_queue)
    server_log.info("model %s ready on %d instance(s)", engine.info.id,
                    len(engine.instances))
    yield
    state.closing = True
    await state.scheduler.close()
    await engine.close()
    server_log.info("engine closed")


async def _vision_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    settings = state.settings.vision
    if not settings.encoder:
        yield
        return
    from ..vision.loader import load_encoder
    from ..vision.service import VisionService, preset_from

    preset = preset_from(settings)
    encoder = await asyncio.get_running_loop().run_in_executor(
        None, lambda: load_encoder(settings.encoder, preset, core_mask=settings.core_mask,
                                   threads=settings.threads))
    state.vision = VisionService(encoder, preset, settings, state.settings.limits)
    server_log.info("vision encoder %s ready: %dx%d input, %d tokens x %d per image",
                    settings.encoder, *encoder.input_size, encoder.n_tokens, encoder.width)
    yield
    await state.vision.close()


async def _close_sockets(app: web.Application) -> None:
    state = app[STATE]
    state.closing = True
    # Every open request gets its response.done before the socket closes.
    await asyncio.gather(*(conn.shutdown() for conn in list(state.connections)))
    for ws in list(state.sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.engine is None or state.closing:
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ok", "model": state.engine.info.as_dict()})


def _static_dir(settings: Settings) -> Path | None:
    folder = Path(settings.server.static_dir) if settings.server.static_dir else REPO_STATIC
    return folder if folder.is_dir() else None


ENGINE_FACTORY: web.AppKey[EngineFactory] = web.AppKey("rkstream_engine_factory")


def make_app(settings: Settings, engine_factory: EngineFactory = default_engine
             ) -> web.Application:
    """Build the application; the engine loads when the app starts."""
    origins = parse_origins(settings.server.cors_origins)
    app = web.Application(client_max_size=settings.limits.max_message_bytes,
                          middlewares=[cors_middleware(origins)] if origins else [])
    if origins:
        app.on_response_prepare.append(add_cors_headers)
    app[STATE] = AppState(settings=settings)
    app[ENGINE_FACTORY] = engine_factory
    app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.append(_vision_ctx)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/health", health)
    add_openai_routes(app)
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
