"""The chat page in a real browser (Debian's Chromium, driven by Playwright).

It connects over /ws with the JSON subprotocol, streams a reply, shows the
model and the timings, and its Stop button cancels a long answer.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright

from rkstream.config import Settings
from rkstream.server.app import make_app

from fakes import Calls, FakeEngine

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
ServerFactory = Callable[..., Awaitable[TestServer]]
# Set RKSTREAM_SCREENSHOTS to a folder to keep the screenshot for a person to look at.
SCREENSHOT_DIR = os.environ.get("RKSTREAM_SCREENSHOTS")


async def test_chat_page_streams_and_stops(aiohttp_server: ServerFactory,
                                           tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), "install Debian's chromium (apt-get install chromium)"
    calls = Calls()
    server = await aiohttp_server(make_app(Settings(), lambda s: FakeEngine(s, 0.02, calls)),
                                  host="127.0.0.1")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page()
        errors: list[Any] = []
        page.on("pageerror", lambda error: errors.append(error))
        await page.goto(str(server.make_url("/")))
        await page.wait_for_function(
            "document.getElementById('status').textContent.includes('fake')")
        await page.fill("#prompt", "hello from the browser")
        await page.press("#prompt", "Enter")
        reply = page.locator(".msg.assistant").first
        await reply.locator(".meta").wait_for()
        text = await reply.inner_text()
        assert "hello from the browser" in text and "completed" in text
        await page.fill("#prompt", " ".join(["word"] * 200))
        await page.click("#send")
        await page.wait_for_function(
            "document.querySelectorAll('.msg.assistant')[1].textContent.length > 5")
        await page.click("#stop")
        stopped = page.locator(".msg.assistant").nth(1).locator(".meta")
        await stopped.wait_for()
        assert "cancelled" in await stopped.inner_text()
        await page.screenshot(path=str(SCREENSHOT_DIR or tmp_path) + "/chat.png")
        await browser.close()
    assert errors == []
    assert len(calls.cancels) == 1
