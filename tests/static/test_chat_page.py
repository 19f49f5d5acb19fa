"""The chat page (static/index.html + app.js on rkstream.js) in a real browser
(Debian's Chromium, driven by Playwright) against a server on the stand-in runtime.

The server serves a temporary copy of static/ (``server.static_dir``), so the page
is at its own "/" and its /ws is same-origin. Answers are scripted with the
stand-in's ``[[reply=...]]`` directive, typed into the page as the user's message.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestServer
from page_steps import STATIC, answered, ask, connected, pw_ms, watched_page
from PIL import Image
from playwright.async_api import Page, WebSocketRoute

from rkstream.config import ServerSettings, Settings, VisionSettings
from rkstream.config.settings import ModelEntry, PoolSettings, RKLLMSettings
from rkstream.server.app import make_app

from helpers import MS, model_file, reply, standin_settings
from tiny_encoder import build_tiny_encoder

ServerFactory = Callable[..., Awaitable[TestServer]]
# Set RKSTREAM_SCREENSHOTS to a folder to keep the screenshots for a person to look at.
SCREENSHOT_DIR = os.environ.get("RKSTREAM_SCREENSHOTS")
# A long answer: 512 tokens (the stand-in's cap), 20 ms each.
LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"


def static_copy(tmp_path: Path) -> str:
    static = tmp_path / "static"
    shutil.copytree(STATIC, static)
    return str(static)


@pytest.fixture
async def server(aiohttp_server: ServerFactory, standin_libs: dict[str, Path],
                 tmp_path: Path) -> TestServer:
    """A server on a 1.3 stand-in model that serves a copy of static/ (and so "/")."""
    model = model_file(tmp_path, "qwen2.5-test.rkllm", embed_width=16)
    settings = standin_settings(standin_libs["1.3"], model)
    settings = replace(settings, server=replace(ServerSettings(), static_dir=static_copy(tmp_path)))
    return await aiohttp_server(make_app(settings), host="127.0.0.1")


@pytest.fixture
async def two_models(aiohttp_server: ServerFactory, standin_libs: dict[str, Path],
                     tmp_path: Path) -> TestServer:
    """The same with two stand-in models: chat (Qwen2.5, the default) and think (Qwen3,
    whose <think> block is reasoning)."""
    entries = {"chat": ModelEntry(model=str(model_file(tmp_path, "qwen2.5-chat.rkllm"))),
               "think": ModelEntry(model=str(model_file(tmp_path, "qwen3-think.rkllm")))}
    settings = replace(Settings(), rkllm=replace(RKLLMSettings(), library=str(standin_libs["1.3"])),
                       models=entries, pool=replace(PoolSettings(), default_model="chat"),
                       server=replace(ServerSettings(), static_dir=static_copy(tmp_path)))
    return await aiohttp_server(make_app(settings), host="127.0.0.1")


@asynccontextmanager
async def chat_page(server: TestServer,
                    prepare: Callable[[Page], Awaitable[None]] | None = None
                    ) -> AsyncIterator[Page]:
    """The chat page, connected; it fails the test on any uncaught page error.
    ``prepare`` runs on the page before it loads."""
    async with watched_page(str(server.make_url("/")), prepare) as page:
        await connected(page)
        yield page


async def test_chat_page_streams_markdown_and_stops(server: TestServer, tmp_path: Path) -> None:
    async with chat_page(server) as page:
        # The Markdown is split over many deltas; the page draws it once per frame.
        await ask(page, reply("Some **bold** code:\n\n```python\nprint('hi')\n```\n")
                  + "[[token_delay_us=5000]]")
        stats = await answered(page, 0)
        first = page.locator(".msg.assistant").first
        assert await first.locator(".content strong").inner_text() == "bold"
        assert "print('hi')" in await first.locator(".content pre > code").inner_text()
        # The stats line: tokens, tokens/s, time to first token.
        assert re.search(r"\d+ tokens · [\d.]+ tokens/s · first token \d+ ms", stats), stats
        assert "cancelled" not in stats
        assert "**" not in await first.inner_text()
        # A long answer: Stop while it streams, then Esc on the next.
        await ask(page, LONG)
        await page.wait_for_function(
            "document.querySelectorAll('.msg.assistant .content')[1].textContent.length > 5",
            timeout=pw_ms(5000))
        assert await page.is_disabled("#send") and not await page.is_disabled("#stop")
        await page.click("#stop")
        assert "cancelled" in await answered(page, 1)
        await ask(page, LONG)
        await page.wait_for_function(
            "document.querySelectorAll('.msg.assistant .content')[2].textContent.length > 5",
            timeout=pw_ms(5000))
        await page.keyboard.press("Escape")
        assert "cancelled" in await answered(page, 2)
        assert await page.is_disabled("#stop") and not await page.is_disabled("#send")
        # Shift+Enter is a new line, not a send.
        await page.fill("#prompt", "one")
        await page.press("#prompt", "Shift+Enter")
        await page.keyboard.type("two")
        assert await page.input_value("#prompt") == "one\ntwo"
        assert await page.locator(".msg.user").count() == 3
        await page.screenshot(path=str(SCREENSHOT_DIR or tmp_path) + "/chat.png")


async def test_chat_page_does_not_run_scripts_in_answers(server: TestServer) -> None:
    payload = ('Hi <script>window.pwned = "script"</script>\n\n'
               '<img src="nothing.png" onerror="window.pwned = \'img\'">\n\n'
               '<a href="javascript:window.pwned=1">link</a> <b>bold</b> [docs](https://example.com/)')
    async with chat_page(server) as page:
        await ask(page, reply(payload))
        await answered(page, 0)
        content = page.locator(".msg.assistant .content").first
        await content.locator("img").wait_for(state="attached", timeout=pw_ms(2000))
        # Give a broken image's error event time to fire, were its handler kept.
        await asyncio.sleep(300 * MS)
        assert await page.evaluate("window.pwned") is None
        html = await content.inner_html()
        assert "<script" not in html and "onerror" not in html and "javascript:" not in html
        assert await content.locator("b").inner_text() == "bold"  # harmless HTML stays
        link = content.locator("a[href='https://example.com/']")
        assert await link.get_attribute("rel") == "noopener noreferrer"


async def test_chat_page_keeps_conversations_over_a_reload(server: TestServer) -> None:
    async with chat_page(server) as page:
        await ask(page, reply("the first answer"))
        await answered(page, 0)
        await page.click("#new-chat")
        assert await page.locator(".msg").count() == 0
        await ask(page, reply("the second answer"))
        await answered(page, 0)
        await page.reload()
        await connected(page)
        conversations = page.locator("#conversations li")
        assert await conversations.count() == 2
        # The open conversation is restored, with its answer and stats line.
        log = page.locator("#log")
        assert "the second answer" in await log.inner_text()
        assert "tokens/s" in await answered(page, 0)
        # The other one opens from the list; it goes on with its history.
        await conversations.nth(1).locator("button.open").click()
        assert "the first answer" in await log.inner_text()
        await ask(page, reply("a follow-up"))
        assert "tokens" in await answered(page, 1)
        assert await page.locator(".msg.user").count() == 2
        # Delete it: the other one is left, and stays so after a reload.
        await page.locator("#conversations li.current button.delete").click()
        assert await conversations.count() == 1
        await page.reload()
        await connected(page)
        assert await conversations.count() == 1
        assert "the second answer" in await log.inner_text()


async def test_chat_page_settings_models_and_reasoning(two_models: TestServer) -> None:
    async with chat_page(two_models) as page:
        sent: list[dict[str, Any]] = []

        def on_socket(ws: Any) -> None:
            ws.on("framesent", lambda data: sent.append(
                msgpack.unpackb(data) if isinstance(data, bytes) else {}))

        page.on("websocket", on_socket)
        await page.reload()  # the socket again, now watched
        await connected(page)
        # Two models: the picker shows, the default first.
        assert await page.is_visible("#model-field") is False  # in the folded panel
        await page.click("#settings summary")
        assert await page.is_visible("#model-field")
        options = page.locator("#model option")
        assert [await options.nth(i).get_attribute("value") for i in range(2)] == ["chat", "think"]
        await page.select_option("#model", "think")
        await page.fill("#instructions", "Answer briefly.")
        await page.fill("#temperature", "0.5")
        await page.fill("#top-p", "0.9")
        await page.fill("#max-tokens", "64")
        await page.locator("#max-tokens").blur()
        await ask(page, reply("<think>\nPondering it.\n</think>\n\nThe answer."))
        await answered(page, 0)
        answer = page.locator(".msg.assistant").first
        reasoning = answer.locator("details.reasoning")
        assert await reasoning.get_attribute("open") is None  # folded
        assert "Pondering it." in (await reasoning.locator(".text").text_content() or "")
        assert (await answer.locator(".content").inner_text()).strip() == "The answer."
        update = next(e for e in sent if e.get("type") == "session.update")
        assert update["session"] == {"instructions": "Answer briefly."}
        create = next(e for e in sent if e.get("type") == "response.create")
        assert create["model"] == "think"
        assert create["params"] == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 64}
        # A cleared system prompt is cleared on the server too.
        await page.fill("#instructions", "")
        await ask(page, reply("Again."))
        await answered(page, 1)
        updates = [e["session"] for e in sent if e.get("type") == "session.update"]
        assert updates == [{"instructions": "Answer briefly."}, {"instructions": None}]
        await page.fill("#instructions", "Answer briefly.")
        # The settings are kept over a reload.
        await page.reload()
        await connected(page)
        assert await page.input_value("#instructions") == "Answer briefly."
        assert await page.input_value("#model") == "think"



async def test_chat_page_fits_a_phone_and_follows_dark_mode(server: TestServer,
                                                            tmp_path: Path) -> None:
    async with chat_page(server) as page:
        await page.set_viewport_size({"width": 360, "height": 740})
        await page.emulate_media(color_scheme="dark")
        await ask(page, reply("A line that goes on " * 12 + "\n\n```\n" + "x" * 300 + "\n```"))
        await answered(page, 0)
        # Nothing wider than the screen (a long code line scrolls inside its block).
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        # The conversations fold behind a labelled button.
        assert not await page.is_visible("#side")
        await page.get_by_label("Show the conversations").click()
        assert await page.is_visible("#side")
        assert await page.get_by_role("button", name="New conversation").is_visible()
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(22, 23, 27)", background
        await page.screenshot(path=str(SCREENSHOT_DIR or tmp_path) + "/chat-phone-dark.png")
        await page.emulate_media(color_scheme="light")
        assert await page.evaluate(
            "getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
        # Every control has a name.
        for control in await page.locator("textarea, input, select, button").all():
            name = await control.evaluate(
                "(e) => e.labels?.[0]?.textContent || e.getAttribute('aria-label')"
                " || e.textContent")
            assert (name or "").strip(), await control.evaluate("(e) => e.outerHTML")


async def test_chat_page_shows_tool_calls(server: TestServer) -> None:
    # The page offers no tools, so the server never sends a call to it: a route
    # between page and server answers one request itself, as a server would.
    async def prepare(page: Page) -> None:
        def route(ws: WebSocketRoute) -> None:
            upstream = ws.connect_to_server()

            def from_page(message: str | bytes) -> None:
                event = msgpack.unpackb(message) if isinstance(message, bytes) else {}
                if event.get("type") != "response.create" or "TOOLS" not in str(event["input"]):
                    upstream.send(message)
                    return
                rid = event["request_id"]
                for answer in (
                        {"type": "response.created", "queue_position": 0},
                        {"type": "response.output_text.delta", "seq": 0, "delta": "Checking."},
                        {"type": "response.output_tool_call", "seq": 1, "index": 0,
                         "call_id": "call_1", "name": "get_weather",
                         "arguments": '{"city": "<b>Bern</b>"}'},
                        {"type": "response.done", "status": "completed",
                         "finish_reason": "tool_calls",
                         "usage": {"input_tokens": 5, "output_tokens": 12},
                         "timings": {"predicted_per_second": 40.0, "ttft_ms": 15.0}}):
                    ws.send(msgpack.packb({**answer, "request_id": rid}))

            ws.on_message(from_page)

        await page.route_web_socket("**/ws", route)

    async with chat_page(server, prepare) as page:
        await ask(page, "TOOLS please")
        assert "12 tokens · 40.0 tokens/s · first token 15 ms" in await answered(page, 0)
        call = page.locator(".msg.assistant .tool-call")
        assert await call.count() == 1
        assert "get_weather" in await call.locator("strong").inner_text()
        assert await call.locator("pre").inner_text() == '{"city": "<b>Bern</b>"}'  # as text
        # Other requests still reach the server.
        await ask(page, reply("fine"))
        assert "tokens/s" in await answered(page, 1)


# ---- images and the API key --------------------------------------------------


def png_file(tmp_path: Path) -> Path:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(out, "PNG")
    path = tmp_path / "red.png"
    path.write_bytes(out.getvalue())
    return path


def records_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def page_server(aiohttp_server: ServerFactory, library: Path, tmp_path: Path,
                      encoder: Path | None = None, api_keys: str = "") -> TestServer:
    """The chat page's server on a stand-in model whose calls go to tmp_path/calls.jsonl."""
    model = model_file(tmp_path, "qwen2.5-test.rkllm", embed_width=16,
                       record=tmp_path / "calls.jsonl")
    settings = standin_settings(library, model)
    settings = replace(
        settings,
        server=replace(ServerSettings(), static_dir=static_copy(tmp_path), api_keys=api_keys),
        vision=replace(VisionSettings(), encoder=str(encoder) if encoder else ""))
    return await aiohttp_server(make_app(settings), host="127.0.0.1")


