"""The engine contract: every engine passes the same tests.

Parametrised over the RKLLM engine on the stand-in runtime (both ABI lines)
and the llama.cpp engine with the bundled SmolLM2 model. What differs per
engine is only how to ask for a long answer and how to make a run fail.

SmolLM2 is loaded once for the module and lent to every llamacpp test, so the
tests run on the module's event loop (the fixture that loads it lives there).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from rkstream.config import LlamaCppSettings, RKLLMSettings, Settings
from rkstream.core.messages import Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Engine, EngineInstance, Job, ModelInfo, Outcome
from rkstream.engines.llamacpp.engine import LlamaCppEngine
from rkstream.engines.rkllm.engine import RKLLMEngine
from rkstream.server.app import default_engine, make_app

from conftest import ModelFactory
from helpers import MS, Sink, WSClient, create

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Flavour:
    name: str
    long_prompt: str      # asks for an answer of hundreds of tokens
    failing_prompt: str   # makes this engine fail the run
    failure_code: str


FLAVOURS = {
    "rkllm-1.3": Flavour("rkllm-1.3", "go [[n_tokens=100000]] [[token_delay_us=500]]",
                         "x [[error_after=2]]", "runtime_error"),
    "rkllm-1.2": Flavour("rkllm-1.2", "go [[n_tokens=100000]] [[token_delay_us=500]]",
                         "x [[fail_run=1]]", "runtime_error"),
    "llamacpp": Flavour("llamacpp", "Write a very long story about a robot who learns to "
                        "paint. Use many paragraphs.",
                        "word " * 600, "context_overflow"),
}


SMOLLM2 = replace(Settings(), engine="llamacpp",
                  llamacpp=replace(LlamaCppSettings(), n_ctx=512))


def settings_for(flavour: str, standin_libs: dict[str, Path], model: Path) -> Settings:
    if flavour.startswith("rkllm"):
        line = flavour.split("-")[1]
        return replace(Settings(), engine="rkllm", rkllm=replace(
            RKLLMSettings(), library=str(standin_libs[line]), model=str(model), runtime=line,
            max_new_tokens=100_000))
    return SMOLLM2


@pytest.fixture(params=list(FLAVOURS))
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return FLAVOURS[str(request.param)]


@pytest.fixture
def settings(flavour: Flavour, standin_libs: dict[str, Path], standin_model: ModelFactory
             ) -> Settings:
    return settings_for(flavour.name, standin_libs, standin_model(reply="alpha beta gamma "
                                                                        "delta epsilon zeta"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm2() -> AsyncIterator[Engine]:
    """SmolLM2, loaded once: the tests leave it idle, so they can share it."""
    engine = LlamaCppEngine(SMOLLM2)
    await engine.load()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(loop_scope="module")
async def rkllm_engine(settings: Settings) -> AsyncIterator[Engine]:
    """An RKLLM engine per test: each test writes its own stand-in model file."""
    engine = RKLLMEngine(settings)
    await engine.load()
    yield engine
    await engine.close()


@pytest.fixture
def engine(flavour: Flavour, request: pytest.FixtureRequest) -> Engine:
    """The loaded engine of this flavour; looked up by name so that only the
    flavour's own engine is loaded (an rkllm-only run never loads SmolLM2)."""
    name = "smollm2" if flavour.name == "llamacpp" else "rkllm_engine"
    return cast(Engine, request.getfixturevalue(name))


