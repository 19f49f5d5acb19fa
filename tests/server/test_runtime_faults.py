"""A runtime that crashes or hangs costs one request and a reload, not the server.

End to end through the app, with the stand-in in worker processes
(``rkllm.isolation = "process"``, the default) and its faults switched on at
run time through the fault control file (lib/README.md, "Injected faults"):
the faulting request gets its coded error, a request queued behind it is
answered after the restart, other sockets stay open, /health goes 503 and
back, and the faults show in /metrics and in the fault log.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from rkstream.config import RKLLMSettings, Settings
from rkstream.engines.rkllm.faults import read_faults
from rkstream.engines.rkllm.worker.instance import WorkerInstance
from rkstream.server.app import make_app

from conftest import ModelFactory
from helpers import MS, WSClient, create, resident, served_name

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
LONG = "go [[n_tokens=40]] [[token_delay_us=20000]]"  # about 0.8 s
CRASH_LINE = "E rkllm: stand-in: injected crash after"


@dataclass
class Faulty:
    client: TestClient[Any, Any]
    fault_file: Path
    fault_log: Path

    def arm(self, fault: str) -> None:
        """Switch the fault for the runs that start from now on (atomically)."""
        temporary = self.fault_file.with_suffix(".tmp")
        temporary.write_text(fault)
        temporary.replace(self.fault_file)

    @property
    def instance(self) -> WorkerInstance:
        instance = resident(self.client).engine.instances[0]
        assert isinstance(instance, WorkerInstance)
        return instance

    async def connect(self) -> WSClient:
        conn = WSClient(await self.client.ws_connect("/ws"))
        assert (await conn.recv())["type"] == "session.created"
        return conn

    async def health(self) -> tuple[int, dict[str, Any]]:
        response = await self.client.get("/health")
        return response.status, await response.json()

    async def until_serving(self) -> None:
        for _ in range(1000):
            if (await self.health())[0] == 200:
                return
            await asyncio.sleep(10 * MS)
        raise AssertionError("the instance did not come back")

    async def metric(self, name: str) -> float:
        """The value of instance 0 of the (default) model in /metrics."""
        text = await (await self.client.get("/metrics")).text()
        labels = {"model": served_name(self.client), "instance": "0"}
        found = [sample.value for family in text_string_to_metric_families(text)
                 for sample in family.samples
                 if sample.name == name and sample.labels == labels]
        assert len(found) == 1, name
        return float(found[0])


@pytest.fixture
def faulty(aiohttp_client: ClientFactory, standin_libs: dict[str, Path],
           standin_model: ModelFactory, tmp_path: Path) -> Callable[..., Awaitable[Faulty]]:
    async def make(line: str = "1.3", **rkllm: Any) -> Faulty:
        fault_file, fault_log = tmp_path / "fault", tmp_path / "faults.jsonl"
        fault_file.write_text("none")
        model = standin_model(fault_file=fault_file, reply="alpha beta gamma delta",
                              init_delay_us=rkllm.pop("init_delay_us", 0))
        settings = replace(Settings(), rkllm=replace(
            RKLLMSettings(), library=str(standin_libs[line]), model=str(model), runtime=line,
            fault_log=str(fault_log), **rkllm))
        client = await aiohttp_client(make_app(settings))
        return Faulty(client, fault_file, fault_log)
    return make


@pytest.mark.parametrize("line", ["1.3", "1.2"])
async def test_crash_costs_one_request_and_a_reload(faulty: Any, line: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    server: Faulty = await faulty(line, init_delay_us=300_000)
    first_pid = server.instance.process.pid  # type: ignore[union-attr]
    crashing, waiting, idle = [await server.connect() for _ in range(3)]
    server.arm("crash 5")
    await crashing.send(create("a", LONG))
    await crashing.recv_type("response.output_text.delta")
    server.arm("none")  # the run that crashes has read the file already
    await waiting.send(create("b", "after the crash"))
    done = (await crashing.until_done({"a"}))["a"]
    assert done["status"] == "failed" and done["error"]["code"] == "runtime_crashed"
    assert "SIGSEGV" in done["error"]["message"]
    assert ("alpha beta gamma delta" * 3).startswith(crashing.text("a"))  # what came, in order
    status, body = await server.health()  # the model reloads (init_delay_us)
    assert status == 503 and body["status"] == "restarting"
    assert "SIGSEGV" in body["reason"]
    answered = (await waiting.until_done({"b"}, timeout=20000 * MS))["b"]
    assert answered["status"] == "completed"
    assert waiting.text("b") == "alpha beta gamma delta"
    status, body = await server.health()
    assert status == 200 and body["instances"][0]["crashes"] == 1
    assert body["instances"][0]["restarts"] == 1
    assert server.instance.process.pid != first_pid  # type: ignore[union-attr]
    for conn in (crashing, waiting, idle):  # every socket is still open and served
        await conn.send(create("c", "again"))
        assert (await conn.until_done({"c"}))["c"]["status"] == "completed"
    assert await server.metric("rkstream_runtime_crashes_total") == 1
    assert await server.metric("rkstream_worker_restarts_total") == 1
    assert await server.metric("rkstream_instance_up") == 1
    # The runtime's last line and the signal, in the log and in the fault log.
    assert CRASH_LINE in caplog.text and "killed by SIGSEGV" in caplog.text
    (fault,) = read_faults(server.fault_log)
    assert fault["kind"] == "crash" and fault["exit"] == "killed by SIGSEGV"
    assert any(line.startswith(CRASH_LINE) for line in fault["output"])


async def test_hang_is_stopped_by_the_watchdog(faulty: Any) -> None:
    server: Faulty = await faulty(watchdog_token_s=0.3, watchdog_grace_s=0.3)
    hanging, waiting = await server.connect(), await server.connect()
    server.arm("hang 3")
    await hanging.send(create("a", LONG))
    await hanging.recv_type("response.output_text.delta")
    # The file stays armed (a changed file would release the hang); b ends before token 3.
    await waiting.send(create("b", "next [[n_tokens=2]]"))
    done = (await hanging.until_done({"a"}, timeout=10000 * MS))["a"]
    assert done["status"] == "failed" and done["error"]["code"] == "runtime_hung"
    assert "no token for 0.3 s" in done["error"]["message"]
    assert "killed" in done["error"]["message"]
    server.arm("none")
    assert (await waiting.until_done({"b"}, timeout=20000 * MS))["b"]["status"] == "completed"
    assert await server.metric("rkstream_runtime_hangs_total") == 1
    assert await server.metric("rkstream_runtime_crashes_total") == 0
    (fault,) = read_faults(server.fault_log)
    assert fault["kind"] == "hang" and fault["exit"] == "killed by SIGKILL"


async def test_cancel_the_runtime_ignores_ends_with_a_kill(faulty: Any) -> None:
    server: Faulty = await faulty(watchdog_token_s=0, watchdog_grace_s=0.3)  # no watchdog
    conn = await server.connect()
    server.arm("hang 2")
    await conn.send(create("a", LONG))
    await conn.recv_type("response.output_text.delta")
    await asyncio.sleep(100 * MS)  # hung by now
    await conn.send({"type": "response.cancel", "request_id": "a"})
    done = (await conn.until_done({"a"}, timeout=10000 * MS))["a"]
    assert done["status"] == "failed" and done["error"]["code"] == "runtime_hung"
    assert "did not stop within 0.3 s" in done["error"]["message"]
    server.arm("none")
    await server.until_serving()
    await conn.send(create("b", "fine"))
    assert (await conn.until_done({"b"}))["b"]["status"] == "completed"


async def test_openai_gets_the_codes(faulty: Any) -> None:
    server: Faulty = await faulty()
    body = {"model": served_name(server.client),
            "messages": [{"role": "user", "content": LONG}]}
    server.arm("crash 2")
    whole = await server.client.post("/v1/chat/completions", json=body)
    assert whole.status == 502 and whole.headers["Retry-After"] == "1"
    assert (await whole.json())["error"]["code"] == "runtime_crashed"
    await server.until_serving()
    streamed = await server.client.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.status == 200
    events = [json.loads(line[6:]) for line in (await streamed.text()).splitlines()
              if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "runtime_crashed"
    assert events[0]["choices"][0]["delta"]  # text came before the crash
    server.arm("none")
    await server.until_serving()
    fine = await server.client.post("/v1/chat/completions", json=body)
    assert fine.status == 200


async def test_a_worker_that_dies_while_idle_is_restarted(faulty: Any) -> None:
    server: Faulty = await faulty()
    pid = server.instance.process.pid  # type: ignore[union-attr]
    assert pid is not None
    os.kill(pid, signal.SIGSEGV)
    await asyncio.sleep(50 * MS)
    await server.until_serving()
    conn = await server.connect()
    await conn.send(create("a", "hello"))
    assert (await conn.until_done({"a"}))["a"]["status"] == "completed"
    assert server.instance.health().crashes == 1


async def test_repeated_crashes_back_off(faulty: Any) -> None:
    server: Faulty = await faulty(restart_backoff_s=0.2, restart_backoff_max_s=0.4)
    server.arm("crash 0")
    conn = await server.connect()
    reasons = []
    for n in range(4):
        await conn.send(create(f"r{n}", "x"))
        done = (await conn.until_done({f"r{n}"}, timeout=20000 * MS))[f"r{n}"]
        assert done["error"]["code"] == "runtime_crashed"
        reasons.append(server.instance.health().reason)
        await server.until_serving()
    assert "restarting now" in reasons[0]
    assert "restarting in 0.2 s" in reasons[1]
    assert "restarting in 0.4 s" in reasons[2] and "restarting in 0.4 s" in reasons[3]
    server.arm("none")
    await conn.send(create("ok", "x"))
    assert (await conn.until_done({"ok"}))["ok"]["status"] == "completed"
    assert server.instance.faults_in_a_row == 0  # a good run resets the back-off