async def test_chat_page_sends_an_attached_image(aiohttp_server: ServerFactory,
                                                 standin_libs: dict[str, Path],
                                                 tmp_path: Path) -> None:
    encoder = build_tiny_encoder(tmp_path / "tiny_qwen2.onnx", size=32, patch=8, width=16)
    server = await page_server(aiohttp_server, standin_libs["1.3"], tmp_path, encoder)
    async with chat_page(server) as page:
        sent: list[dict[str, Any]] = []
        page.on("websocket", lambda ws: ws.on("framesent", lambda data: sent.append(
            msgpack.unpackb(data) if isinstance(data, bytes) else {"text": data})))
        await page.reload()
        await connected(page)
        await page.set_input_files("#file", str(png_file(tmp_path)))
        thumbs = page.locator("#attachments .thumb")
        assert await thumbs.count() == 1
        # A thumbnail can be removed before sending; attach it again.
        await thumbs.first.locator("button.remove").click()
        assert await thumbs.count() == 0
        await page.set_input_files("#file", str(png_file(tmp_path)))
        assert await thumbs.count() == 1
        await ask(page, reply("A red picture."))
        assert "tokens" in await answered(page, 0)
        assert await thumbs.count() == 0
        assert await page.locator(".msg.user .thumbs img").count() == 1
        runs = [r for r in records_of(tmp_path / "calls.jsonl") if r["call"] == "run"]
        assert runs and runs[-1]["input_type"] == "multimodal" and runs[-1]["n_image"] == 1
        # The bytes went as binary (an image.upload), referenced by id: no base64 in JSON.
        upload = next(e for e in sent if e.get("type") == "image.upload")
        assert isinstance(upload["data"], bytes) and upload["format"] == "png"
        create = next(e for e in sent if e.get("type") == "response.create")
        parts = create["input"][-1]["content"]
        assert {"type": "image", "image_id": upload["image_id"]} in parts
        assert not any("text" in e for e in sent)
        assert await page.is_hidden("#notice")


