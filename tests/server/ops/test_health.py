"""GET /health with instances that restart or failed (the worker-process faults)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestClient

from rkstream.config import Settings
from rkstream.server.app import make_app

from fakes import FakeEngine

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def serve(aiohttp_client: ClientFactory, instances: int
                ) -> tuple[TestClient[Any, Any], FakeEngine]:
    engine = FakeEngine(replace(Settings(), instances=instances))
    client = await aiohttp_client(make_app(Settings(), lambda s: engine))
    return client, engine


async def get(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.get("/health")
    return response.status, await response.json()


async def test_ok_lists_every_instance(aiohttp_client: ClientFactory) -> None:
    client, _ = await serve(aiohttp_client, 2)
    status, body = await get(client)
    assert status == 200 and body["status"] == "ok"
    assert body["instances"] == [{"status": "ok", "crashes": 0, "hangs": 0, "restarts": 0}] * 2


async def test_one_instance_restarting_is_degraded_but_serving(
        aiohttp_client: ClientFactory) -> None:
    client, engine = await serve(aiohttp_client, 2)
    engine._instances[1].set_status("restarting", "the worker process ended")
    status, body = await get(client)
    assert status == 200 and body["status"] == "degraded"
    assert body["instances"][1]["reason"] == "the worker process ended"


async def test_no_instance_serving_is_503_with_the_reason(aiohttp_client: ClientFactory
                                                         ) -> None:
    client, engine = await serve(aiohttp_client, 2)
    engine._instances[0].set_status("restarting", "worker 0 ended")
    engine._instances[1].set_status("failed", "the runtime hangs in-process")
    status, body = await get(client)
    assert status == 503 and body["status"] == "restarting"
    assert body["reason"] == "worker 0 ended; the runtime hangs in-process"
    engine._instances[0].set_status("failed", "the runtime hangs in-process")
    status, body = await get(client)
    assert status == 503 and body["status"] == "failed"
    assert body["reason"] == "the runtime hangs in-process"
    for instance in engine._instances:
        instance.set_status("ok")
    assert (await get(client))[0] == 200
