"""GET /health: 200 with the model when ready; 503 with a status and a reason otherwise.

Load balancers and Kubernetes probes read the status code; people read
``status`` (``loading``, ``failed``, ``shutting_down``) and ``reason``.
"""

from __future__ import annotations

from aiohttp import web

from rkstream.server.state import STATE


async def health(request: web.Request) -> web.Response:
    """200 with the model when ready; 503 with a reason otherwise."""
    state = request.app[STATE]
    if state.closing:
        body = {"status": "shutting_down", "reason": "the server is shutting down"}
    elif state.load_error is not None:
        body = {"status": "failed", "reason": state.load_error}
    elif state.engine is None or state.scheduler is None:
        body = {"status": "loading", "reason": "the model is loading"}
    else:
        return web.json_response({"status": "ok", "model": state.engine.info.as_dict(),
                                  "vision": state.vision is not None})
    return web.json_response(body, status=503)
