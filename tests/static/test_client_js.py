"""static/rkstream.js, the browser client of protocol v1, in a real browser
(Debian's Chromium, driven by Playwright) against servers on the stand-in runtime.

A fixture page (client_page.html) is served at the server's own origin by a
Playwright route; it imports /static/rkstream.js from the server, and each test
drives the client with page.evaluate.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from page_steps import STATIC, pw_ms, watched_page
from playwright.async_api import Page

from rkstream.config import ServerSettings, VisionSettings
from rkstream.server.app import make_app

from helpers import MS, jpeg, model_file, reply, standin_settings
from tiny_encoder import build_tiny_encoder

PAGE = Path(__file__).with_name("client_page.html")
ServerFactory = Callable[..., Awaitable[TestServer]]
Maker = Callable[..., Awaitable[TestServer]]
# A long answer: 512 tokens (the stand-in's cap), 20 ms each.
LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"


def static_with_page(tmp_path: Path) -> Path:
    """A copy of static/ with the fixture page in it, for ``server.static_dir``: the
    page is then served by rkstream itself, at the origin of its /ws, as a page of a
    board is (Chromium's local-network checks block /ws from a page served otherwise)."""
    folder = tmp_path / "static"
    if not folder.exists():
        shutil.copytree(STATIC, folder)
        shutil.copy(PAGE, folder / PAGE.name)
    return folder


@pytest.fixture
def standin_server(aiohttp_server: ServerFactory, standin_libs: dict[str, Path],
                   tmp_path: Path) -> Callable[..., Awaitable[TestServer]]:
    """A server on a 1.3 stand-in model that also serves the fixture page:
    ``server`` settings (ServerSettings keys), ``vision`` settings, ``port``."""
    async def make(port: int | None = None, vision: dict[str, Any] | None = None,
                   **server: Any) -> TestServer:
        model = model_file(tmp_path, "qwen2.5-test.rkllm", embed_width=16)
        settings = standin_settings(standin_libs["1.3"], model)
        settings = replace(
            settings, server=replace(ServerSettings(), static_dir=str(static_with_page(tmp_path)),
                                     **server),
            vision=replace(VisionSettings(), **(vision or {})))
        return await aiohttp_server(make_app(settings), host="127.0.0.1", port=port)
    return make


@asynccontextmanager
async def client_page(server: TestServer) -> AsyncIterator[Page]:
    """The fixture page, from ``server``, with the module loaded as ``window.rk``;
    it fails the test on any uncaught page error."""
    async with watched_page(str(server.make_url("/static/" + PAGE.name))) as page:
        await page.wait_for_function("window.rkReady === true", timeout=pw_ms(5000))
        yield page


async def run(page: Page, script: str, arg: Any = None, timeout_ms: float = 10000) -> Any:
    """Evaluate an async arrow function in the page, within ``timeout_ms`` (scaled)."""
    return await asyncio.wait_for(page.evaluate(script, arg), timeout_ms * MS)


# Put in place of "CONNECT;" in a test's script: a client, connected, and its session.
CONNECT = "window.client = new rk.RkstreamClient(); window.session = await client.connect();"


async def test_streams_text_in_order_and_done_has_usage(standin_server: Maker) -> None:
    async with client_page(await standin_server()) as page:
        result = await run(page, """async (prompt) => {
            CONNECT;
            const handle = client.request(prompt, {params: {max_tokens: 50}});
            const events = [];
            for await (const event of handle) events.push(event);
            return {models: client.models.map((m) => m.id), session: session.type,
                    protocol: session.protocol, limits: session.limits,
                    types: events.map((e) => e.type),
                    seqs: events.filter((e) => "seq" in e).map((e) => e.seq),
                    deltas: events.filter((e) => e.type === "response.output_text.delta")
                                  .map((e) => e.delta),
                    text: handle.text, done: events.at(-1)};
        }""".replace("CONNECT;", CONNECT), reply("one two three four") + "[[token_delay_us=20000]]")
    assert result["models"] == ["qwen2.5-test"] and result["session"] == "session.created"
    assert result["protocol"] == "rkstream.v1" and result["limits"]["max_tokens"] > 0
    assert result["types"][0] == "response.created"
    assert result["types"][-1] == "response.done"
    # Deltas a slow reader has not taken yet are merged (protocol.md, "Deltas").
    assert "".join(result["deltas"]) == "one two three four" and len(result["deltas"]) > 1
    assert result["seqs"] == list(range(len(result["seqs"])))
    assert result["text"] == "one two three four"
    done = result["done"]
    assert done["status"] == "completed" and done["finish_reason"] == "stop"
    assert done["usage"]["output_tokens"] == 4 and done["usage"]["input_tokens"] > 0


async def test_two_requests_at_once_on_one_socket(standin_server: Maker) -> None:
    async with client_page(await standin_server()) as page:
        result = await run(page, """async ([first, second]) => {
            CONNECT;
            const log = [];
            const collect = async (handle) => {
                for await (const event of handle) log.push([handle.id, event.type]);
                return (await handle.result()).text;
            };
            const a = client.request(first), b = client.request(second);
            const texts = await Promise.all([collect(a), collect(b)]);
            return {ids: [a.id, b.id], texts, log};
        }""".replace("CONNECT;", CONNECT), [reply("alpha beta gamma") + "[[token_delay_us=30000]]",
                         reply("one two three") + "[[token_delay_us=30000]]"])
    a, b = result["ids"]
    assert a != b
    assert result["texts"] == ["alpha beta gamma", "one two three"]
    log = [tuple(entry) for entry in result["log"]]
    # Both were open at once: the second was created before the first was done.
    assert log.index((b, "response.created")) < log.index((a, "response.done"))


async def test_cancel_stops_a_long_request(standin_server: Maker) -> None:
    async with client_page(await standin_server()) as page:
        result = await run(page, """async (prompt) => {
            CONNECT;
            const handle = client.request(prompt);
            let cancelledAt = null, deltas = 0;
            for await (const event of handle) {
                if (event.type === "response.output_text.delta" && ++deltas === 3) {
                    handle.cancel();
                    cancelledAt = performance.now();
                }
            }
            const done = await handle.done;
            return {status: done.status, finish: done.finish_reason,
                    afterCancelMs: performance.now() - cancelledAt, text: handle.text};
        }""".replace("CONNECT;", CONNECT), LONG)
    assert result["status"] == "cancelled" and result["finish"] == "cancelled"
    assert result["text"].startswith("w w w")
    assert result["afterCancelMs"] < 1000 * MS * 1000  # far sooner than the 10 s answer


async def test_unknown_model_is_an_rkstream_error(standin_server: Maker) -> None:
    async with client_page(await standin_server()) as page:
        result = await run(page, """async () => {
            CONNECT;
            const handle = client.request("hello", {model: "no-such-model"});
            const types = [];
            for await (const event of handle) types.push(event.type);
            let error = null, sessionError = null;
            try { await handle.result(); } catch (e) { error = e; }
            try { await client.updateSession({model: "no-such-model"}); }
            catch (e) { sessionError = e; }
            const describe = (e) => ({isError: e instanceof rk.RkstreamError, name: e.name,
                code: e.code, param: e.param, message: e.message, type: e.type});
            const updated = await client.updateSession({instructions: "Be brief."});
            return {types, error: describe(error), sessionError: describe(sessionError),
                    updated};
        }""".replace("CONNECT;", CONNECT))
    assert result["types"] == ["error", "response.done"]
    error = result["error"]
    assert error["isError"] and error["name"] == "RkstreamError"
    assert error["code"] == "model_not_found" and "no-such-model" in error["message"]
    assert error["type"] == "invalid_request_error"
    session_error = result["sessionError"]
    assert session_error["isError"] and session_error["code"] == "model_not_found"
    assert session_error["param"] == "session.model"
    assert result["updated"]["instructions"] == "Be brief."


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny_qwen2.onnx", size=32,
                              patch=8, width=16)


