"""The openai Python SDK against /v1/responses on a real server on 127.0.0.1:
``responses.create`` whole and streamed, the ``responses.stream`` helper, a
function-call round trip (the output items go back as input, as the SDK's
examples do), reasoning on a thinking model, and errors.

The stand-in runtime plays the model: the user's message scripts the call
(``[[reply=<tool_call>...]]``), and the tool's result scripts the final answer,
a later directive that wins over the first (openai_support.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFailedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseReasoningItem,
    ResponseTextDeltaEvent,
)

from rkstream.server.app import make_app

from conftest import Records
from fakes import FakeEngine
from helpers import call, fake_settings, reply, served
from openai_support import WEATHER_TOOL

ServerFactory = Callable[..., Awaitable[TestServer]]
ZURICH = '{"city": "Zürich"}'
ASK = "What is the weather in Zürich? " + reply(call("get_weather", ZURICH))
THINK_ASK = "What is the weather in Zürich? " + reply(
    "<think>\nThe user wants the weather.\n</think>\n\n" + call("get_weather", ZURICH))


QWEN2, QWEN3 = "qwen2.5-test.rkllm", "qwen3-test.rkllm"
QWEN2_MODEL = served(QWEN2)  # what the server calls the model in that file


@pytest.fixture
def client(named_standin_url: Any) -> Callable[..., Awaitable[AsyncOpenAI]]:
    """An SDK client of a server on a stand-in model file called ``name``."""
    async def make(name: str = QWEN2, **keys: Any) -> AsyncOpenAI:
        base = await named_standin_url(name, **keys)
        return AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    return make


def weather(city: str) -> str:
    """The tool: its result also scripts the model's next answer."""
    return f"sunny in {city} " + reply(f"It is sunny in {city}.")


async def test_create_whole_and_streamed(client: Any) -> None:
    async with await client(reply="Hello there.") as sdk:
        response = await sdk.responses.create(model=QWEN2_MODEL, input="hi",
                                              instructions="Be brief.")
        assert response.output_text == "Hello there." and response.status == "completed"
        assert isinstance(response.output[0], ResponseOutputMessage)
        assert response.usage is not None and response.usage.total_tokens > 0
        assert response.instructions == "Be brief." and response.model == QWEN2_MODEL
        events = [e async for e in await sdk.responses.create(model=QWEN2_MODEL, input="hi",
                                                              stream=True)]
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    text = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert text == "Hello there."
    assert isinstance(events[-1], ResponseCompletedEvent)
    assert events[-1].response.output_text == "Hello there."
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_function_call_round_trip_whole(client: Any) -> None:
    async with await client() as sdk:
        conversation: list[Any] = [{"role": "user", "content": ASK}]
        first = await sdk.responses.create(model=QWEN2_MODEL, input=conversation,
                                           tools=[WEATHER_TOOL])
        (fc,) = first.output
        assert isinstance(fc, ResponseFunctionToolCall) and fc.name == "get_weather"
        assert fc.call_id.startswith("call_") and json.loads(fc.arguments) == {
            "city": "Zürich"}
        # As the SDK's examples do: the output items themselves go back.
        conversation += first.output
        conversation.append({"type": "function_call_output", "call_id": fc.call_id,
                             "output": weather("Zürich")})
        second = await sdk.responses.create(model=QWEN2_MODEL, input=conversation,
                                            tools=[WEATHER_TOOL])
    assert second.output_text == "It is sunny in Zürich."
    assert second.usage is not None
    assert second.usage.input_tokens_details.cached_tokens > 0  # turn 1 was kept


async def test_function_call_round_trip_streamed(client: Any) -> None:
    async with await client(token_bytes=1) as sdk:
        conversation: list[Any] = [{"role": "user", "content": ASK}]
        # The SDK's stream helper rebuilds the items from the events.
        async with sdk.responses.stream(model=QWEN2_MODEL, input=conversation,
                                        tools=[WEATHER_TOOL]) as stream:
            kinds = [event.type async for event in stream]
            first = await stream.get_final_response()
        # One delta per character: "ü" came in two tokens and went out whole.
        assert kinds.count("response.function_call_arguments.delta") == len(ZURICH)
        (fc,) = first.output
        assert isinstance(fc, ResponseFunctionToolCall) and fc.arguments == ZURICH
        conversation += [item.model_dump(exclude_none=True) for item in first.output]
        conversation.append({"type": "function_call_output", "call_id": fc.call_id,
                             "output": weather("Zürich")})
        events = [e async for e in await sdk.responses.create(
            model=QWEN2_MODEL, input=conversation, tools=[WEATHER_TOOL], stream=True)]
    text = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert text == "It is sunny in Zürich."
    assert isinstance(events[-1], ResponseCompletedEvent)


async def test_reasoning_comes_as_an_item_and_goes_back(client: Any, records: Records) -> None:
    async with await client(QWEN3, token_bytes=2, record=records.path) as sdk:
        conversation: list[Any] = [{"role": "user", "content": THINK_ASK}]
        first = await sdk.responses.create(model=served(QWEN3), input=conversation,
                                           tools=[WEATHER_TOOL],
                                           reasoning={"effort": "medium"})
        thought, fc = first.output
        assert isinstance(thought, ResponseReasoningItem) and thought.content is not None
        assert thought.content[0].text == "The user wants the weather."
        assert isinstance(fc, ResponseFunctionToolCall)
        assert first.usage is not None
        assert first.usage.output_tokens_details.reasoning_tokens > 0
        conversation += first.output
        conversation.append({"type": "function_call_output", "call_id": fc.call_id,
                             "output": weather("Zürich")})
    # A second server, whose KV cache holds nothing: the whole conversation is rendered.
    async with await client(QWEN3, record=records.path) as fresh:
        async with fresh.responses.stream(model=served(QWEN3), input=conversation,
                                          tools=[WEATHER_TOOL]) as stream:
            final = await stream.get_final_response()
    assert final.output_text == "It is sunny in Zürich."
    # The reasoning item went back in the model's think tags, before its call.
    prompt = records.all("run")[-1]["prompt"]
    assert ("<|im_start|>assistant\n<think>\nThe user wants the weather.\n</think>\n\n"
            "<tool_call>\n") in prompt


async def test_errors_are_raised_as_the_sdk_raises_them(client: Any) -> None:
    async with await client() as sdk:
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.responses.create(model=QWEN2_MODEL, input="hi", previous_response_id="resp_1")
        assert info.value.code == "invalid_field" and info.value.param == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.retrieve("resp_1")
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.responses.create(model=QWEN2_MODEL, input=[], stream=True)
        assert info.value.param == "input"


async def test_a_failure_mid_stream_is_response_failed(aiohttp_server: ServerFactory) -> None:
    server = await aiohttp_server(make_app(fake_settings(), lambda s: FakeEngine(s, 0.001)))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x",
                           max_retries=0) as sdk:
        events = [e async for e in await sdk.responses.create(
            model="m", input="one two FAIL three", stream=True)]
    last = events[-1]
    assert isinstance(last, ResponseFailedEvent) and last.response.error is not None
    assert last.response.error.message == "injected"
    assert last.response.output_text == "one two "
