"""GET /health: 200 while the server can serve; 503 with a status and a reason otherwise.

Load balancers and Kubernetes probes read the status code; people read
``status`` (``ok``; ``degraded``: some instances restart, or a model failed
to load; ``loading``, ``restarting``, ``failed``, ``shutting_down``),
``reason``, ``instances`` (the default model's, each one's status and the
faults it survived) and ``models`` (every configured model: ``loaded``,
``loading``, ``unloaded`` or ``failed``).

The code follows the default model: 503 while it loads at start, when its
load failed, or when none of its instances can serve. A model that is not
loaded is no fault: it loads when a request names it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from rkstream.models.pool import ModelPool
from rkstream.server.state import STATE


def _models(pool: ModelPool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for spec in pool.table:
        entry: dict[str, Any] = {"name": spec.name, "status": pool.status(spec.name),
                                 "default": spec.default}
        resident = pool.resident(spec.name)
        if resident is not None:
            entry["instances"] = [i.health().as_dict() for i in resident.engine.instances]
        elif pool.last_error(spec.name):
            entry["reason"] = pool.last_error(spec.name)
        out.append(entry)
    return out


async def health(request: web.Request) -> web.Response:
    """200 while the default model can serve or can load; 503 with a reason otherwise."""
    state = request.app[STATE]
    pool = state.pool
    if state.closing:
        body: dict[str, object] = {"status": "shutting_down",
                                   "reason": "the server is shutting down"}
        return web.json_response(body, status=503)
    if pool is None:
        return web.json_response({"status": "loading", "reason": "the server is starting"},
                                 status=503)
    default = pool.table.default
    status = pool.status(default.name)
    models = _models(pool)
    if status == "failed":
        body = {"status": "failed", "reason": pool.last_error(default.name), "models": models}
        return web.json_response(body, status=503)
    resident = pool.resident(default.name)
    if resident is None:
        if status == "loading" and not pool.residents:
            return web.json_response({"status": "loading", "reason": "the model is loading",
                                      "models": models}, status=503)
        others_failed = any(m["status"] == "failed" for m in models)
        return web.json_response({"status": "degraded" if others_failed else "ok",
                                  "models": models})
    healths = [instance.health() for instance in resident.engine.instances]
    serving = sum(health.status == "ok" for health in healths)
    others_failed = any(m["status"] == "failed" for m in models)
    body = {"status": "ok" if serving == len(healths) and not others_failed else "degraded",
            "model": resident.engine.info.as_dict(), "vision": resident.vision is not None,
            "instances": [health.as_dict() for health in healths], "models": models}
    if serving:
        return web.json_response(body)
    down = [health for health in healths if health.status != "ok"]
    restarting = any(health.status == "restarting" for health in down)
    body["status"] = "restarting" if restarting else "failed"
    body["reason"] = "; ".join(dict.fromkeys(health.reason for health in down if health.reason))
    return web.json_response(body, status=503)
