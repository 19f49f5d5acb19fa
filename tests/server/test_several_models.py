"""One server, three models: two RKLLM stand-in models (each recording its calls to
a file of its own) and the bundled SmolLM2 on the CPU engine, served by name.

The stand-in's records show which handle ran; the pool's lifecycle (load on
demand, keep_alive, the count limit, load failures) is seen through the APIs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import pytest_asyncio

from rkstream.config import Settings
from rkstream.config.settings import ModelEntry, PoolSettings, RKLLMSettings
from rkstream.engines.llamacpp.model import bundled_model
from rkstream.server.app import make_app

from conftest import Records
from helpers import MS, WSClient, model_file, reply


class Board:
    """The server's URL, its HTTP client, and each stand-in model's records."""

    def __init__(self, url: str, client: Any, records: dict[str, Records]) -> None:
        self.url = url
        self.client = client
        self.records = records
        self.sdks: list[Any] = []

    def openai(self) -> openai.AsyncOpenAI:
        self.sdks.append(openai.AsyncOpenAI(base_url=self.url + "v1", api_key="x",
                                            max_retries=0))
        return self.sdks[-1]  # type: ignore[no-any-return]

    def ollama(self) -> ollama.AsyncClient:
        self.sdks.append(ollama.AsyncClient(host=self.url))
        return self.sdks[-1]  # type: ignore[no-any-return]

    async def close(self) -> None:
        for sdk in self.sdks:  # ollama 0.6's close() is untyped
            await sdk.close()

    async def ps(self) -> list[str]:
        response = await self.client.get("/api/ps")
        return [m["name"] for m in (await response.json())["models"]]

    async def until_loaded(self, names: list[str]) -> None:
        """Wait until exactly ``names`` are loaded (an unload ends just after the
        runtime's destroy)."""
        for _ in range(200):
            if sorted(await self.ps()) == sorted(names):
                return
            await asyncio.sleep(10 * MS)
        assert sorted(await self.ps()) == sorted(names)

    def handles(self, model: str, call: str) -> set[int]:
        return {row["handle"] for row in self.records[model].all(call)}


def several(tmp_path: Path, library: Path, *, broken: bool = False, slow_ms: int = 0,
            **pool: Any) -> tuple[Settings, dict[str, Records]]:
    """chat (Qwen2.5 format, the default) and think (Qwen3) on the stand-in, smol on
    the CPU engine; ``broken`` adds a model whose init fails."""
    records = {name: Records(tmp_path / f"{name}.jsonl") for name in ("chat", "think")}
    chat = model_file(tmp_path, "qwen2.5-chat.rkllm", record=records["chat"].path,
                      hidden_size=8, token_delay_us=slow_ms * 1000)
    think = model_file(tmp_path, "qwen3-think.rkllm", record=records["think"].path,
                       token_delay_us=slow_ms * 1000)
    gguf = bundled_model()
    assert gguf is not None, "run `rkstream setup` (the bundled SmolLM2)"
    entries = {"chat": ModelEntry(model=str(chat)), "think": ModelEntry(model=str(think)),
               "smol": ModelEntry(model=str(gguf), context=512)}
    if broken:
        entries["broken"] = ModelEntry(model=str(model_file(tmp_path, "broken.rkllm",
                                                            fail_init=1)))
    settings = replace(Settings(), rkllm=replace(RKLLMSettings(), library=str(library)),
                       models=entries, pool=replace(PoolSettings(), default_model="chat", **pool))
    return settings, records


@pytest_asyncio.fixture
async def board(aiohttp_server: Any, aiohttp_client: Any, standin_libs: dict[str, Path],
                tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Board] = []

    async def make(**keys: Any) -> Board:
        settings, records = several(tmp_path, standin_libs["1.3"], **keys)
        server = await aiohttp_server(make_app(settings))
        client = await aiohttp_client(server)
        made.append(Board(str(server.make_url("/")), client, records))
        return made[-1]
    yield make
    for b in made:
        await b.close()


async def chat(client: Any, model: str, text: str, **extra: Any) -> Any:
    return await client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8,
        **extra})


async def test_each_name_reaches_its_own_model(board: Any) -> None:
    b: Board = await board()
    sdk = b.openai()
    assert await b.ps() == ["chat"]  # the default loads at start; the others on demand
    first = await sdk.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": reply("from chat")}])
    assert first.choices[0].message.content == "from chat" and first.model == "chat"
    assert b.records["think"].all() == []
    second = await sdk.chat.completions.create(
        model="think", messages=[{"role": "user", "content": reply("from think")}])
    assert second.choices[0].message.content == "from think"
    third = await sdk.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
    assert third.choices[0].message.content and third.model == "smol"
    # Each stand-in run happened on the handle its model's init created.
    for name in ("chat", "think"):
        assert len(b.handles(name, "init")) == 1
        assert b.handles(name, "run") == b.handles(name, "init")
    assert b.handles("chat", "init") != b.handles("think", "init")
    assert sorted(await b.ps()) == ["chat", "smol", "think"]
    listed = await sdk.models.list()
    assert [m.id for m in listed.data] == ["chat", "think", "smol"]