async def test_upload_image_gives_an_image_id(standin_server: Maker, encoder_path: Path
                                              ) -> None:
    server = await standin_server(vision={"encoder": str(encoder_path)})
    photo = base64.b64encode(jpeg(1)).decode()
    async with client_page(server) as page:
        result = await run(page, """async (photo) => {
            CONNECT;
            const bytes = Uint8Array.from(atob(photo), (c) => c.charCodeAt(0));
            const fromBytes = await client.uploadImage(bytes, "jpeg");
            const fromBlob = await client.uploadImage(new Blob([bytes], {type: "image/jpeg"}));
            let bad = null;
            try { await client.uploadImage(new Uint8Array([1, 2, 3]), "jpeg"); }
            catch (e) { bad = {code: e.code, isError: e instanceof rk.RkstreamError}; }
            const handle = client.request([{role: "user", content: [
                {type: "image", image_id: fromBytes}, {type: "text", text: "What is it?"}]}]);
            const done = await handle.done;
            return {vision: session.model.vision, fromBytes, fromBlob, bad,
                    status: done.status, visionMs: done.timings.vision_ms};
        }""".replace("CONNECT;", CONNECT), photo)
    assert result["vision"] is True
    assert isinstance(result["fromBytes"], str) and result["fromBytes"]
    assert isinstance(result["fromBlob"], str) and result["fromBlob"] != result["fromBytes"]
    assert result["bad"] == {"code": "invalid_image", "isError": True}
    assert result["status"] == "completed"


