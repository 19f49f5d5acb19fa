"""Tool calls and thinking on the Ollama API (issue 11), through the real app.

The RKLLM binding runs the stand-in runtime; the model file's NAME selects the
chat family (``qwen2.5-…`` Hermes ``<tool_call>``, ``qwen3-…`` also
``<think>``), and a ``[[reply=…]]`` directive in the prompt scripts the
answer. The whole conversation is in every prompt and a later directive
overrides an earlier one, so a tool result that carries its own directive
scripts the turn after the call. The stand-in records each run's prompt, so
the tests see what the template made of the request.

tests/server/http/ollama/test_ollama_api.py covers the plain shapes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from aiohttp.test_utils import TestClient, TestServer

from rkstream.config import RKLLMSettings, Settings
from rkstream.server.app import make_app

from conftest import Records
from fakes import Calls, FakeEngine
from helpers import MS, fake_settings, served_name

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[..., Awaitable[TestServer]]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
# Replies, in the stand-in's escapes (\n is a newline).
CALL = r'<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n' \
       r'</tool_call>'
THOUGHT = r"<think>\nThe user wants the weather.\n</think>\n\n"


def directive(reply: str) -> str:
    return f"[[reply={reply}]]"


class Standin:
    """Writes stand-in model files named for a chat family; their runs are recorded."""

    def __init__(self, tmp_path: Path, libs: dict[str, Path]) -> None:
        self.tmp_path = tmp_path
        self.library = libs["1.3"]
        self.records = Records(tmp_path / "calls.jsonl")

    def settings(self, name: str, **keys: Any) -> Settings:
        path = self.tmp_path / name
        lines = ["#rkstream-standin", f"record = {self.records.path}"]
        lines += [f"{k} = {v}" for k, v in keys.items()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return replace(Settings(), engine="rkllm", rkllm=replace(
            RKLLMSettings(), library=str(self.library), model=str(path)))

    def prompts(self) -> list[str]:
        return [str(r["prompt"]) for r in self.records.all("run")]


@pytest.fixture
def standin(tmp_path: Path, standin_libs: dict[str, Path]) -> Standin:
    return Standin(tmp_path, standin_libs)


@pytest.fixture
async def qwen25(aiohttp_client: ClientFactory, standin: Standin) -> TestClient[Any, Any]:
    """Qwen2.5's format (Hermes tool calls), tokens of one byte."""
    return await aiohttp_client(make_app(standin.settings("qwen2.5-test.rkllm",
                                                          token_bytes=1)))


@pytest.fixture
async def qwen3(aiohttp_client: ClientFactory, standin: Standin) -> TestClient[Any, Any]:
    """Qwen3's format (Hermes tool calls and <think>), tokens of one byte."""
    return await aiohttp_client(make_app(standin.settings("qwen3-test.rkllm",
                                                          token_bytes=1)))


async def lines_of(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    assert resp.status == 200, await resp.text()
    out = []
    while line := await resp.content.readline():
        out.append(json.loads(line))
    return out


def ask(client: TestClient[Any, Any], text: str, **extra: Any) -> dict[str, Any]:
    """A chat request to the model ``client``'s server serves."""
    return {"model": served_name(client), "messages": [{"role": "user", "content": text}],
            **extra}


# -- tool calls -------------------------------------------------------------------------

async def test_a_call_split_into_bytes_arrives_whole(qwen25: TestClient[Any, Any]) -> None:
    body = ask(qwen25, f"weather in Paris? {directive('Let me look. ' + CALL)}",
               tools=[WEATHER])
    chunks = await lines_of(await qwen25.post("/api/chat", json=body))
    *pieces, final = chunks
    with_calls = [c for c in pieces if "tool_calls" in c["message"]]
    assert len(with_calls) == 1, "the call comes whole, in one chunk"
    message = with_calls[0]["message"]
    assert message["content"] == "" and message["role"] == "assistant"
    (call,) = message["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather",
                                "arguments": {"city": "Paris", "days": 2}}
    assert call["id"].startswith("call_")
    text = "".join(c["message"]["content"] for c in pieces)
    assert text == "Let me look. ", "no piece of the markup leaks into the content"
    assert all(c["done"] is False for c in pieces)
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}

    whole = await (await qwen25.post("/api/chat", json={**body, "stream": False})).json()
    assert whole["message"]["content"] == "Let me look. "
    assert [c["function"] for c in whole["message"]["tool_calls"]] == [call["function"]]
    assert whole["done_reason"] == "stop" and "thinking" not in whole["message"]


