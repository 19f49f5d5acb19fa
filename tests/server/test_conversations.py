"""Conversations on the RKLLM engine, end to end over /ws and the OpenAI API.

The stand-in models a KV cache: it records the bytes each run prefills, and
with ``reply_mode = context`` it answers with a digest of everything its
cache holds. So each answer proves what the model saw: the whole
conversation in the model's own format (ChatML here), whatever was sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from rkstream.chat.format import ChatFormat
from rkstream.config import ChatSettings, RKLLMSettings, Settings, VisionSettings
from rkstream.core.messages import Message, TextPart
from rkstream.server.app import make_app

from conftest import ModelFactory, Records
from helpers import WSClient, context_reply, jpeg
from tiny_encoder import build_tiny_encoder

Client = TestClient[Any, Any]
QWEN = ChatFormat.preset("qwen2")
EOT = "<|im_end|>"


def rendered(history: list[dict[str, Any]]) -> str:
    """The conversation as rkstream must render it (text turns only)."""
    return QWEN.render(tuple(Message(m["role"], (TextPart(m["content"]),)) for m in history),
                       None)


@pytest.fixture(params=["1.3", "1.2"])
def line(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(aiohttp_client: Callable[..., Awaitable[Client]], standin_libs: dict[str, Path],
           standin_model: ModelFactory, records: Records, line: str, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Callable[..., Awaitable[Client]]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # prompt cache files

    async def make(kv_reuse: str = "history", vision: bool = False, instances: int = 1,
                   system_prompt: str = "", cache_system_prompt: bool = False,
                   **keys: Any) -> Client:
        model = standin_model(record=records.path, reply_mode="context", **keys)
        encoder = build_tiny_encoder(tmp_path / "tiny.onnx", width=16) if vision else None
        settings = replace(
            Settings(), instances=instances,
            rkllm=replace(RKLLMSettings(), library=str(standin_libs[line]), model=str(model),
                          kv_reuse=kv_reuse),
            chat=replace(ChatSettings(), family="qwen2", system_prompt=system_prompt,
                         cache_system_prompt=cache_system_prompt),
            vision=replace(VisionSettings(), encoder=str(encoder or "")))
        return await aiohttp_client(make_app(settings))
    return make


async def ws_turn(conn: WSClient, rid: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    await conn.send({"type": "response.create", "request_id": rid, "input": history})
    return (await conn.until_done({rid}))[rid]


async def test_ten_turns_send_only_what_is_new(server: Any, records: Records) -> None:
    client = await server()
    conn = WSClient(await client.ws_connect("/ws"))
    created = await conn.recv()
    assert created["model"]["chat_format"] == "qwen2"
    (template,) = records.all("set_chat_template")  # the runtime's own, off once at load
    assert template["system_prompt"] == template["prompt_prefix"] == ""
    history: list[dict[str, Any]] = [{"role": "system", "content": "Be brief. " * 50}]
    for turn in range(10):
        history.append({"role": "user", "content": f"question {turn}"})
        done = await ws_turn(conn, f"t{turn}", history)
        answer = conn.text(f"t{turn}")
        assert answer == context_reply(rendered(history))  # the model saw the whole chat
        run = records.all("run")[-1]
        if turn == 0:
            assert run["kv_reused"] == 0 and done["timings"]["cache_n"] == 0
        else:  # only the end of the last answer and this question
            assert run["kv_text_new"] == (f"{EOT}\n<|im_start|>user\nquestion {turn}{EOT}\n"
                                          "<|im_start|>assistant\n")
            assert run["infer"]["keep_history"] == 1
            assert done["timings"]["cache_n"] > 100  # the system prompt and every turn
        assert done["timings"]["prompt_n"] == run_prefill(records)
        history.append({"role": "assistant", "content": answer})
    assert not records.all("clear_kv_cache")


def run_prefill(records: Records) -> int:
    return int(records.all("run_end")[-1]["prefill_tokens"])


async def test_edited_history_falls_back_to_the_whole_prompt(server: Any,
                                                           records: Records) -> None:
    conn = WSClient(await (await server()).ws_connect("/ws"))
    await conn.recv()
    history: list[dict[str, Any]] = [{"role": "user", "content": "first"}]
    await ws_turn(conn, "a", history)
    history += [{"role": "assistant", "content": "an answer the client rewrote"},
                {"role": "user", "content": "second"}]
    await ws_turn(conn, "b", history)
    assert conn.text("b") == context_reply(rendered(history))
    assert records.all("clear_kv_cache")  # the stale cache went first
    assert records.all("run")[-1]["kv_reused"] == 0


async def test_interleaved_conversations_on_one_instance(server: Any, records: Records) -> None:
    conn = WSClient(await (await server()).ws_connect("/ws"))
    await conn.recv()
    chats: dict[str, list[dict[str, Any]]] = {"x": [], "y": []}
    for turn in range(3):
        for name, history in chats.items():
            history.append({"role": "user", "content": f"{name} says {turn}"})
            rid = f"{name}{turn}"
            await ws_turn(conn, rid, history)
            assert conn.text(rid) == context_reply(rendered(history))
            history.append({"role": "assistant", "content": conn.text(rid)})


async def test_two_instances_keep_their_conversations(server: Any, records: Records) -> None:
    """The scheduler sends each follow-up to the instance that holds its chat."""
    conn = WSClient(await (await server(instances=2)).ws_connect("/ws"))
    await conn.recv()
    chats: dict[str, list[dict[str, Any]]] = {"x": [], "y": []}
    for turn in range(3):
        for name, history in chats.items():
            history.append({"role": "user", "content": f"{name} says {turn} " * 20})
        ids = {f"{name}{turn}": history for name, history in chats.items()}
        for rid, history in ids.items():
            await conn.send({"type": "response.create", "request_id": rid, "input": history})
        await conn.until_done(set(ids))
        for rid, history in ids.items():
            assert conn.text(rid) == context_reply(rendered(history))
            history.append({"role": "assistant", "content": conn.text(rid)})
    assert not records.all("clear_kv_cache")  # no instance had to drop the other's chat


async def test_openai_follow_up_reports_cached_tokens(server: Any, records: Records) -> None:
    client = await server()
    history: list[dict[str, Any]] = [{"role": "user", "content": "hello there " * 30}]
    for turn in range(3):
        response = await client.post("/v1/chat/completions", json={"messages": history})
        body = await response.json()
        answer = body["choices"][0]["message"]["content"]
        assert answer == context_reply(rendered(history))
        usage = body["usage"]
        if turn:
            assert usage["prompt_tokens_details"]["cached_tokens"] > 30
            assert body["timings"]["cache_n"] == usage["prompt_tokens_details"]["cached_tokens"]
        assert usage["prompt_tokens"] == (body["timings"]["prompt_n"]
                                          + body["timings"]["cache_n"])
        history += [{"role": "assistant", "content": answer},
                    {"role": "user", "content": f"more {turn}"}]


async def test_runtime_mode_sends_everything_and_off_mode_clears(server: Any,
                                                                records: Records) -> None:
    client = await server(kv_reuse="runtime")
    history: list[dict[str, Any]] = [{"role": "user", "content": "one two three"}]
    first = await (await client.post("/v1/chat/completions", json={"messages": history})).json()
    history += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                {"role": "user", "content": "four"}]
    second = await (await client.post("/v1/chat/completions",
                                      json={"messages": history})).json()
    assert second["choices"][0]["message"]["content"] == context_reply(rendered(history))
    run = records.all("run")[-1]
    assert run["infer"]["keep_history"] == 0 and run["prompt"] == rendered(history)
    assert run["kv_reused"] > 0  # the runtime's own prefix reuse


async def test_off_mode_clears_before_every_run(server: Any, records: Records) -> None:
    client = await server(kv_reuse="off")
    for text in ("a", "b"):
        await client.post("/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": text}]})
    assert len(records.all("clear_kv_cache")) == 2
    assert all(r["kv_reused"] == 0 for r in records.all("run"))


async def test_images_in_the_history(server: Any, records: Records) -> None:
    conn = WSClient(await (await server(vision=True)).ws_connect("/ws"))
    await conn.recv()
    picture = {"type": "image", "data": jpeg(10), "format": "jpeg"}
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [picture, {"type": "text", "text": "what is it?"}]}]
    await ws_turn(conn, "a", history)
    assert records.all("run")[-1]["n_image"] == 1
    history += [{"role": "assistant", "content": conn.text("a")},
                {"role": "user", "content": "and its colour?"}]
    done = await ws_turn(conn, "b", history)
    run = records.all("run")[-1]
    assert run["input_type"] == "prompt"  # the image is in the cache already
    assert "<image>" not in run["kv_text_new"] and done["status"] == "completed"
    other = {"type": "image", "data": jpeg(99), "format": "jpeg"}  # another first image
    history[0] = {"role": "user", "content": [other, {"type": "text", "text": "what is it?"}]}
    await ws_turn(conn, "c", history)
    run = records.all("run")[-1]
    assert run["n_image"] == 1 and run["kv_reused"] == 0  # not mistaken for the cached one


async def test_completions_send_the_raw_prompt(server: Any, records: Records) -> None:
    client = await server()
    body = await (await client.post("/v1/completions",
                                    json={"prompt": "def add(a, b):"})).json()
    assert records.all("run")[-1]["prompt"].endswith("def add(a, b):")
    assert "<|im_start|>" not in records.all("run")[-1]["kv_text_new"]
    assert body["choices"][0]["text"].startswith("ctx:")


async def test_fim_on_rkllm_uses_the_family_markers(server: Any, records: Records) -> None:
    client = await server()
    body = await (await client.post("/v1/completions",
                                    json={"prompt": "def f(", "suffix": "return x"})).json()
    assert body["choices"][0]["text"].startswith("ctx:"), body
    assert records.all("run")[-1]["prompt"] == (
        "<|fim_prefix|>def f(<|fim_suffix|>return x<|fim_middle|>")


async def test_overflow_drop_oldest(aiohttp_client: Callable[..., Awaitable[Client]],
                                   standin_libs: dict[str, Path], standin_model: ModelFactory,
                                   records: Records) -> None:
    model = standin_model(record=records.path, reply_mode="context")
    base = replace(Settings(), rkllm=replace(RKLLMSettings(), library=str(standin_libs["1.3"]),
                                             model=str(model), max_context_len=256))
    history = [{"role": "system", "content": "sys"}]
    for turn in range(6):
        history += [{"role": "user", "content": f"question {turn} " + "x" * 60},
                    {"role": "assistant", "content": "y" * 60}]
    history.append({"role": "user", "content": "last one"})
    body = {"messages": history, "max_tokens": 16}
    strict = await aiohttp_client(make_app(replace(base, chat=replace(ChatSettings(),
                                                                      family="qwen2"))))
    refused = await strict.post("/v1/chat/completions", json=body)
    assert refused.status == 400
    assert (await refused.json())["error"]["code"] == "context_overflow"
    lenient = await aiohttp_client(make_app(replace(base, chat=replace(
        ChatSettings(), family="qwen2", overflow="drop_oldest"))))
    answer = await (await lenient.post("/v1/chat/completions", json=body)).json()
    prompt = records.all("run")[-1]["prompt"]
    assert "sys" in prompt and "last one" in prompt and "question 0" not in prompt
    assert answer["choices"][0]["message"]["content"].startswith("ctx:")


@pytest.mark.parametrize("cached", [True, False])
async def test_system_prompt_cache_skips_the_system_block(server: Any, records: Records,
                                                          cached: bool) -> None:
    """The default system prompt, cached at load, is not prefilled by a new
    conversation's first turn; the digest proves the model still saw it."""
    system = "You are a careful assistant. Answer briefly. " * 10
    client = await server(system_prompt=system, cache_system_prompt=cached)
    conn = WSClient(await client.ws_connect("/ws"))
    await conn.recv()
    block = f"<|im_start|>system\n{system}{EOT}\n"
    assert rendered([{"role": "system", "content": system}]).startswith(block)
    if cached:
        (save,) = [r for r in records.all("run") if r["infer"]["prompt_cache"]]
        assert save["prompt"] == block
    chats: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for rid, name in (("a0", "a"), ("a1", "a"), ("b0", "b")):  # b's turn follows a clear
        history = chats[name]
        history.append({"role": "user", "content": f"question {rid}"})
        done = await ws_turn(conn, rid, history)
        full = rendered([{"role": "system", "content": system}, *history])
        # the whole conversation, system block included
        assert conn.text(rid) == context_reply(full)
        history.append({"role": "assistant", "content": conn.text(rid)})
        run = records.all("run")[-1]
        if rid == "a1":  # a follow-up extends the cache; the prompt cache has no part
            assert run["prompt_cache_reused"] == 0 and run["infer"]["keep_history"] == 1
        elif cached:
            turn = full[len(block):]
            assert run["kv_text_new"] == turn and run["prefill_bytes"] == len(turn.encode())
            assert run["prompt_cache_reused"] == len(block.encode()) == run["kv_reused"]
            assert done["timings"]["cache_n"] == len(block.split())
            assert done["timings"]["prompt_n"] == run_prefill(records) == len(turn.split())
        else:
            assert run["kv_text_new"] == full and run["prompt_cache_reused"] == 0
            assert done["timings"]["cache_n"] == 0
    if cached:  # the OpenAI API reports the cached block too
        body = await (await client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "over http"}]})).json()
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == len(block.split())
        assert records.all("run")[-1]["prompt_cache_reused"] == len(block.encode())


