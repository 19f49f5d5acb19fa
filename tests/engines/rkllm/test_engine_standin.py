"""The RKLLM engine through the real ctypes binding and the stand-in runtime.

Every test runs on both ABI lines. The stand-in records each native call
(``records``), so tests assert on what the runtime was actually given.
"""

from __future__ import annotations

import asyncio
import time
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
from rkstream.errors import EngineInitError, ModelFileError

from conftest import ModelFactory, Records
from helpers import MS, Sink

LINES = ("1.3", "1.2")


def settings_for(lib: Path, model: Path, line: str, instances: int = 1,
                 max_new_tokens: int = 8000, isolation: str = "process") -> Settings:
    return replace(Settings(), instances=instances,
                   rkllm=replace(RKLLMSettings(), library=str(lib), model=str(model),
                                 runtime=line, max_new_tokens=max_new_tokens,
                                 isolation=isolation))


def job(prompt: str, max_tokens: int = 500, stop: tuple[str, ...] = (),
        rid: str = "r") -> Job:
    return Job(request_id=rid, messages=(Message("user", (TextPart(prompt),)),),
               instructions=None,
               sampling=SamplingSettings(max_tokens=max_tokens, temperature=0.5, top_p=0.7,
                                         top_k=3, repeat_penalty=1.2, frequency_penalty=0.1,
                                         presence_penalty=0.2, stop=stop))