async def test_parallel_calls_are_numbered(qwen25: TestClient[Any, Any]) -> None:
    second = CALL.replace("Paris", "Oslo")
    body = ask(qwen25, directive(CALL + r"\n" + second), tools=[WEATHER], stream=False)
    whole = await (await qwen25.post("/api/chat", json=body)).json()
    calls = whole["message"]["tool_calls"]
    assert [(c["function"]["index"], c["function"]["arguments"]["city"]) for c in calls] \
        == [(0, "Paris"), (1, "Oslo")]
    assert calls[0]["id"] != calls[1]["id"]


async def test_broken_arguments_come_back_as_text(qwen25: TestClient[Any, Any]) -> None:
    """The ollama client takes only an object as arguments: a call whose JSON is
    broken is not a call, and never a 500; its text goes to content."""
    broken = r'<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'
    body = ask(qwen25, directive("Hm. " + broken), tools=[WEATHER])
    chunks = await lines_of(await qwen25.post("/api/chat", json=body))
    assert not any("tool_calls" in c["message"] for c in chunks)
    text = "".join(c["message"]["content"] for c in chunks)
    assert text.startswith("Hm. <tool_call>\n") and '"get_weather"' in text
    assert text.endswith("</tool_call>") and chunks[-1]["done_reason"] == "stop"
    whole = await (await qwen25.post("/api/chat", json={**body, "stream": False})).json()
    assert whole["message"]["content"] == text and "tool_calls" not in whole["message"]
    # Valid JSON that is not an object cannot be arguments either.
    listed = r'<tool_call>\n{"name": "get_weather", "arguments": ["Paris"]}\n</tool_call>'
    whole = await (await qwen25.post("/api/chat", json={
        **ask(qwen25, directive(listed), tools=[WEATHER]), "stream": False})).json()
    assert "tool_calls" not in whole["message"] and '["Paris"]' in whole["message"]["content"]
    # Cut off by num_predict inside the call (tokens of one byte): its text, and "length".
    for cut, written in ((30, '{"name": "get_weat'), (60, '{"name": "get_weather", '
                                                          '"arguments": {"city": "P')):
        body = ask(qwen25, directive(CALL), tools=[WEATHER], options={"num_predict": cut})
        chunks = await lines_of(await qwen25.post("/api/chat", json=body))
        assert chunks[-1]["done_reason"] == "length"
        assert not any("tool_calls" in c["message"] for c in chunks)
        text = "".join(c["message"]["content"] for c in chunks)
        assert text.startswith("<tool_call>\n" + written), text


async def test_without_tools_the_markup_is_text(qwen25: TestClient[Any, Any]) -> None:
    whole = await (await qwen25.post("/api/chat", json=ask(qwen25, directive(CALL),
                                                            stream=False))).json()
    assert whole["message"]["content"].startswith("<tool_call>\n{")
    assert "tool_calls" not in whole["message"]


async def test_the_tool_turns_reach_the_template(qwen25: TestClient[Any, Any],
                                                 standin: Standin) -> None:
    """An earlier call (arguments an object, no id) and its result (tool_name)."""
    body = {"model": served_name(qwen25), "stream": False, "tools": [WEATHER], "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 degrees"},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": directive("It is 18 degrees and sunny.")}]}
    whole = await (await qwen25.post("/api/chat", json=body)).json()
    assert whole["message"]["content"] == "It is 18 degrees and sunny."
    prompt = standin.prompts()[-1]
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call><|im_end|>\n') in prompt
    assert ("<|im_start|>user\n<tool_response>\n18 degrees\n</tool_response>\n"
            "<tool_response>\nsunny\n</tool_response><|im_end|>\n") in prompt
    assert '"name": "get_weather", "description": "The weather in a city"' in prompt


# -- thinking ---------------------------------------------------------------------------

