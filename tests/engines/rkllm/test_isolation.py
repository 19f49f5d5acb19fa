"""Both isolation modes at the engine: what a worker process costs and what it leaves.

The faults end to end (through /ws, OpenAI, /health, /metrics) are in
tests/server/test_runtime_faults.py; here: nothing leaks over 20 crash and
restart cycles, a closed engine leaves no worker, a worker's text keeps the
in-process guarantees, and in ``"thread"`` mode a hang takes the instance out
of service until the runtime returns.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rkstream.config import RKLLMSettings, Settings
from rkstream.core.messages import Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Job, Outcome
from rkstream.engines.rkllm.engine import RKLLMEngine
from rkstream.engines.rkllm.faults import read_faults
from rkstream.engines.rkllm.in_thread import ThreadInstance
from rkstream.engines.rkllm.worker.instance import WorkerInstance

from conftest import ModelFactory, Records
from helpers import MS, Sink


def job(prompt: str, max_tokens: int = 500) -> Job:
    return Job(request_id="r", messages=(Message("user", (TextPart(prompt),)),),
               instructions=None,
               sampling=SamplingSettings(max_tokens=max_tokens, temperature=0.5, top_p=0.7,
                                         top_k=3, repeat_penalty=1.2, frequency_penalty=0.1,
                                         presence_penalty=0.2))


async def generate(engine: RKLLMEngine, prompt: str, max_tokens: int = 500
                   ) -> tuple[str, Outcome]:
    sink = Sink()
    outcome = await engine.instances[0].start(job(prompt, max_tokens), sink).wait()
    return sink.text, outcome


def children() -> dict[int, str]:
    """This process's child processes and their states (Z: a zombie)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("PPid", "0")) == os.getpid():
            found[int(entry)] = fields["State"].split()[0]
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until_ok(instance: Any) -> None:
    for _ in range(2000):
        if instance.health().status == "ok":
            return
        await asyncio.sleep(5 * MS)
    raise AssertionError(f"still {instance.health()}")


@pytest.fixture
async def make_engine(standin_libs: dict[str, Path], standin_model: ModelFactory,
                      records: Records, tmp_path: Path) -> AsyncIterator[Any]:
    engines: list[RKLLMEngine] = []

    async def make(isolation: str = "process", line: str = "1.3", **keys: Any
                   ) -> RKLLMEngine:
        keys.setdefault("reply", "one two three")
        model = standin_model(record=records.path, **keys)
        engine = RKLLMEngine(replace(Settings(), rkllm=replace(
            RKLLMSettings(), library=str(standin_libs[line]), model=str(model), runtime=line,
            isolation=isolation, restart_backoff_s=0, fault_log=str(tmp_path / "faults"),
            watchdog_token_s=0.2, watchdog_grace_s=0.2)))
        engines.append(engine)
        await engine.load()
        return engine

    yield make
    for engine in engines:
        await engine.close()


async def test_twenty_crashes_leak_nothing(make_engine: Any) -> None:
    engine = await make_engine()
    instance = engine.instances[0]
    assert isinstance(instance, WorkerInstance)
    await generate(engine, "warm up")
    fds, shm = open_fds(), set(os.listdir("/dev/shm"))
    pids = set()
    for cycle in range(20):
        assert instance.process is not None
        pids.add(instance.process.pid)
        text, outcome = await generate(engine, f"cycle {cycle} [[crash_after=1]]")
        assert outcome.error_code == "runtime_crashed", outcome
        await until_ok(instance)
        text, outcome = await generate(engine, "fine")
        assert (text, outcome.finish_reason) == ("one two three", "stop")
    assert len(pids) == 20 and instance.health().crashes == 20
    assert instance.health().restarts == 20
    await asyncio.sleep(50 * MS)  # the last reaper threads finish
    assert list(children().values()) == ["S"] or list(children().values()) == ["R"]
    assert open_fds() == fds  # each worker's pipes and socket went with it
    assert set(os.listdir("/dev/shm")) == shm
    await engine.close()
    assert children() == {}  # the worker ended with the engine, reaped
    assert open_fds() < fds  # and the last one's too


async def test_close_ends_the_worker_even_mid_run(make_engine: Any, records: Records) -> None:
    engine = await make_engine(n_tokens=100000, token_delay_us=1000)
    instance = engine.instances[0]
    run = instance.start(job("long"), Sink())
    await asyncio.sleep(50 * MS)
    await engine.close()
    assert (await run.wait()).finish_reason == "cancelled"
    assert children() == {}
    assert records.all("destroy")  # a clean rkllm_destroy in the worker, not a kill


async def test_worker_keeps_the_streaming_guarantees(make_engine: Any) -> None:
    reply = "你好，世界！🎉 naïve"
    engine = await make_engine(reply=reply, token_bytes=1, waiting="repeat")
    text, outcome = await generate(engine, "hi")
    assert text == reply and outcome.finish_reason == "stop"  # split UTF-8 stitched
    assert outcome.output_tokens == len(reply.encode())
    text, outcome = await generate(engine, "hi", max_tokens=4)
    assert outcome.finish_reason == "length" and outcome.output_tokens == 4


async def test_a_bad_model_fails_the_load_with_the_runtimes_reason(
        make_engine: Any) -> None:
    with pytest.raises(Exception, match="rkllm_init failed"):
        await make_engine(fail_init=1)
    assert children() == {}


async def test_thread_mode_hang_takes_the_instance_out_until_it_returns(
        make_engine: Any, tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    fault.write_text("hang 2")
    engine = await make_engine(isolation="thread", fault_file=fault,
                               n_tokens=50, token_delay_us=1000)
    instance = engine.instances[0]
    assert isinstance(instance, ThreadInstance)
    changes: list[str] = []
    instance.watch_health(lambda: changes.append(instance.health().status))
    text, outcome = await generate(engine, "go")
    assert outcome.error_code == "runtime_hung"
    assert "isolation = \"process\"" in (outcome.error_message or "")
    assert instance.health().status == "failed" and instance.health().hangs == 1
    (record,) = read_faults(tmp_path / "faults")
    assert record["kind"] == "hang" and record["exit"] == "still hanging in the server process"
    fault.write_text("none")  # releases the hang in the stand-in
    await until_ok(instance)
    assert changes == ["failed", "ok"]
    text, outcome = await generate(engine, "again")
    assert outcome.finish_reason == "stop"
