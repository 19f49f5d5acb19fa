"""What the browser tests share: Debian's Chromium, the timing unit for
Playwright, and the steps a person takes on the chat page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from helpers import MS

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own download fails here
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
# Chromium's fake camera, permission granted without asking.
CAMERA_FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
STATIC = Path(__file__).resolve().parents[2] / "static"


def pw_ms(ms: float) -> float:
    """A Playwright timeout (milliseconds) of ``ms`` in the project's timing unit."""
    return ms * MS * 1000


@asynccontextmanager
async def watched_page(url: str, prepare: Callable[[Page], Awaitable[None]] | None = None
                       ) -> AsyncIterator[Page]:
    """``url`` in a new headless Chromium; the test fails on any uncaught page error.
    ``prepare`` runs on the page before it loads; the browser's console is printed
    (pytest shows it when a test fails)."""
    assert Path(CHROMIUM).exists(), "install Debian's chromium (apt-get install chromium)"
    errors: list[Any] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page()
        page.on("pageerror", lambda error: errors.append(error))
        page.on("console", lambda message: print("console:", message.text))
        if prepare is not None:
            await prepare(page)
        await page.goto(url)
        try:
            yield page
        finally:
            await browser.close()
    assert errors == []


async def connected(page: Page) -> None:
    await page.wait_for_function(
        "document.getElementById('status').dataset.state === 'connected'", timeout=pw_ms(5000))


async def ask(page: Page, text: str) -> None:
    """Type ``text`` and press Enter."""
    await page.fill("#prompt", text)
    await page.press("#prompt", "Enter")


async def answered(page: Page, index: int) -> str:
    """The stats line of the ``index``-th answer, once it is there."""
    meta = page.locator(".msg.assistant").nth(index).locator(".meta")
    await meta.wait_for(timeout=pw_ms(10000))
    return await meta.inner_text()