class Lent(Engine):
    """An engine handed to an app that must not load or close it: its owner does."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def info(self) -> ModelInfo:
        return self._engine.info

    @property
    def instances(self) -> list[EngineInstance]:
        return self._engine.instances

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass


def job(prompt: str, max_tokens: int = 48, stop: tuple[str, ...] = ()) -> Job:
    return Job(request_id="r", messages=(Message("user", (TextPart(prompt),)),),
               instructions=None,
               sampling=SamplingSettings(max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                                         top_k=1, repeat_penalty=1.0, frequency_penalty=0.0,
                                         presence_penalty=0.0, stop=stop))


async def generate(engine: Engine, j: Job) -> tuple[Sink, Outcome]:
    sink = Sink()
    outcome = await engine.instances[0].start(j, sink).wait()
    return sink, outcome


async def test_text_in_order_with_counters(engine: Engine, flavour: Flavour) -> None:
    sink, outcome = await generate(engine, job("Say hello.", max_tokens=24))
    assert sink.text.strip(), "no text"
    assert all(piece for piece in sink.pieces)
    assert outcome.finish_reason in ("stop", "length")
    assert 0 < outcome.output_tokens <= 24
    assert outcome.prompt_tokens > 0
    assert outcome.prompt_ms >= 0 and outcome.predicted_ms >= 0
    assert engine.info.context_length > 0


async def test_max_tokens_gives_length(engine: Engine, flavour: Flavour) -> None:
    sink, outcome = await generate(engine, job(flavour.long_prompt, max_tokens=7))
    assert outcome.finish_reason == "length"
    assert outcome.output_tokens == 7
    assert sink.text


async def test_cancel_stops_within_one_token(engine: Engine, flavour: Flavour) -> None:
    sink = Sink()
    run = engine.instances[0].start(job(flavour.long_prompt, max_tokens=400), sink)
    while len(sink.pieces) < 3:
        await asyncio.sleep(1 * MS)
    seen = len(sink.pieces)
    run.cancel()
    outcome = await run.wait()
    assert outcome.finish_reason == "cancelled"
    assert outcome.output_tokens < 400
    # At most a token or two were in flight when the cancel landed.
    assert len(sink.pieces) <= seen + 3


async def test_stop_sequence_cuts_the_text(engine: Engine, flavour: Flavour) -> None:
    reference, _ = await generate(engine, job(flavour.long_prompt, max_tokens=30))
    text = reference.text
    cut = max(4, len(text) // 2)
    stop = text[cut:cut + 3]
    expected = text[: text.index(stop)]
    sink, outcome = await generate(engine, job(flavour.long_prompt, max_tokens=30,
                                               stop=(stop,)))
    assert sink.text == expected
    assert outcome.finish_reason == "stop"


async def test_failure_then_next_run_works(engine: Engine, flavour: Flavour) -> None:
    _, failed = await generate(engine, job(flavour.failing_prompt))
    assert failed.finish_reason == "error"
    assert failed.error_code == flavour.failure_code and failed.error_message
    sink, outcome = await generate(engine, job("Say hello.", max_tokens=8))
    assert outcome.finish_reason in ("stop", "length") and sink.text


async def test_runs_in_sequence_are_independent(engine: Engine) -> None:
    first, _ = await generate(engine, job("Name a colour.", max_tokens=12))
    second, _ = await generate(engine, job("Name a colour.", max_tokens=12))
    assert first.text == second.text  # greedy sampling, no state carried over


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


# pytest-aiohttp's client lives on the function's loop, so this test does too. The
# shared SmolLM2 still works here: a run binds to the loop that starts it, and
# loading left nothing tied to the module's loop (owner threads and concurrent
# futures). An RKLLM worker process belongs to the loop that started it, so the
# app loads its own.
@pytest.mark.asyncio(loop_scope="function")
async def test_disconnect_frees_the_model(aiohttp_client: ClientFactory, flavour: Flavour,
                                          settings: Settings,
                                          request: pytest.FixtureRequest) -> None:
    factory: Callable[[Settings], Engine] = default_engine
    if flavour.name == "llamacpp":
        shared = cast(Engine, request.getfixturevalue("smollm2"))
        factory = lambda s: Lent(shared)  # noqa: E731
    client = await aiohttp_client(make_app(settings, factory))
    leaver = WSClient(await client.ws_connect("/ws"))
    await leaver.recv()
    await leaver.send(create("long", flavour.long_prompt, params={"max_tokens": 400}))
    # A first token can take seconds when the CPU is shared (llama.cpp's threads spin).
    await leaver.recv_type("response.output_text.delta", timeout=30000 * MS)
    await leaver.ws.close()
    started = time.perf_counter()
    stayer = WSClient(await client.ws_connect("/ws"))
    await stayer.recv()
    await stayer.send(create("next", "Say hello.", params={"max_tokens": 4}))
    done = (await stayer.until_done({"next"}))["next"]
    assert done["status"] in ("completed", "incomplete")
    # The abandoned run did not have to finish its 400 tokens first.
    assert time.perf_counter() - started < 20000 * MS
    assert done["timings"]["queued_ms"] < 5000
