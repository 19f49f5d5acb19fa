"""The CPU engine with ``[chat] template`` set: rkstream's renderer, not the GGUF's.

Follow-up turns are rendered so they extend the previous prompt, and
llama-cpp-python takes the matching prefix from its KV cache: the outcome
reports it as ``cached_tokens``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from importlib.resources import files

import pytest
import pytest_asyncio

from rkstream.config import ChatSettings, LlamaCppSettings, Settings
from rkstream.core.messages import Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.core.request import GenerationRequest
from rkstream.engines.llamacpp.engine import LlamaCppEngine
from rkstream.server.jobs import make_job

from helpers import Sink

pytestmark = pytest.mark.asyncio(loop_scope="module")
SAMPLING = SamplingSettings(max_tokens=12, temperature=0.0, top_p=1.0, top_k=1,
                            repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0)
TEMPLATE = str(files("rkstream.chat").joinpath("templates/smollm2.jinja"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    settings = replace(Settings(), llamacpp=replace(LlamaCppSettings(), n_ctx=1024),
                       chat=replace(ChatSettings(), template=TEMPLATE))
    loaded = LlamaCppEngine(settings)
    await loaded.load()
    yield loaded
    await loaded.close()


async def test_the_template_is_used_and_follow_ups_reuse_the_cache(
        engine: LlamaCppEngine) -> None:
    assert engine.chat_format is not None and engine.info.chat_format == "smollm2"
    settings = Settings()
    messages: tuple[Message, ...] = (
        Message("system", (TextPart("You answer in one short sentence."),)),
        Message("user", (TextPart("What is the capital of France?"),)))
    cached = []
    for turn in range(2):
        job = make_job(engine, settings, f"t{turn}", GenerationRequest(messages), SAMPLING)
        assert job.prompt is not None and job.prompt.text.startswith("<|im_start|>system\n")
        sink = Sink()
        outcome = await engine.instances[0].start(job, sink).wait()
        assert outcome.finish_reason in ("stop", "length") and sink.text
        cached.append(outcome.cached_tokens)
        messages += (Message("assistant", (TextPart(sink.text),)),
                     Message("user", (TextPart("And of Italy?"),)))
    assert cached[0] == 0 and cached[1] > 20  # the first turn came from the cache
    assert outcome.prompt_tokens < 40  # only the new turn was evaluated


async def test_completions_send_the_raw_prompt(engine: LlamaCppEngine) -> None:
    request = GenerationRequest((Message("user", (TextPart("The capital of France is"),)),),
                                raw=True)
    job = make_job(engine, Settings(), "raw", request, SAMPLING)
    assert job.prompt is not None and job.prompt.text == "The capital of France is"
    sink = Sink()
    outcome = await engine.instances[0].start(job, sink).wait()
    assert outcome.finish_reason in ("stop", "length") and sink.text
