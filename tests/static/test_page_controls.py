"""The chat page's controls, images over a reload, the live camera and how the page keeps
up with a model at full speed, in a real browser (Debian's Chromium, driven by
Playwright) against servers on the stand-in runtime.

One browser and the servers are shared by the module (each test opens its own browser
context, so its own localStorage). The browser has Chromium's fake camera
(``--use-fake-device-for-media-stream``), with permission granted without a prompt.
Set RKSTREAM_SCREENSHOTS to a folder to keep the screenshots (the README's are made with
``RKSTREAM_SCREENSHOTS=docs/screenshots pytest tests/static -k screenshots``), and
RKSTREAM_RENDER_REPORT to a file to keep the full-speed rendering figures.
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

import aiohttp
import msgpack
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from page_steps import CAMERA_FLAGS, CHROMIUM, FLAGS, STATIC, answered, ask, connected, pw_ms
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright

from rkstream.config import LimitSettings, ServerSettings, Settings, VisionSettings
from rkstream.config.settings import ModelEntry, PoolSettings, RKLLMSettings
from rkstream.server.app import make_app

from helpers import MS, create, model_file, reply, standin_settings
from tiny_encoder import build_tiny_encoder

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCREENSHOT_DIR = os.environ.get("RKSTREAM_SCREENSHOTS")
RENDER_REPORT = os.environ.get("RKSTREAM_RENDER_REPORT")
Start = Callable[..., Awaitable[TestServer]]


# ---- shared by the module: the browser and the servers ---------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), "install Debian's chromium (apt-get install chromium)"
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS + CAMERA_FLAGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def start(standin_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Start]:
    """Start a server on a 1.3 stand-in model serving a copy of static/: ``vision``
    (the tiny ONNX encoder), ``api_keys``, ``limits`` (LimitSettings keys). Its folder
    (with calls.jsonl, the stand-in's record) is ``server.folder``."""
    started: list[TestServer] = []

    async def make(vision: bool = False, api_keys: str = "", **limits: Any) -> TestServer:
        folder = tmp_path_factory.mktemp("page")
        static = folder / "static"
        shutil.copytree(STATIC, static)
        model = model_file(folder, "qwen2.5-test.rkllm", embed_width=16,
                           record=folder / "calls.jsonl")
        encoder = build_tiny_encoder(folder / "tiny.onnx", size=32, patch=8, width=16) \
            if vision else None
        settings = standin_settings(standin_libs["1.3"], model)
        settings = replace(
            settings,
            server=replace(ServerSettings(), static_dir=str(static), api_keys=api_keys),
            vision=replace(VisionSettings(), encoder=str(encoder) if encoder else ""),
            limits=replace(LimitSettings(), **limits))
        server = TestServer(make_app(settings), host="127.0.0.1")
        await server.start_server()
        server.folder = folder  # type: ignore[attr-defined]
        started.append(server)
        return server

    yield make
    for server in started:
        await server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain(start: Start) -> TestServer:
    """A server without a vision encoder."""
    return await start()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vision(start: Start) -> TestServer:
    """A server with the tiny vision encoder."""
    return await start(vision=True)


# ---- the page ------------------------------------------------------------------


class Sent(list[dict[str, Any]]):
    """The events the page sent on its sockets, decoded; ``received``: those it got."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self if e.get("type") == kind]

    def got(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]


def _decode(data: bytes | str) -> dict[str, Any]:
    event: dict[str, Any] = msgpack.unpackb(data) if isinstance(data, bytes) else json.loads(data)
    return event


@asynccontextmanager
async def open_page(browser: Browser, server: TestServer, *, init: str = "",
                    **context: Any) -> AsyncIterator[tuple[Page, Sent]]:
    """The chat page in a fresh browser context (``context``: new_context options),
    connected, with the events it sends; ``init`` runs before the page's own scripts.
    Any uncaught page error fails the test."""
    ctx = await browser.new_context(**context)
    errors: list[Any] = []
    sent = Sent()
    try:
        page = await ctx.new_page()
        page.on("pageerror", lambda error: errors.append(error))
        page.on("console", lambda message: print("console:", message.text))
        def watch(ws: Any) -> None:
            ws.on("framesent", lambda data: sent.append(_decode(data)))
            ws.on("framereceived", lambda data: sent.received.append(_decode(data)))

        page.on("websocket", watch)
        if init:
            await page.add_init_script(init)
        await page.goto(str(server.make_url("/")))
        await connected(page)
        yield page, sent
    finally:
        await ctx.close()
    assert errors == []


async def idle(page: Page) -> None:
    """Wait until no answer streams (Send is enabled again)."""
    await page.wait_for_function("!document.getElementById('send').disabled",
                                 timeout=pw_ms(10000))


def png_bytes(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (40, 30)
              ) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def records(server: TestServer) -> list[dict[str, Any]]:
    path: Path = server.folder / "calls.jsonl"  # type: ignore[attr-defined]
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


async def shot(page: Page, name: str, folder: Path | None = None) -> None:
    """A screenshot, kept in RKSTREAM_SCREENSHOTS when that is set."""
    target = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else folder
    if target is None:
        return
    target.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(target / name))


# ---- regenerate, edit and resend, copy, rename ---------------------------------------


async def test_regenerate_edit_resend_and_copy(browser: Browser, plain: TestServer) -> None:
    async with open_page(browser, plain) as (page, sent):
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await ask(page, reply("The *first* answer."))
        await answered(page, 0)
        answer = page.locator(".msg.assistant").first
        # Only the last answer can be regenerated, and only the last question edited.
        await answer.get_by_role("button", name="Regenerate this answer").click()
        await idle(page)
        assert await page.locator(".msg.assistant").count() == 1
        assert len(sent.of("response.create")) == 2
        assert sent.of("response.create")[1]["input"] == sent.of("response.create")[0]["input"]
        assert "tokens" in await answered(page, 0)
        # Edit the question in place: Esc leaves it as it was, Enter sends the new text.
        user = page.locator(".msg.user").first
        await user.get_by_role("button", name="Edit and resend this message").click()
        box = user.get_by_label("Edit the message")
        assert await box.input_value() == reply("The *first* answer.")
        await box.press("Escape")
        assert await box.count() == 0 and len(sent.of("response.create")) == 2
        await user.get_by_role("button", name="Edit and resend this message").click()
        await box.fill(reply("The **edited** answer."))
        await box.press("Enter")
        await idle(page)
        assert await page.locator(".msg").count() == 2
        assert await page.locator(".msg.assistant .content strong").inner_text() == "edited"
        last = sent.of("response.create")[-1]["input"]
        assert last == [{"role": "user", "content": reply("The **edited** answer.")}]
        # Copy gives the answer's Markdown, through navigator.clipboard here (localhost is
        # a secure context).
        copy = page.locator(".msg.assistant").first.get_by_role("button", name="Copy this answer")
        await copy.click()
        await page.wait_for_function(
            "document.querySelector('.msg.assistant .actions button')"
            ".textContent.includes('Copied')", timeout=pw_ms(2000))
        assert await page.evaluate("navigator.clipboard.readText()") == "The **edited** answer."
        # The edit is kept over a reload.
        await page.reload()
        await connected(page)
        assert await page.locator(".msg.user .text").inner_text() == reply("The **edited** answer.")
        # A second exchange: the first answer keeps Copy but loses Regenerate.
        await ask(page, reply("Second."))
        await answered(page, 1)
        first = page.locator(".msg.assistant").first
        assert await first.get_by_role("button", name="Regenerate this answer").count() == 0
        assert await first.get_by_role("button", name="Copy this answer").count() == 1
        assert await page.locator(".msg.user").first.get_by_role(
            "button", name="Edit and resend this message").count() == 0


# A page on a board's plain http address: not a secure context, so no navigator.clipboard.
INSECURE = """
Object.defineProperty(window, "isSecureContext", { get: () => false });
Object.defineProperty(Navigator.prototype, "clipboard", { get: () => undefined });
window.copyWorks = true;
window.copied = [];
document.execCommand = function (command) {
  if (command === "copy") window.copied.push(document.activeElement?.value ?? null);
  return command === "copy" && window.copyWorks;
};
"""


async def test_copy_without_the_clipboard_api(browser: Browser, plain: TestServer) -> None:
    async with open_page(browser, plain, init=INSECURE) as (page, _):
        await ask(page, reply("Copy `me`."))
        await answered(page, 0)
        copy = page.get_by_role("button", name="Copy this answer")
        await copy.click()
        assert await page.evaluate("window.copied") == ["Copy `me`."]
        assert "Copied" in await copy.inner_text()
        # The old command refused too: the text is shown selected, for Ctrl+C.
        await page.evaluate("window.copyWorks = false")
        await copy.click()
        dialog = page.locator("#copy-dialog")
        await dialog.wait_for(timeout=pw_ms(2000))
        selected = await page.evaluate("""() => {
            const a = document.getElementById('copy-text');
            return [document.activeElement === a,
                    a.value.slice(a.selectionStart, a.selectionEnd)]; }""")
        assert selected == [True, "Copy `me`."]
        await page.keyboard.press("Escape")
        assert await dialog.is_hidden()


async def test_rename_a_conversation(browser: Browser, plain: TestServer) -> None:
    async with open_page(browser, plain) as (page, _):
        await ask(page, reply("hello"))
        await answered(page, 0)
        item = page.locator("#conversations li").first
        title = await item.locator("button.open").inner_text()
        await item.get_by_role("button", name=f"Rename “{title}”").click()
        name = page.get_by_label("New name of the conversation")
        assert await name.evaluate("(e) => document.activeElement === e")
        await name.fill("Never mind")
        await name.press("Escape")  # cancelled
        assert await item.locator("button.open").inner_text() == title
        await item.get_by_role("button", name=f"Rename “{title}”").click()
        await name.fill("Holiday plans")
        await name.press("Enter")
        assert await item.locator("button.open").inner_text() == "Holiday plans"
        # Keyboard focus comes back to the list.
        assert await page.evaluate("document.activeElement.className") == "rename"
        await page.reload()
        await connected(page)
        assert await page.locator("#conversations li button.open").inner_text() == "Holiday plans"


# ---- the queue, and the API key -----------------------------------------------------------


async def waiting_shows(page: Page, text: str) -> None:
    """Wait until the last answer's waiting line says ``text``."""
    await page.wait_for_function(
        "(text) => [...document.querySelectorAll('.msg.assistant .waiting')].at(-1)"
        "?.textContent === text", arg=text, timeout=pw_ms(5000))


def prefill_ms(ms: float) -> str:
    """The stand-in's marker for a prefill that takes ``ms`` (in the timing unit)."""
    return f"[[prefill_delay_us={int(ms * MS * 1_000_000)}]]"


async def test_queue_position_counts_down_then_prefilling(browser: Browser,
                                                          plain: TestServer) -> None:
    long = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"
    async with open_page(browser, plain) as (page, sent), aiohttp.ClientSession() as http, \
            http.ws_connect(plain.make_url("/ws")) as ws:
        await ws.receive()  # session.created
        # Another client holds the one model instance and has two requests queued behind it.
        for rid in ("running", "first", "second"):
            await ws.send_bytes(msgpack.packb(create(rid, long)))
        while True:
            event = msgpack.unpackb((await ws.receive(timeout=5000 * MS)).data)
            if event["type"] == "response.output_text.delta":
                break
        await ask(page, reply("my turn") + prefill_ms(1500))
        await waiting_shows(page, "waiting, 2 ahead")
        assert await page.is_disabled("#send")
        # Each request ahead that goes moves the page's up (response.queued)...
        cancel = {"type": "response.cancel"}
        await ws.send_bytes(msgpack.packb(cancel | {"request_id": "second"}))
        await waiting_shows(page, "waiting, 1 ahead")
        await ws.send_bytes(msgpack.packb(cancel | {"request_id": "first"}))
        await waiting_shows(page, "next")
        # ...and once it holds the model (response.started), it is prefilling.
        await ws.send_bytes(msgpack.packb(cancel | {"request_id": "running"}))
        await waiting_shows(page, "prefilling…")
        assert "tokens" in await answered(page, 0)
        assert await page.locator(".msg.assistant .waiting").is_hidden()
        assert "my turn" in await page.locator(".msg.assistant .content").inner_text()
        assert [e["queue_position"] for e in sent.got("response.queued")] == [1, 0]
        assert len(sent.got("response.started")) == 1


async def test_forget_the_api_key(browser: Browser, start: Start) -> None:
    server = await start(api_keys="sesame")
    keep = "localStorage.getItem('rkstream.apiKey') === null && " \
           "localStorage.setItem('rkstream.apiKey', '\"sesame\"')"
    async with open_page(browser, server, init=keep) as (page, _):
        await page.click("#settings summary")
        forget = page.get_by_role("button", name="Forget the API key")
        assert await forget.is_visible()
        await forget.click()
        assert await page.evaluate("localStorage.getItem('rkstream.apiKey')") is None
        # The server needs a key: the page asks for one again.
        await page.locator("#key-dialog").wait_for(timeout=pw_ms(5000))
        assert "needs an API key" in await page.inner_text("#key-reason")
        assert await page.is_hidden("#key-field")


async def test_model_loading_shows_until_the_first_token(browser: Browser,
                                                         standin_libs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    # A second model that takes a while to load: the answer says so meanwhile.
    static = tmp_path / "static"
    shutil.copytree(STATIC, static)
    entries = {"chat": ModelEntry(model=str(model_file(tmp_path, "qwen2.5-chat.rkllm"))),
               "slow": ModelEntry(model=str(model_file(tmp_path, "qwen2.5-slow.rkllm",
                                                       init_delay_us=int(1_500_000 * MS * 1000))))}
    settings = replace(Settings(), rkllm=replace(RKLLMSettings(), library=str(standin_libs["1.3"])),
                       models=entries, pool=replace(PoolSettings(), default_model="chat"),
                       server=replace(ServerSettings(), static_dir=str(static)))
    server = TestServer(make_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        async with open_page(browser, server) as (page, _):
            await page.click("#settings summary")
            await page.select_option("#model", "slow")
            await ask(page, reply("loaded at last"))
            await page.wait_for_function(
                "document.querySelector('.msg.assistant .waiting')?.textContent"
                ".startsWith('loading the model slow')", timeout=pw_ms(5000))
            assert "tokens" in await answered(page, 0)
            assert await page.locator(".msg.assistant .waiting").is_hidden()
    finally:
        await server.close()


# ---- images over a reload ---------------------------------------------------------------


async def images_kept(page: Page) -> None:
    """Wait until no message says its images are not kept (their small copies are made)."""
    await page.wait_for_function(
        "![...document.querySelectorAll('.msg.user .meta')]"
        ".some((m) => m.textContent.includes('not kept'))", timeout=pw_ms(5000))


async def test_images_are_kept_over_a_reload(browser: Browser, vision: TestServer,
                                             tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes((30, 120, 200), (1600, 1200)))
    async with open_page(browser, vision) as (page, sent):
        await page.set_input_files("#file", str(big))
        await ask(page, reply("A blue picture."))
        await answered(page, 0)
        await images_kept(page)  # the label follows once the copy is kept
        await page.reload()
        await connected(page)
        # The thumbnail is back, from a small JPEG kept in localStorage.
        thumb = page.locator(".msg.user .thumbs img")
        src = await thumb.get_attribute("src") or ""
        assert src.startswith("data:image/jpeg;base64,")
        size = await thumb.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
        assert size == [512, 384]
        stored = await page.evaluate("localStorage.getItem('rkstream.conversations').length")
        assert stored < 200_000
        # Regenerating uploads the kept copy again (this socket never had the image).
        uploads = len(sent.of("image.upload"))
        await page.get_by_role("button", name="Regenerate this answer").click()
        await idle(page)
        assert "tokens" in await answered(page, 0)
        upload = sent.of("image.upload")[uploads]
        assert upload["format"] == "jpeg" and upload["data"][:2] == b"\xff\xd8"
        parts = sent.of("response.create")[-1]["input"][-1]["content"]
        assert {"type": "image", "image_id": upload["image_id"]} in parts
        runs = [r for r in records(vision) if r["call"] == "run"]
        assert runs[-1]["n_image"] == 1


# A small quota for the conversations (the real one is about 5 MB): set window.quota.
SMALL_QUOTA = """(() => {
  const real = Storage.prototype.setItem;
  window.quota = Infinity;
  Storage.prototype.setItem = function (key, value) {
    if (key === "rkstream.conversations" && value.length > window.quota) {
      throw new DOMException("full", "QuotaExceededError");
    }
    return real.call(this, key, value);
  };
})();"""


async def test_a_full_storage_drops_images_first_then_says_so(browser: Browser,
                                                                vision: TestServer,
                                                                tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes((30, 120, 200), (1600, 1200)))
    async with open_page(browser, vision, init=SMALL_QUOTA) as (page, sent):
        await page.set_input_files("#file", str(big))
        await ask(page, reply("A blue picture."))
        await answered(page, 0)
        await images_kept(page)
        # Room for the text, not the image: the image goes, the text is kept.
        text = await page.evaluate("localStorage.getItem('rkstream.conversations').length")
        await page.evaluate(f"window.quota = {text} - 1000")
        await ask(page, reply("More."))
        await answered(page, 1)
        await page.locator(".msg.user").first.get_by_text("not kept over a reload").wait_for(
            timeout=pw_ms(2000))
        assert await page.is_hidden("#notice")
        kept = await page.evaluate("localStorage.getItem('rkstream.conversations')")
        assert "data:image/jpeg" not in kept and "More." in kept
        # Not even the text fits: nothing more is dropped, and the page says so.
        await page.evaluate("window.quota = 100")
        await ask(page, reply("And more."))
        await answered(page, 2)
        await page.locator("#notice").wait_for(timeout=pw_ms(2000))
        assert "storage for the page is full" in await page.inner_text("#notice")
        assert "And more." not in await page.evaluate(
            "localStorage.getItem('rkstream.conversations')")


# ---- the camera ---------------------------------------------------------------------------


async def frames_sent(sent: Sent) -> int:
    return len(sent.of("frame.append"))


async def wait_frames(sent: Sent, more_than: int) -> None:
    for _ in range(200):
        if len(sent.of("frame.append")) > more_than:
            return
        await asyncio.sleep(50 * MS)
    raise AssertionError(f"no more than {more_than} frames were sent")


HIDE = """(hidden) => {
    Object.defineProperty(document, "visibilityState", { configurable: true,
                                                        get: () => hidden ? "hidden" : "visible" });
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    document.dispatchEvent(new Event("visibilitychange"));
}"""


async def test_camera_sends_frames_and_answers_name_theirs(browser: Browser,
                                                           vision: TestServer) -> None:
    async with open_page(browser, vision) as (page, sent):
        await page.click("#camera-toggle")
        assert await page.get_attribute("#camera-toggle", "aria-pressed") == "true"
        await page.locator("#camera-fps").fill("10")
        await wait_frames(sent, 2)
        frame = sent.of("frame.append")[-1]
        assert frame["stream"] == "camera" and frame["format"] == "jpeg"
        assert frame["data"][:2] == b"\xff\xd8" and isinstance(frame["ts_ns"], int)
        seqs = [f["seq"] for f in sent.of("frame.append")]
        assert seqs == sorted(set(seqs))
        # "Ask about what I see": the default question, with the stream's newest frame.
        ask_button = page.get_by_role("button", name="Ask about what I see")
        await page.wait_for_function("!document.getElementById('camera-ask').disabled",
                                     timeout=pw_ms(5000))
        await ask_button.click()
        stats = await answered(page, 0)
        assert "frame #" in stats and "s old" in stats and "superseded" in stats, stats
        # The age is the server's (response.done.frame.age_ms), not an estimate.
        age_ms = sent.got("response.done")[-1]["frame"]["age_ms"]
        assert f", {age_ms / 1000:.2f} s old" in stats, (age_ms, stats)
        create_event = sent.of("response.create")[-1]
        assert create_event["input"][-1]["content"] == [
            {"type": "text", "text": "What do you see?"}, {"type": "frame", "stream": "camera"}]
        used = int(stats.split("frame #")[1].split()[0].rstrip(",("))
        assert used in [f["seq"] for f in sent.of("frame.append")]
        # The question shows the frame the model saw.
        thumb = page.locator(".msg.user .thumbs img")
        assert await thumb.get_attribute("alt") == "the camera frame the model saw"
        # A typed question goes with the newest frame too; the model reads it first.
        await ask(page, reply("A test pattern.") + prefill_ms(1500))
        await waiting_shows(page, "reading the image…")
        assert "frame #" in await answered(page, 1)
        runs = [r for r in records(vision) if r["call"] == "run"]
        assert runs[-1]["n_image"] == 1
        # Hidden page: no frames; visible again: they go on.
        await page.evaluate(HIDE, True)
        await asyncio.sleep(200 * MS)  # one may have been on its way
        before = await frames_sent(sent)
        await asyncio.sleep(800 * MS)
        assert await frames_sent(sent) == before
        assert "paused" in await page.inner_text("#camera-status")
        await page.evaluate(HIDE, False)
        await wait_frames(sent, before)
        # Turned off: the camera is released and no frames go.
        await page.get_by_role("button", name="Turn the camera off").click()
        assert await page.is_hidden("#camera")
        assert await page.evaluate("document.getElementById('camera-video').srcObject") is None
        await asyncio.sleep(200 * MS)
        before = await frames_sent(sent)
        await asyncio.sleep(600 * MS)
        assert await frames_sent(sent) == before
        # Without the camera, a message is text again.
        await ask(page, reply("plain"))
        await answered(page, 2)
        content = sent.of("response.create")[-1]["input"][-1]["content"]
        assert content == reply("plain")


async def test_camera_question_with_an_image_and_after_a_reload(
        browser: Browser, vision: TestServer, tmp_path: Path) -> None:
    picture = tmp_path / "red.png"
    picture.write_bytes(png_bytes())
    async with open_page(browser, vision) as (page, sent):
        await page.click("#camera-toggle")
        await page.wait_for_function("!document.getElementById('camera-ask').disabled",
                                     timeout=pw_ms(5000))
        # An attached image and the camera: the question carries both.
        await page.set_input_files("#file", str(picture))
        await ask(page, reply("Both."))
        assert "frame #" in await answered(page, 0)
        parts = sent.of("response.create")[-1]["input"][-1]["content"]
        assert [p["type"] for p in parts] == ["text", "image", "frame"]
        assert [r for r in records(vision) if r["call"] == "run"][-1]["n_image"] == 2
        thumbs = page.locator(".msg.user .thumbs img")
        alts = ["attached image", "the camera frame the model saw"]
        assert [await thumbs.nth(i).get_attribute("alt") for i in range(2)] == alts
        await page.wait_for_function(
            "JSON.parse(localStorage.getItem('rkstream.conversations'))[0]"
            ".messages[0].frame?.image?.startsWith('data:image/jpeg')", timeout=pw_ms(5000))
        # After a reload the camera is off; both pictures are back, and a regenerated
        # answer gets the kept frame as an image.
        await page.reload()
        await connected(page)
        assert [await thumbs.nth(i).get_attribute("alt") for i in range(2)] == alts
        assert "asked about the live camera" in await page.inner_text(".msg.user .meta")
        await page.get_by_role("button", name="Regenerate this answer").click()
        await idle(page)
        stats = await answered(page, 0)
        assert "tokens" in stats and "frame #" not in stats
        parts = sent.of("response.create")[-1]["input"][-1]["content"]
        assert [p["type"] for p in parts] == ["text", "image", "image"]


async def test_camera_rate_and_quality_on_a_phone(browser: Browser, vision: TestServer) -> None:
    async with open_page(browser, vision, viewport={"width": 360, "height": 740}) as (page, sent):
        await page.get_by_label("Live camera").click()
        await page.get_by_label("Frames per second").fill("1")
        assert await page.evaluate("window.rkstreamChat.camera.fps") == 1
        assert await page.inner_text("#camera-fps-value") == "1"
        await wait_frames(sent, 0)
        # At most one frame a second (an upper bound: a busy machine sends fewer).
        before = await frames_sent(sent)
        window_s = 2500 * MS
        await asyncio.sleep(window_s)
        assert 1 <= await frames_sent(sent) - before <= window_s + 1
        # A lower JPEG quality sends smaller frames.
        await page.get_by_label("Frames per second").fill("10")

        async def sizes(quality: str) -> float:
            await page.get_by_label("JPEG quality").fill(quality)
            await asyncio.sleep(200 * MS)  # a frame made before the change may be on its way
            start = await frames_sent(sent)
            await wait_frames(sent, start + 3)
            frames = sent.of("frame.append")[start:start + 4]
            return sum(len(f["data"]) for f in frames) / len(frames)

        low, high = await sizes("0.3"), await sizes("0.95")
        assert low < high, (low, high)
        # The settings are kept.
        kept = await page.evaluate("JSON.parse(localStorage.getItem('rkstream.settings'))")
        assert kept["camera_fps"] == 10 and kept["camera_quality"] == 0.95
        # The camera fits a phone's width.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        assert await page.is_visible("#camera-video")


DENY = """navigator.mediaDevices.getUserMedia = () =>
    Promise.reject(new DOMException("denied", "NotAllowedError"));"""
NO_CAMERA = """navigator.mediaDevices.getUserMedia = () =>
    Promise.reject(new DOMException("none", "NotFoundError"));"""
INSECURE_CAMERA = """Object.defineProperty(window, "isSecureContext", { get: () => false });
Object.defineProperty(Navigator.prototype, "mediaDevices", { get: () => undefined });"""


@pytest.mark.parametrize(("init", "words"), [
    (DENY, "Permission to use the camera was denied"),
    (NO_CAMERA, "No camera was found"),
    (INSECURE_CAMERA, "only to secure pages"),
])
async def test_camera_problems_are_explained(browser: Browser, vision: TestServer, init: str,
                                             words: str) -> None:
    async with open_page(browser, vision, init=init) as (page, sent):
        await page.click("#camera-toggle")
        await page.locator("#notice").wait_for(timeout=pw_ms(2000))
        assert words in await page.inner_text("#notice")
        assert await page.is_hidden("#camera")
        assert await page.get_attribute("#camera-toggle", "aria-pressed") == "false"
        assert not sent.of("frame.append")


# getUserMedia held until the test lets it go (the browser's permission prompt open);
# every stream it gives is kept so that the test can see whether its tracks were stopped.
SLOW_PROMPT = """(() => {
  const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  window.streams = [];
  window.allow = null;
  navigator.mediaDevices.getUserMedia = (constraints) => new Promise((resolve, reject) => {
    window.allow = () => real(constraints).then((media) => {
      window.streams.push(media); resolve(media); }, reject);
  });
})();"""
ALL_ENDED = "streams.every((m) => m.getTracks().every((t) => t.readyState === 'ended'))"


async def camera_asked(page: Page) -> None:
    """Click the camera on; return once the browser is asking (SLOW_PROMPT)."""
    await page.evaluate("window.allow = null")
    await page.click("#camera-toggle")
    await page.wait_for_function("window.allow !== null", timeout=pw_ms(2000))


async def test_camera_turned_off_while_the_browser_asks(browser: Browser,
                                                        vision: TestServer) -> None:
    async with open_page(browser, vision, init=SLOW_PROMPT) as (page, sent):
        # Turned off with the panel's button while the prompt is open, then allowed.
        await camera_asked(page)
        await page.click("#camera-off")
        await page.evaluate("window.allow()")
        await page.wait_for_function(f"streams.length === 1 && {ALL_ENDED}",
                                     timeout=pw_ms(2000))
        assert await page.is_hidden("#camera")
        assert await page.get_attribute("#camera-toggle", "aria-pressed") == "false"
        # The toggle clicked twice while asking: off, and the one stream closed.
        await camera_asked(page)
        await page.click("#camera-toggle")
        await page.evaluate("window.allow()")
        await page.wait_for_function(f"streams.length === 2 && {ALL_ENDED}",
                                     timeout=pw_ms(2000))
        assert await page.get_attribute("#camera-toggle", "aria-pressed") == "false"
        await asyncio.sleep(300 * MS)
        assert not sent.of("frame.append")
        # And it still starts when allowed.
        await camera_asked(page)
        await page.evaluate("window.allow()")
        await wait_frames(sent, 0)
        assert await page.get_attribute("#camera-toggle", "aria-pressed") == "true"


async def test_camera_without_a_vision_encoder(browser: Browser, plain: TestServer) -> None:
    async with open_page(browser, plain) as (page, sent):
        await page.click("#camera-toggle")
        await page.locator("#notice").wait_for(timeout=pw_ms(2000))
        assert "no vision encoder" in await page.inner_text("#notice")
        assert await page.is_hidden("#camera")
        await asyncio.sleep(300 * MS)
        assert not sent.of("frame.append")


# ---- full speed -----------------------------------------------------------------------------

WATCH = """
window.longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""

MEASURE = """async (text) => {
    const render = window.rkstreamChat.render;
    Object.assign(render, { scheduled: 0, flushes: 0, draws: 0, drawMs: 0, maxFlushMs: 0,
                            firstAt: null, lastFlushAt: null, pending: 0 });
    window.longTasks.length = 0;
    let gap = 0, last = performance.now(), running = true;
    const tick = (now) => { gap = Math.max(gap, now - last); last = now;
                            if (running) requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
    const prompt = document.getElementById("prompt");
    prompt.value = text;
    document.getElementById("send").click();
    await new Promise((resolve) => {
      const check = () => (document.getElementById("send").disabled
                           ? setTimeout(check, 20) : resolve());
      setTimeout(check, 20);
    });
    do {  // until the page has drawn all of it
      await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    } while (render.pending);
    running = false;
    const content = [...document.querySelectorAll(".msg.assistant .content")].at(-1);
    return { ...render, maxFrameGapMs: gap, longTasks: window.longTasks.slice(),
             chars: content.textContent.length,
             meta: [...document.querySelectorAll(".msg.assistant .meta")].at(-1).textContent };
}"""


def figures_of(result: dict[str, Any], deltas: int) -> dict[str, Any]:
    tokens = int(re.search(r"(\d+) tokens", result["meta"])[1])  # type: ignore[index]
    span_ms = max(1.0, result["lastFlushAt"] - result["firstAt"])
    return {
        "tokens": tokens, "deltas": deltas, "redraws": result["draws"],
        "frames": result["flushes"], "chars": result["chars"],
        "render_ms": round(span_ms), "tokens_per_s_rendered": round(tokens / span_ms * 1000),
        "mean_draw_ms": round(result["drawMs"] / max(1, result["flushes"]), 2),
        "max_draw_ms": round(result["maxFlushMs"], 1),
        "max_frame_gap_ms": round(result["maxFrameGapMs"], 1),
        "long_tasks": len(result["longTasks"]),
        "longest_task_ms": round(max(result["longTasks"], default=0), 1),
        "server_tokens_per_s": float(
            re.search(r"([\d.]+) tokens/s", result["meta"])[1]),  # type: ignore[index]
    }


FIGURES = ("{tokens} tokens (the server: {server_tokens_per_s} tokens/s) in {deltas} delta "
           "messages, drawn in {redraws} redraws ({frames} animation frames) over "
           "{render_ms} ms = {tokens_per_s_rendered} "
           "tokens/s rendered; draw mean {mean_draw_ms} ms, max {max_draw_ms} ms; "
           "longest frame gap {max_frame_gap_ms} ms; {long_tasks} long tasks, longest "
           "{longest_task_ms} ms")


async def test_rendering_keeps_up_at_full_speed(browser: Browser, plain: TestServer) -> None:
    # 3500 tokens of Markdown (a list, code, emphasis, links) from the stand-in with no
    # delay between tokens (it writes them in about 0.1 s, faster than the page reads,
    # so the server merges deltas), then at 200 us a token (5000 tokens/s, more deltas
    # than animation frames).
    text = ("Item **bold** and `code`, with [a link](https://example.com/).\n\n"
            "- one\n- two\n\n```\nx = 1\n```\n\n")
    lines = []
    async with open_page(browser, plain, init=WATCH) as (page, _):
        deltas: list[int] = []

        def count(data: str | bytes) -> None:
            if isinstance(data, bytes) and \
                    msgpack.unpackb(data).get("type") == "response.output_text.delta":
                deltas.append(1)

        page.on("websocket", lambda ws: ws.on("framereceived", count))
        await page.reload()  # watched from the start
        await connected(page)
        await page.click("#settings summary")
        await page.fill("#max-tokens", "3600")
        for label, delay_us in (("full speed (no token delay)", 0), ("200 us a token", 200)):
            await page.click("#new-chat")  # a short history: the context holds the answer
            deltas.clear()
            result = await asyncio.wait_for(page.evaluate(
                MEASURE, reply(text) + f"[[n_tokens=3500]][[token_delay_us={delay_us}]]"),
                60000 * MS)
            figures = figures_of(result, len(deltas))
            lines.append(f"{label}: " + FIGURES.format(**figures))
            print(lines[-1])
            assert figures["tokens"] == 3500 and result["chars"] > 10000, figures
            # Batched per animation frame: the answer is drawn at most once a frame
            # (and once when it is created), however many deltas come.
            assert result["draws"] <= result["flushes"] + 1, figures
            # And not frozen: the page drew at least once a second (scaled) meanwhile.
            assert result["maxFrameGapMs"] < 1000 * MS * 1000, figures
    if RENDER_REPORT:
        Path(RENDER_REPORT).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---- screenshots for the README ----------------------------------------------------------------

ANSWER = ("Streaming from the NPU is a loop of three steps:\n\n"
          "1. **Prefill** the prompt (and any image embedding).\n"
          "2. **Decode** one token at a time.\n"
          "3. **Send** each token to the socket as it arrives.\n\n"
          "```python\nasync for event in reply:\n    print(event.delta, end=\"\")\n```\n\n"
          "Cancelling calls `rkllm_abort` within a few milliseconds.")


# Two earlier conversations in the list.
EARLIER = """if (localStorage.getItem("rkstream.conversations") === null) {
  const c = (id, title) => ({ id, title, updated: 1, messages: [
    { role: "user", content: title }, { role: "assistant", content: "…" }] });
  localStorage.setItem("rkstream.conversations", JSON.stringify(
    [c("c1", "Wiring the CoolPi fan"), c("c2", "Qwen2-VL on the NPU")]));
}"""
HIDE_DIRECTIVES = """() => { for (const t of document.querySelectorAll('.msg.user .text'))
    t.textContent = t.textContent.replace(/\\[\\[reply=.*$/s, '').trim(); }"""


async def test_screenshots(browser: Browser, vision: TestServer, tmp_path: Path) -> None:
    picture = tmp_path / "board.png"
    image = Image.new("RGB", (320, 200), (40, 90, 60))
    for x in range(40, 280):
        for y in range(60, 140):
            image.putpixel((x, y), (20 + x % 30, 140, 90 + y % 40))
    image.save(picture)
    for name, options in (
            ("page-desktop.png", {"viewport": {"width": 1180, "height": 760},
                                  "color_scheme": "light"}),
            ("page-phone.png", {"viewport": {"width": 390, "height": 800},
                                "color_scheme": "dark", "device_scale_factor": 2})):
        async with open_page(browser, vision, init=EARLIER, **options) as (page, _):
            await page.evaluate("document.getElementById('new-chat').click()")
            await ask(page, "How does rkstream stream tokens? "
                      + reply(ANSWER) + "[[token_delay_us=40000]]")
            await idle(page)
            await page.set_input_files("#file", str(picture))
            await ask(page, "What is on this board? " + reply("A green circuit board.")
                      + "[[token_delay_us=50000]]")
            await idle(page)
            await images_kept(page)
            await page.evaluate(HIDE_DIRECTIVES)
            await shot(page, name, tmp_path)
            if name == "page-phone.png":
                await page.get_by_label("Show the conversations").click()
                await shot(page, "page-phone-conversations.png", tmp_path)
    async with open_page(browser, vision, viewport={"width": 1180, "height": 760}) as (page, _):
        await page.click("#camera-toggle")
        await page.wait_for_function("!document.getElementById('camera-ask').disabled",
                                     timeout=pw_ms(5000))
        await ask(page, "What do you see? " + reply(
            "A test pattern: a pie chart that turns, on a green field.")
            + "[[token_delay_us=50000]]")
        await answered(page, 0)
        await page.evaluate(HIDE_DIRECTIVES)
        await shot(page, "page-camera.png", tmp_path)