async def test_chat_page_says_when_there_is_no_vision(server: TestServer, tmp_path: Path) -> None:
    async with chat_page(server) as page:
        await page.set_input_files("#file", str(png_file(tmp_path)))
        notice = page.locator("#notice")
        await notice.wait_for(timeout=pw_ms(2000))
        assert "no vision encoder" in await notice.inner_text()
        await ask(page, "What is this?")
        # Nothing is sent: the text and the image stay for the user to change.
        assert await page.locator(".msg").count() == 0
        assert await page.input_value("#prompt") == "What is this?"
        await page.locator("#attachments button.remove").click()
        assert await page.is_hidden("#notice")
        await page.press("#prompt", "Enter")
        assert "tokens" in await answered(page, 0)


async def test_chat_page_asks_for_the_api_key(aiohttp_server: ServerFactory,
                                             standin_libs: dict[str, Path],
                                             tmp_path: Path) -> None:
    server = await page_server(aiohttp_server, standin_libs["1.3"], tmp_path, api_keys="sesame")
    async with watched_page(str(server.make_url("/"))) as page:
        dialog = page.locator("#key-dialog")
        await dialog.wait_for(timeout=pw_ms(5000))
        assert "needs an API key" in await page.inner_text("#key-reason")
        # A wrong key is refused, in words.
        await page.fill("#api-key", "wrong")
        await page.press("#api-key", "Enter")
        await page.wait_for_function(
            "!document.getElementById('key-dialog').hidden"
            " && document.getElementById('key-reason').textContent.includes('401')",
            timeout=pw_ms(5000))
        assert "refused that API key" in await page.inner_text("#key-reason")
        await page.fill("#api-key", "sesame")
        await page.click("#key-connect")
        await connected(page)
        assert await dialog.is_hidden()
        await ask(page, reply("with a key"))
        assert "tokens" in await answered(page, 0)
        # After a reload the kept key connects without asking.
        await page.reload()
        await connected(page)
        assert await dialog.is_hidden()
        assert await page.evaluate("localStorage.getItem('rkstream.apiKey')") == '"sesame"'