async def test_each_resident_npu_model_has_its_own_domain(board: Any) -> None:
    b: Board = await board()
    assert (await chat(b.client, "think", "hi")).status == 200
    domains = {name: b.records[name].all("init")[0]["extend_param"]["base_domain_id"]
               for name in ("chat", "think")}
    assert domains == {"chat": 1, "think": 2}


async def test_unknown_names_are_refused_on_every_api(board: Any) -> None:
    b: Board = await board()
    client = b.client
    refused = await chat(client, "gpt-4o", "hi")
    body = await refused.json()
    assert refused.status == 404 and body["error"]["code"] == "model_not_found"
    assert "'chat'" in body["error"]["message"]  # names what is served
    ollama_chat = await client.post("/api/chat", json={
        "model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]})
    assert ollama_chat.status == 404
    assert (await ollama_chat.json())["error"].startswith("model 'llama3:8b' not found")
    anthropic = await client.post("/v1/messages", json={
        "model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status == 404
    assert (await anthropic.json())["error"]["type"] == "not_found_error"
    for path, extra in (("/v1/embeddings", {"input": "hi"}), ("/api/embed", {"input": "hi"}),
                        ("/api/show", {}), ("/v1/responses", {"input": "hi"})):
        response = await client.post(path, json={"model": "nope", **extra})
        assert response.status == 404, path
    assert (await client.get("/v1/models/nope")).status == 404
    async with client.ws_connect("/ws") as ws:
        c = WSClient(ws)
        await c.recv_type("session.created")
        await c.send({"type": "response.create", "request_id": "r", "model": "nope",
                      "input": [{"role": "user", "content": "hi"}]})
        done = (await c.until_done({"r"}))["r"]
        assert done["status"] == "failed" and done["error"]["code"] == "model_not_found"
        refusal = next(e for e in c.events if e["type"] == "error")
        assert refusal["request_id"] == "r" and refusal["error"]["param"] == "model"
        await c.send({"type": "session.update", "session": {"model": "nope"}})
        error = await c.recv_type("error")
        assert error["error"]["code"] == "model_not_found"
        assert error["error"]["param"] == "session.model"
    assert await b.ps() == ["chat"]  # nothing was loaded for them


async def test_ws_sees_the_model_load_and_can_pick_a_session_model(board: Any) -> None:
    b: Board = await board()
    async with b.client.ws_connect("/ws") as ws:
        c = WSClient(ws)
        created = await c.recv_type("session.created")
        assert created["model"]["id"] == "chat" and created["model"]["loaded"] is True
        assert [(m["id"], m["loaded"]) for m in created["models"]] == [
            ("chat", True), ("think", False), ("smol", False)]
        await c.send({"type": "response.create", "request_id": "r1", "model": "think",
                      "input": [{"role": "user", "content": reply("thought")}]})
        done = (await c.until_done({"r1"}))["r1"]
        kinds = [e["type"] for e in c.events if e.get("request_id") == "r1"]
        # The load comes before the queue: started only once the model is there.
        assert kinds[:4] == ["response.created", "model.loading", "model.loaded",
                             "response.started"]
        loading = next(e for e in c.events if e["type"] == "model.loading")
        assert loading["model"] == "think" and loading["queue_position"] == 0
        assert done["status"] == "completed" and done["model"] == "think"
        assert done["timings"]["load_ms"] > 0 and c.text("r1") == "thought"
        await c.send({"type": "session.update", "session": {"model": "smol"}})
        updated = await c.recv_type("session.updated")
        assert updated["session"]["model"] == "smol"
        await c.send({"type": "response.create", "request_id": "r2", "params": {"max_tokens": 3},
                      "input": [{"role": "user", "content": "Hello"}]})
        second = (await c.until_done({"r2"}))["r2"]
        assert second["model"] == "smol" and second["status"] in ("completed", "incomplete")
        assert not any(e["type"] == "model.loading" and e["request_id"] == "r2"
                       for e in c.events) or second["timings"]["load_ms"] > 0


async def test_a_request_can_be_cancelled_while_its_model_loads(board: Any) -> None:
    b: Board = await board()
    async with b.client.ws_connect("/ws") as ws:
        c = WSClient(ws)
        await c.recv_type("session.created")
        await c.send({"type": "response.create", "request_id": "r", "model": "smol",
                      "input": [{"role": "user", "content": "Hello"}]})
        await c.recv_type("model.loading")
        await c.send({"type": "response.cancel", "request_id": "r"})
        done = (await c.until_done({"r"}))["r"]
        assert done["status"] == "cancelled" and done["model"] == "smol"
        assert not any(e["type"] == "response.started" for e in c.events)
    # The load goes on (it is not the request's), and the model stays for the next one.
    await b.until_loaded(["chat", "smol"])


async def test_keep_alive_zero_unloads_after_the_answer(board: Any) -> None:
    b: Board = await board()
    client = b.ollama()
    answer = await client.chat(model="think", keep_alive=0,
                               messages=[{"role": "user", "content": reply("once")}])
    assert answer.message.content == "once" and (answer.load_duration or 0) > 0
    await b.until_loaded(["chat"])
    assert len(b.records["think"].all("destroy")) == 1
    # An empty request loads a model (and keeps it 5 minutes), or unloads it.
    loaded = await client.generate(model="think")
    assert loaded.done_reason == "load" and "think" in await b.ps()
    ps = await (await b.client.get("/api/ps")).json()
    expires = {m["name"]: m["expires_at"] for m in ps["models"]}
    assert expires["chat"].startswith("9999")  # the default model is kept
    assert expires["think"] > time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 240))
    unloaded = await client.generate(model="think", keep_alive=0)
    assert unloaded.done_reason == "unload"
    await b.until_loaded(["chat"])
    assert len(b.records["think"].all("destroy")) == 2


async def test_an_idle_model_makes_room_a_busy_one_does_not(board: Any) -> None:
    b: Board = await board(max_loaded=2, slow_ms=20)
    async with b.client.ws_connect("/ws") as ws:
        c = WSClient(ws)
        await c.recv_type("session.created")
        await c.send({"type": "response.create", "request_id": "long", "model": "think",
                      "params": {"max_tokens": 60},
                      "input": [{"role": "user", "content": reply("x " * 60)}]})
        await c.recv_type("response.output_text.delta", 10000 * MS)
        # think is generating, chat (the default) is idle: loading smol unloads chat.
        answer = await chat(b.client, "smol", "Hello", max_tokens=2)
        assert answer.status == 200
        assert b.records["chat"].all("destroy") and not b.records["think"].all("destroy")
        done = (await c.until_done({"long"}, 20000 * MS))["long"]
        assert done["status"] in ("completed", "incomplete") and done["usage"]["output_tokens"]
    assert sorted(await b.ps()) == ["smol", "think"]


async def test_concurrent_requests_for_several_models_are_all_answered(board: Any) -> None:
    b: Board = await board(slow_ms=5)
    texts = {("chat", n): f"chat {n}" for n in range(3)} | {
        ("think", n): f"think {n}" for n in range(3)}
    answers = await asyncio.gather(
        *(chat(b.client, model, reply(text), max_tokens=32)
          for (model, _), text in texts.items()),
        chat(b.client, "smol", "Hi", max_tokens=2))
    bodies = [await a.json() for a in answers]
    assert all(a.status == 200 for a in answers)
    assert [body["choices"][0]["message"]["content"] for body in bodies[:-1]] == list(
        texts.values())
    # One RKLLM model generates at a time (npu_models_at_once = 1): runs never overlap.
    spans = [(row["t_ns"], end["t_ns"], name)
             for name in ("chat", "think")
             for row, end in zip(b.records[name].all("run"), b.records[name].all("run_end"),
                                 strict=True)]
    spans.sort()
    assert all(later[0] >= earlier[1] or later[2] == earlier[2]
               for earlier, later in itertools.pairwise(spans))


def span(records: Records) -> tuple[int, int]:
    """When the model's latest run began and ended (the stand-in's clock)."""
    return records.all("run")[-1]["t_ns"], records.all("run_end")[-1]["t_ns"]


async def test_models_may_share_the_npu_when_allowed(board: Any) -> None:
    b: Board = await board(slow_ms=10, npu_models_at_once=2)
    assert (await chat(b.client, "think", "warm up")).status == 200
    await asyncio.gather(chat(b.client, "chat", reply("a " * 10), max_tokens=10),
                         chat(b.client, "think", reply("b " * 10), max_tokens=10))
    chat_start, chat_end = span(b.records["chat"])
    think_start, think_end = span(b.records["think"])
    assert think_start < chat_end and chat_start < think_end  # they overlapped


async def test_the_usual_embedding_clients_work_by_name(board: Any) -> None:
    b: Board = await board()
    sdk = b.openai()
    cpu = await sdk.embeddings.create(model="smol", input=["one", "two"])
    assert len(cpu.data) == 2 and cpu.model == "smol" and len(cpu.data[0].embedding) > 8
    npu = await sdk.embeddings.create(model="chat", input="one")
    assert len(npu.data[0].embedding) == 8  # the stand-in's hidden_size
    client = b.ollama()
    embedded = await client.embed(model="chat", input=["one", "one"])
    assert embedded.embeddings[0] == embedded.embeddings[1]
    with pytest.raises(openai.NotFoundError):
        await sdk.embeddings.create(model="nope", input="one")


async def test_a_load_failure_leaves_the_others_serving(board: Any) -> None:
    b: Board = await board(broken=True)
    failed = await chat(b.client, "broken", "hi")
    body = await failed.json()
    assert failed.status == 500 and body["error"]["code"] == "model_load_failed"
    assert "broken" in body["error"]["message"]
    health = await b.client.get("/health")
    assert health.status == 200
    report = await health.json()
    assert report["status"] == "degraded"
    assert {m["name"]: m["status"] for m in report["models"]}["broken"] == "failed"
    ok = await chat(b.client, "chat", reply("still here"))
    assert (await ok.json())["choices"][0]["message"]["content"] == "still here"
    listed = await (await b.client.get("/v1/models")).json()
    assert {m["id"]: m["status"]["value"] for m in listed["data"]}["broken"] == "failed"


async def test_show_tags_and_ps_describe_each_model(board: Any) -> None:
    b: Board = await board()
    tags = await (await b.client.get("/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["chat", "think", "smol"]
    assert {m["name"]: m["details"]["format"] for m in tags["models"]} == {
        "chat": "rkllm", "think": "rkllm", "smol": "gguf"}
    show = await (await b.client.post("/api/show", json={"model": "think"})).json()
    assert show["model_info"]["rkstream.loaded"] is False
    assert (await chat(b.client, "think", "hi")).status == 200
    show = await (await b.client.post("/api/show", json={"model": "think:latest"})).json()
    assert show["model_info"]["rkstream.loaded"] is True and "thinking" in show["capabilities"]
    ps = await (await b.client.get("/api/ps")).json()
    assert all(m["size"] > 0 and m["context_length"] for m in ps["models"])
    metrics = await (await b.client.get("/metrics")).text()
    assert "rkstream_models_loaded 2.0" in metrics
    assert 'rkstream_instance_up{instance="0",model="think"} 1.0' in metrics


async def test_the_single_model_config_still_works(aiohttp_client: Any,
                                                   standin_libs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    model = model_file(tmp_path, "qwen2.5-solo.rkllm")
    settings = replace(Settings(), engine="rkllm", rkllm=replace(
        RKLLMSettings(), library=str(standin_libs["1.3"]), model=str(model)))
    client = await aiohttp_client(make_app(settings))
    listed = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == ["qwen2.5-solo"]
    for name in (None, "qwen2.5-solo", "qwen2.5-solo:latest"):
        body: dict[str, Any] = {"messages": [{"role": "user", "content": reply("ok")}]}
        if name is not None:
            body["model"] = name
        answer = await client.post("/v1/chat/completions", json=body)
        assert (await answer.json())["choices"][0]["message"]["content"] == "ok"
    assert (await chat(client, "something-else", "hi")).status == 404


async def test_a_bad_keep_alive_is_refused(board: Any) -> None:
    b: Board = await board()
    response = await b.client.post("/api/chat", json={
        "model": "chat", "keep_alive": "soon", "messages": [{"role": "user", "content": "x"}]})
    assert response.status == 400
    assert "keep_alive" in (await response.json())["error"]


async def test_a_request_whose_model_loads_first_learns_its_place_after_the_load(
        board: Any) -> None:
    # Created at 0 (nothing is queued while the model loads), then, after
    # model.loaded, its place behind the requests that joined the queue first:
    # the one response.queued that may be higher; from there it only goes down.
    b: Board = await board(slow_ms=20)
    async with b.client.ws_connect("/ws") as ws:
        c = WSClient(ws)
        await c.recv_type("session.created")
        ids = [f"r{i}" for i in range(4)]
        for rid in ids:
            await c.send({"type": "response.create", "request_id": rid, "model": "think",
                          "input": [{"role": "user", "content": reply("a b c d")}]})
        done = await c.until_done(set(ids))
    assert all(d["status"] == "completed" for d in done.values())
    last = [e for e in c.events if e.get("request_id") == "r3"]
    assert last[0]["type"] == "response.created" and last[0]["queue_position"] == 0
    kinds = [e["type"] for e in last]
    assert kinds[1:3] == ["model.loading", "model.loaded"]
    positions = [e["queue_position"] for e in last if e["type"] == "response.queued"]
    assert kinds[3] == "response.queued" and positions[0] > 0  # up from created's 0
    assert positions == sorted(positions, reverse=True) and len(set(positions)) == len(positions)
    assert kinds.index("response.started") > kinds.index("model.loaded")