async def test_thinking_goes_to_message_thinking(qwen3: TestClient[Any, Any],
                                                 standin: Standin) -> None:
    body = ask(qwen3, directive(THOUGHT + "Take an umbrella."), think=True)
    chunks = await lines_of(await qwen3.post("/api/chat", json=body))
    thinking = "".join(c["message"].get("thinking", "") for c in chunks)
    content = "".join(c["message"]["content"] for c in chunks)
    assert thinking == "The user wants the weather."
    assert content == "Take an umbrella."
    for chunk in chunks:
        if "thinking" in chunk["message"]:
            assert chunk["message"]["content"] == ""
    assert chunks[-1]["done_reason"] == "stop"
    assert standin.prompts()[-1].endswith("<|im_start|>assistant\n")

    whole = await (await qwen3.post("/api/chat", json={**body, "stream": False})).json()
    assert whole["message"] == {"role": "assistant", "content": "Take an umbrella.",
                                "thinking": "The user wants the weather."}

    generated = await (await qwen3.post("/api/generate", json={
        "model": served_name(qwen3), "prompt": directive(THOUGHT + "Yes."), "think": "high",
        "stream": False})).json()
    assert generated["response"] == "Yes."
    assert generated["thinking"] == "The user wants the weather."
    streamed = await lines_of(await qwen3.post("/api/generate", json={
        "model": served_name(qwen3), "prompt": directive(THOUGHT + "Yes."), "think": True}))
    assert "".join(c.get("thinking", "") for c in streamed) == "The user wants the weather."
    assert "".join(c["response"] for c in streamed) == "Yes."


async def test_think_false_reaches_the_template(qwen3: TestClient[Any, Any],
                                                standin: Standin) -> None:
    await lines_of(await qwen3.post("/api/chat",
                                    json=ask(qwen3, directive("Hi."), think=False)))
    assert standin.prompts()[-1].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    await lines_of(await qwen3.post("/api/chat",
                                    json=ask(qwen3, directive("Hi."), think="low")))
    assert standin.prompts()[-1].endswith("<|im_start|>assistant\n")
    await lines_of(await qwen3.post("/api/generate", json={
        "model": served_name(qwen3), "prompt": directive("Hi."), "think": False}))
    assert standin.prompts()[-1].endswith("<think>\n\n</think>\n\n")


async def test_thinking_and_a_call_in_one_answer(qwen3: TestClient[Any, Any],
                                                 standin: Standin) -> None:
    body = ask(qwen3, directive(THOUGHT + CALL), think=True, tools=[WEATHER])
    chunks = await lines_of(await qwen3.post("/api/chat", json=body))
    assert "".join(c["message"].get("thinking", "") for c in chunks) \
        == "The user wants the weather."
    calls = [call for c in chunks for call in c["message"].get("tool_calls", ())]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris", "days": 2}]
    # The call and its reasoning go back; the turn of the current tool loop keeps it.
    history = [body["messages"][0],
               {"role": "assistant", "content": "", "thinking": "The user wants the weather.",
                "tool_calls": [{"function": calls[0]["function"], "id": calls[0]["id"]}]},
               {"role": "tool", "tool_name": "get_weather",
                "content": "18 degrees " + directive("Mild.")}]
    whole = await (await qwen3.post("/api/chat", json={
        "model": served_name(qwen3), "messages": history, "tools": [WEATHER], "think": True,
        "stream": False})).json()
    assert whole["message"]["content"] == "Mild."
    # Re-rendered, the turn is byte for byte what the model wrote, so the KV
    # cache keeps it and the run sends only what follows.
    second = standin.records.all("run")[-1]
    assert second["kv_reused"] == second["kv_before"] > 0
    assert second["prompt"].startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\n")


# -- refusals ---------------------------------------------------------------------------

@pytest.fixture
async def fake(aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app(fake_settings(),
                                         lambda s: FakeEngine(s, 1 * MS, Calls())))