async def test_a_length_cut_answer_continues_from_the_cache(server: Any,
                                                           records: Records) -> None:
    conn = WSClient(await (await server()).ws_connect("/ws"))
    await conn.recv()
    history: list[dict[str, Any]] = [{"role": "user", "content": "first"}]
    await conn.send({"type": "response.create", "request_id": "a", "input": history,
                     "params": {"max_tokens": 1}})
    done = (await conn.until_done({"a"}))["a"]
    assert done["status"] == "incomplete"
    cut = conn.text("a")  # the first word of the digest: all that reached the cache
    history += [{"role": "assistant", "content": cut}, {"role": "user", "content": "go on"}]
    await ws_turn(conn, "b", history)
    assert conn.text("b") == context_reply(rendered(history))
    assert not records.all("clear_kv_cache") and records.all("run")[-1]["kv_reused"] > 0


async def test_after_a_runtime_error_the_cache_is_cleared(server: Any,
                                                         records: Records) -> None:
    conn = WSClient(await (await server(error_after=1)).ws_connect("/ws"))
    await conn.recv()
    history: list[dict[str, Any]] = [{"role": "user", "content": "first"}]
    assert (await ws_turn(conn, "a", history))["status"] == "failed"
    history += [{"role": "assistant", "content": conn.text("a")},
                {"role": "user", "content": "again"}]
    await ws_turn(conn, "b", history)
    # What the cache held after the error is unknown: it goes before the next run.
    clear, = records.all("clear_kv_cache")
    assert clear["t_ns"] < records.all("run")[-1]["t_ns"]