async def test_chat_page_takes_pasted_and_dropped_images(server: TestServer) -> None:
    async with chat_page(server) as page:
        await page.evaluate("""async () => {
            const canvas = document.createElement("canvas");
            canvas.width = 8; canvas.height = 8;
            const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
            const file = (name) => new File([blob], name, { type: "image/png" });
            const pasted = new DataTransfer();
            pasted.items.add(file("pasted.png"));
            document.getElementById("prompt").dispatchEvent(
                new ClipboardEvent("paste", { clipboardData: pasted, bubbles: true,
                                              cancelable: true }));
            const dropped = new DataTransfer();
            dropped.items.add(file("dropped.png"));
            dropped.items.add(new File(["text"], "notes.txt", { type: "text/plain" }));
            const form = document.getElementById("form");
            form.dispatchEvent(new DragEvent("dragover", { dataTransfer: dropped, bubbles: true,
                                                         cancelable: true }));
            form.dispatchEvent(new DragEvent("drop", { dataTransfer: dropped, bubbles: true,
                                                     cancelable: true }));
        }""")
        names = page.locator("#attachments .thumb img")
        assert [await names.nth(i).get_attribute("alt") for i in range(await names.count())] \
            == ["pasted.png", "dropped.png"]
        # The text file is not taken, and the page says why.
        assert "not a PNG, JPEG or WebP" in await page.inner_text("#notice")