async def test_reconnects_after_the_server_restarts(standin_server: Maker) -> None:
    first = await standin_server()
    port = first.port
    async with client_page(first) as page:
        await run(page, """async (prompt) => {
            window.client = new rk.RkstreamClient({minDelayMs: 50, maxDelayMs: 400});
            window.log = [];
            for (const name of ["session", "disconnect", "reconnecting"]) {
                client.addEventListener(name, (e) => log.push([name, e.detail.session_id ?? null]));
            }
            await client.connect();
            window.open = client.request(prompt);
            let streaming;
            const started = new Promise((resolve) => { streaming = resolve; });
            window.ended = (async () => {
                try {
                    for await (const event of open) {
                        if (event.type === "response.output_text.delta") streaming();
                    }
                    return (await open.done).status;
                } catch (e) { return e.code; }
            })();
            await started;
        }""", LONG)
        await first.close()
        ended = await run(page, "async () => await ended")
        # The server shut down cleanly: the open request got its cancelled
        # response.done (shutting_down) before the socket closed.
        assert ended == "cancelled"
        await page.wait_for_function(
            "log.filter(([name]) => name === 'reconnecting').length >= 2", timeout=pw_ms(5000))
        refused = await run(page, """async () => {
            try { await client.request("hi").done; return null; } catch (e) { return e.code; }
        }""")
        assert refused == "not_connected"
        second = await standin_server(port=port)
        assert second.port == port
        result = await run(page, """async (prompt) => {
            await client.connect();
            const text = (await client.request(prompt).result()).text;
            return {text, attempt: client.attempt, log};
        }""", reply("back again"))
    assert result["text"] == "back again"
    assert result["attempt"] == 0  # reset on success
    names = [name for name, _ in result["log"]]
    assert names[0] == "session" and names[1] == "disconnect" and names[-1] == "session"
    sessions = [sid for name, sid in result["log"] if name == "session"]
    assert len(sessions) == 2 and sessions[0] != sessions[1]


async def test_a_dropped_socket_ends_open_requests(standin_server: Maker) -> None:
    async with client_page(await standin_server()) as page:
        result = await run(page, """async (prompt) => {
            window.client = new rk.RkstreamClient({minDelayMs: 50});
            const first = await client.connect();
            const handle = client.request(prompt);
            let error = null;
            try {
                for await (const event of handle) {
                    if (event.type === "response.output_text.delta") client.ws.close();
                }
            } catch (e) { error = e; }
            let doneError = null;
            try { await handle.done; } catch (e) { doneError = e.code; }
            const again = await client.connect();
            const text = (await client.request("[[reply=fine]]").result()).text;
            return {code: error.code, isError: error instanceof rk.RkstreamError,
                    message: error.message, doneError, text,
                    newSession: again.session_id !== first.session_id};
        }""", LONG)
    assert result["code"] == "connection_lost" and result["isError"]
    assert "closed" in result["message"]
    assert result["doneError"] == "connection_lost"
    assert result["text"] == "fine" and result["newSession"]


async def test_api_key_goes_as_the_token_parameter(standin_server: Maker) -> None:
    server = await standin_server(api_keys="sesame")
    async with client_page(server) as page:
        result = await run(page, """async () => {
            let refused = null;
            try { await new rk.RkstreamClient({reconnect: false}).connect(); }
            catch (e) { refused = e.code; }
            const client = new rk.RkstreamClient({apiKey: "sesame"});
            const session = await client.connect();
            const rtt = await client.ping();
            client.close();
            return {refused, session: session.type, rtt};
        }""")
    assert result["refused"] == "connection_lost"
    assert result["session"] == "session.created" and result["rtt"] >= 0
