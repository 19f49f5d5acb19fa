"""GET /health: 200 while some instance can serve; 503 with a status and a reason otherwise.

Load balancers and Kubernetes probes read the status code; people read
``status`` (``ok``, ``degraded``: some instances restart; ``loading``,
``restarting``, ``failed``, ``shutting_down``), ``reason`` and ``instances``
(each one's status and the faults it survived).
"""

from __future__ import annotations

from aiohttp import web

from rkstream.server.state import STATE


async def health(request: web.Request) -> web.Response:
    """200 with the model when an instance can serve; 503 with a reason otherwise."""
    state = request.app[STATE]
    if state.closing:
        body: dict[str, object] = {"status": "shutting_down",
                                   "reason": "the server is shutting down"}
    elif state.load_error is not None:
        body = {"status": "failed", "reason": state.load_error}
    elif state.engine is None or state.scheduler is None:
        body = {"status": "loading", "reason": "the model is loading"}
    else:
        healths = [instance.health() for instance in state.engine.instances]
        serving = sum(health.status == "ok" for health in healths)
        body = {"status": "ok" if serving == len(healths) else "degraded",
                "model": state.engine.info.as_dict(), "vision": state.vision is not None,
                "instances": [health.as_dict() for health in healths]}
        if serving:
            return web.json_response(body)
        down = [health for health in healths if health.status != "ok"]
        restarting = any(health.status == "restarting" for health in down)
        body["status"] = "restarting" if restarting else "failed"
        body["reason"] = "; ".join(dict.fromkeys(health.reason for health in down if health.reason))
    return web.json_response(body, status=503)