async def test_chat_page_reconnects_after_a_server_restart(
        aiohttp_server: ServerFactory, standin_libs: dict[str, Path], tmp_path: Path) -> None:
    model = model_file(tmp_path, "qwen2.5-test.rkllm", embed_width=16)
    settings = standin_settings(standin_libs["1.3"], model)
    settings = replace(settings, server=replace(ServerSettings(), static_dir=static_copy(tmp_path)))
    first = await aiohttp_server(make_app(settings), host="127.0.0.1")
    port = first.port  # (a closed TestServer forgets it)
    async with chat_page(first) as page:
        await ask(page, LONG)
        await page.wait_for_function(
            "document.querySelector('.msg.assistant .content').textContent.length > 5",
            timeout=pw_ms(5000))
        await first.close()  # a clean stop: the open answer ends, the page retries
        stats = await answered(page, 0)
        assert "the server is shutting down" in stats, stats
        await page.wait_for_function(
            "document.getElementById('status').dataset.state === 'disconnected'",
            timeout=pw_ms(5000))
        assert "retrying" in await page.inner_text("#status")
        second = await aiohttp_server(make_app(settings), host="127.0.0.1", port=port)
        try:
            # By itself, at its next try: the delays double up to 10 s.
            await page.wait_for_function(
                "document.getElementById('status').dataset.state === 'connected'",
                timeout=pw_ms(15000))
            # A new conversation: the first one's directives would steer the stand-in.
            await page.click("#new-chat")
            await ask(page, reply("back again"))
            await answered(page, 0)
            answer = page.locator(".msg.assistant .content").first
            assert await answer.inner_text() == "back again"
        finally:
            await second.close()
        assert await page.locator("#conversations li").count() == 2
