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

A drain (server/ops/drain.py) makes it 503 whatever the models say: status
``draining`` while requests are still served (so a balancer takes the server
out of rotation), then ``shutting_down``. ``server`` names the server,
``phase`` is serving, draining or stopping, and ``drain`` says since when.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from rkstream.models.pool import ModelPool
from rkstream.server.state import STATE, AppState


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
    """200 while the default model can serve or can load and no drain has begun;
    503 with a reason otherwise."""
    state = request.app[STATE]
    body, status = _models_health(state)
    body = {"status": body.pop("status"), "server": state.server_id, "phase": state.phase,
            **body}
    if state.phase == "serving":
        return web.json_response(body, status=status)
    since = time.monotonic() - state.phase_since_s
    server = state.settings.server
    body["drain"] = {"phase_s": round(since, 3), "drain_s": server.drain_s,
                     "shutdown_timeout_s": server.shutdown_timeout_s,
                     "open_requests": state.open_requests}
    if state.phase == "draining":
        left = max(0.0, server.drain_s - since)
        body["status"] = "draining"
        body["reason"] = (f"the server is draining: it serves what it is sent, and stops "
                          f"taking requests in {left:.1f} s")
        status = 503
    return web.json_response(body, status=status)


def _models_health(state: AppState) -> tuple[dict[str, Any], int]:
    """The body and status the models (and a shutdown) call for."""
    pool = state.pool
    if state.closing:
        return {"status": "shutting_down", "reason": "the server is shutting down"}, 503
    if pool is None:
        return {"status": "loading", "reason": "the server is starting"}, 503
    default = pool.table.default
    status = pool.status(default.name)
    models = _models(pool)
    if status == "failed":
        return {"status": "failed", "reason": pool.last_error(default.name),
                "models": models}, 503
    resident = pool.resident(default.name)
    if resident is None:
        if status == "loading" and not pool.residents:
            return {"status": "loading", "reason": "the model is loading",
                    "models": models}, 503
        others_failed = any(m["status"] == "failed" for m in models)
        return {"status": "degraded" if others_failed else "ok", "models": models}, 200
    healths = [instance.health() for instance in resident.engine.instances]
    serving = sum(health.status == "ok" for health in healths)
    others_failed = any(m["status"] == "failed" for m in models)
    all_ok = serving == len(healths) and not others_failed
    body: dict[str, Any] = {
        "status": "ok" if all_ok else "degraded", "model": resident.engine.info.as_dict(),
        "vision": resident.vision is not None,
        "instances": [health.as_dict() for health in healths], "models": models}
    if serving:
        return body, 200
    down = [health for health in healths if health.status != "ok"]
    restarting = any(health.status == "restarting" for health in down)
    body["status"] = "restarting" if restarting else "failed"
    body["reason"] = "; ".join(dict.fromkeys(health.reason for health in down if health.reason))
    return body, 503