BAD = [
    ({"tools": {"type": "function"}}, "tools must be a list, not an object"),
    ({"tools": ["get_weather"]}, "tools[0] must be an object, not a string"),
    ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function is required"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]},
     "tools[0].function.name is required"),
    ({"tools": [{"type": "function", "function": {"name": "two words"}}]},
     "is not a tool name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools[0].function.parameters must be an object, not a string"),
    ({"tools": [WEATHER, WEATHER]}, "declared twice"),
    ({"think": "extreme"}, "think must be true, false or one of low, medium, high, max, "
                           "not 'extreme'"),
    ({"think": 1}, "think must be true, false or one of low, medium, high, max, "
                   "not an integer"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": 3}}]}]},
     "messages[0].tool_calls[0].function.arguments must be"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}]},
     "messages[0].tool_calls[0].function is required"),
    ({"messages": [{"role": "tool", "tool_name": 7, "content": "x"}]},
     "messages[0].tool_name must be a string, not an integer"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
async def test_bad_tools_and_think_are_400(fake: TestClient[Any, Any], change: dict[str, Any],
                                           message: str) -> None:
    resp = await fake.post("/api/chat", json={**ask(fake, "hi"), **change})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert message in error, error


async def test_think_is_checked_on_generate_too(fake: TestClient[Any, Any]) -> None:
    resp = await fake.post("/api/generate", json={"model": served_name(fake), "prompt": "x",
                                                  "think": "yes"})
    assert resp.status == 400 and "think must be" in (await resp.json())["error"]


async def test_show_names_the_capabilities(qwen3: TestClient[Any, Any],
                                           fake: TestClient[Any, Any]) -> None:
    shown = await (await qwen3.post("/api/show", json={"model": served_name(qwen3)})).json()
    # The RKLLM engine also embeds (its last hidden layer); the fake does not.
    assert shown["capabilities"] == ["completion", "tools", "thinking", "embedding"]
    shown = await (await fake.post("/api/show", json={"model": served_name(fake)})).json()
    assert shown["capabilities"] == ["completion"]


# -- the ollama Python client -----------------------------------------------------------

QWEN3 = "qwen3-test"  # what the server calls the model in qwen3-test.rkllm


@pytest.fixture
async def client(aiohttp_server: ServerFactory, standin: Standin
                 ) -> AsyncIterator[ollama.AsyncClient]:
    app = make_app(standin.settings(f"{QWEN3}.rkllm", token_bytes=1))
    server = await aiohttp_server(app, host="127.0.0.1")
    made = ollama.AsyncClient(host=f"http://127.0.0.1:{server.port}")
    yield made
    await made.close()  # type: ignore[no-untyped-call]


def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city's name
    """
    return f"18 degrees in {city}"


async def test_client_round_trip(client: ollama.AsyncClient, standin: Standin) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris? "
                            + directive("Checking. " + CALL)}]
    first = await client.chat(model=QWEN3, messages=messages, tools=[get_weather],
                              think=False)
    assert first.message.content == "Checking. "
    calls = first.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] \
        == [("get_weather", {"city": "Paris", "days": 2})]
    assert first.done_reason == "stop"
    messages.append(first.message)
    for call in calls:
        result = get_weather(call.function.arguments["city"])
        messages.append({"role": "tool", "tool_name": call.function.name,
                         "content": result + " " + directive("It is 18 degrees in Paris.")})
    final = await client.chat(model=QWEN3, messages=messages, tools=[get_weather],
                              think=False)
    assert final.message.content == "It is 18 degrees in Paris."
    assert not final.message.tool_calls
    assert "<tool_response>\n18 degrees in Paris [[reply=" in standin.prompts()[-1]


async def test_client_thinking_and_streamed_calls(client: ollama.AsyncClient) -> None:
    reply = await client.chat(model=QWEN3, think=True, messages=[
        {"role": "user", "content": directive(THOUGHT + "Sunny.")}])
    assert reply.message.thinking == "The user wants the weather."
    assert reply.message.content == "Sunny."
    thinking = content = ""
    calls: list[ollama.Message.ToolCall] = []
    async for part in await client.chat(
            model=QWEN3, think=True, stream=True, tools=[WEATHER], messages=[
                {"role": "user", "content": directive(THOUGHT + "Let me see. " + CALL)}]):
        thinking += part.message.thinking or ""
        content += part.message.content or ""
        calls += part.message.tool_calls or []
    assert thinking == "The user wants the weather." and content == "Let me see. "
    assert [c.function.arguments for c in calls] == [{"city": "Paris", "days": 2}]
    generated = await client.generate(model=QWEN3, think="medium",
                                      prompt=directive(THOUGHT + "Yes."))
    assert generated.thinking == "The user wants the weather."
    assert generated.response == "Yes."