@pytest.fixture(params=LINES)
def line(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_engine(standin_libs: dict[str, Path], standin_model: ModelFactory,
                      records: Records, line: str) -> AsyncIterator[Any]:
    engines: list[RKLLMEngine] = []

    async def make(instances: int = 1, max_new_tokens: int = 8000, isolation: str = "process",
                   **keys: Any) -> RKLLMEngine:
        model = standin_model(record=records.path, **keys)
        engine = RKLLMEngine(settings_for(standin_libs[line], model, line, instances,
                                          max_new_tokens, isolation))
        engines.append(engine)
        await engine.load()
        return engine

    yield make
    for engine in engines:
        await engine.close()


async def generate(engine: RKLLMEngine, j: Job, index: int = 0) -> tuple[str, Outcome]:
    sink = Sink()
    run = engine.instances[index].start(j, sink)
    outcome = await run.wait()
    return sink.text, outcome


async def test_echo_reply_and_model_info(make_engine: Any, records: Records,
                                         line: str) -> None:
    engine = await make_engine()
    text, outcome = await generate(engine, job("hello there"))
    assert text == "Echo: hello there"
    assert outcome.finish_reason == "stop"
    assert outcome.output_tokens == 3 and outcome.prompt_tokens == 2
    info = engine.info
    assert info.engine == "rkllm" and info.per_request_sampling is (line == "1.3")
    assert info.runtime == ("1.3.0" if line == "1.3" else "1.2.3")
    run = records.all("run")[0]
    assert run["prompt"] == "hello there" and run["role"] == "user"
    assert run["input_type"] == "prompt" and run["infer"]["keep_history"] == 0
    if line == "1.3":
        assert run["infer"]["max_new_tokens"] == 500
        sampling = run["infer"]["sampling"]
        assert sampling["top_k"] == 3 and sampling["temperature"] == pytest.approx(0.5)
        assert sampling["top_p"] == pytest.approx(0.7)
    else:
        assert "sampling" not in run["infer"]
    init = records.all("init")[0]
    assert init["max_context_len"] == 4096 and init["extend_param"]["enabled_cpus_mask"] == 0xF0
    assert init["extend_param"]["embed_flash"] == 1 and init["skip_special_token"] is True
    assert init["extend_param"]["base_domain_id"] == 0  # auto: no vision encoder


@pytest.mark.parametrize("waiting", ["continue", "repeat", "none"])
@pytest.mark.parametrize("token_bytes", [1, 2, 3])
async def test_utf8_intact_across_waiting(make_engine: Any, waiting: str,
                                          token_bytes: int) -> None:
    reply = "héllo 世界 🎉 ok ∑"
    engine = await make_engine(reply=reply, token_bytes=token_bytes, waiting=waiting)
    sink = Sink()
    outcome = await engine.instances[0].start(job("x"), sink).wait()
    for piece in sink.pieces:
        assert "\ufffd" not in piece
        piece.encode("utf-8")
    assert sink.text == reply
    assert outcome.finish_reason == "stop"
    assert outcome.output_tokens == -(-len(reply.encode()) // token_bytes)


async def test_max_tokens_cut_loses_nothing(make_engine: Any, records: Records) -> None:
    engine = await make_engine(reply="a b c d e f g h")
    text, outcome = await generate(engine, job("x", max_tokens=3))
    assert text == "a b c "
    assert outcome.finish_reason == "length" and outcome.output_tokens == 3
    assert records.all("run_end")[0]["generated"] == 3


async def test_no_delay_many_tokens_nothing_lost(make_engine: Any) -> None:
    engine = await make_engine(n_tokens=5000, reply="tok en")
    for _ in range(3):
        text, outcome = await generate(engine, job("x", max_tokens=5000))
        assert text == "tok en" * 2500
        assert outcome.output_tokens == 5000 and outcome.finish_reason == "length"


async def test_init_cap_applies_on_1_2(make_engine: Any, line: str) -> None:
    engine = await make_engine(n_tokens=2000, reply="t", max_new_tokens=1000)
    text, outcome = await generate(engine, job("x", max_tokens=1500))
    expected = 1500 if line == "1.3" else 1000
    assert text == "t" * expected
    assert outcome.finish_reason == "length"


@pytest.mark.parametrize("finish_on_abort", [1, 0])
async def test_cancel_reaches_abort_quickly(make_engine: Any, records: Records,
                                            finish_on_abort: int) -> None:
    engine = await make_engine(finish_on_abort=finish_on_abort)
    sink = Sink()
    slow = "x [[reply=w]] [[n_tokens=100000]] [[token_delay_us=2000]]"
    run = engine.instances[0].start(job(slow, max_tokens=100000), sink)
    while not sink.pieces:
        await asyncio.sleep(1 * MS)
    cancelled_ns = time.monotonic_ns()
    run.cancel()
    outcome = await run.wait()
    assert outcome.finish_reason == "cancelled"
    abort = records.all("abort")[0]
    assert abort["running"] is True
    assert (abort["t_ns"] - cancelled_ns) / 1e6 < 50
    # Every token the runtime produced before stopping was delivered.
    generated = records.all("run_end")[0]["generated"]
    assert outcome.output_tokens == generated
    assert sink.text == "w" * generated
    text, again = await generate(engine, job("after"))
    assert text == "Echo: after" and again.finish_reason == "stop"


async def test_cancel_before_start_never_runs(make_engine: Any, records: Records) -> None:
    # Two runs queued on one instance at once: only the owner thread has a queue.
    engine = await make_engine(prefill_delay_us=100000, isolation="thread")
    instance = engine.instances[0]
    first = instance.start(job("one"), Sink())
    second = instance.start(job("two"), Sink())  # waits on the owner thread
    second.cancel()
    assert (await second.wait()).finish_reason == "cancelled"
    assert (await first.wait()).finish_reason == "stop"
    assert [r["prompt"] for r in records.all("run")] == ["one"]


async def test_stop_sequence_aborts(make_engine: Any, records: Records) -> None:
    engine = await make_engine(reply="one two STOP three four", token_delay_us=1000)
    text, outcome = await generate(engine, job("x", stop=("STOP",)))
    assert text == "one two "
    assert outcome.finish_reason == "stop"
    assert records.all("run_end")[0]["finish"] in ("abort", "pause")


@pytest.mark.parametrize("keys", [{"error_after": 2}, {"fail_run": 1}])
async def test_runtime_error_fails_then_next_works(make_engine: Any, keys: dict[str, int]
                                                   ) -> None:
    engine = await make_engine()
    directives = "".join(f"[[{k}={v}]]" for k, v in keys.items())
    text, outcome = await generate(engine, job(f"a b c d {directives}"))
    assert outcome.finish_reason == "error" and outcome.error_code == "runtime_error"
    assert outcome.error_message
    if "error_after" in keys:
        assert text == "Echo: a "
    text, outcome = await generate(engine, job("fine"))
    assert (text, outcome.finish_reason) == ("Echo: fine", "stop")


async def test_one_owner_thread_and_two_instances(make_engine: Any, records: Records
                                                  ) -> None:
    engine = await make_engine(instances=2, token_delay_us=500)
    results = await asyncio.gather(generate(engine, job("on zero"), 0),
                                   generate(engine, job("on one"), 1))
    assert [t for t, _ in results] == ["Echo: on zero", "Echo: on one"]
    inits = records.all("init")
    assert len(inits) == 2 and inits[0]["handle"] != inits[1]["handle"]
    owner = {r["handle"]: r["tid"] for r in inits}
    for call in ("run", "run_end"):
        for row in records.all(call):
            assert row["tid"] == owner[row["handle"]], f"{call} left its owner thread"
    assert not any(r["concurrent"] for r in records.all("run"))
    await engine.close()
    destroys = records.all("destroy")
    assert len(destroys) == 2
    assert all(d["tid"] == owner[d["handle"]] for d in destroys)


async def test_init_failure_is_reported(standin_libs: dict[str, Path],
                                        standin_model: ModelFactory, line: str) -> None:
    engine = RKLLMEngine(settings_for(standin_libs[line], standin_model(fail_init=1), line))
    with pytest.raises(EngineInitError, match="rkllm_init failed"):
        await engine.load()
    await engine.close()


async def test_rknn_model_refused_before_init(standin_libs: dict[str, Path], tmp_path: Path,
                                              records: Records, line: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RKLLM_STANDIN_RECORD", str(records.path))
    vision = tmp_path / "vision.rknn"
    vision.write_bytes(b"RKNN\x00\x01rest")
    engine = RKLLMEngine(settings_for(standin_libs[line], vision, line))
    with pytest.raises(ModelFileError, match="RKNN vision model"):
        await engine.load()
    await engine.close()
    assert records.all() == []
