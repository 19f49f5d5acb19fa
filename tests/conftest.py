"""Fixtures shared by the whole suite: the stand-in runtime and its model files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from rkstream.config import LimitSettings, ServerSettings
from rkstream.server.app import SERVER_OPTIONS, make_app

from fakes import Calls, FakeEngine
from helpers import MS, fake_settings, model_file, standin_settings

REPO = Path(__file__).resolve().parent.parent
STANDIN = {line: REPO / "lib" / "build" / f"librkllmrt-standin-{line}.so"
           for line in ("1.3", "1.2")}


@pytest.fixture(scope="session")
def standin_libs() -> dict[str, Path]:
    """The stand-in libraries, built with the system compiler if needed."""
    subprocess.run(["make", "-s", "-C", str(REPO / "lib")], check=True)
    for path in STANDIN.values():
        assert path.is_file(), f"make -C lib did not build {path}"
    return STANDIN


ModelFactory = Callable[..., Path]


@pytest.fixture
def standin_model(tmp_path: Path) -> ModelFactory:
    """Write a stand-in model file; keyword arguments become its keys."""
    counter = iter(range(1000))

    def make(**keys: Any) -> Path:
        path = tmp_path / f"model{next(counter)}.rkllm"
        lines = ["#rkstream-standin"] + [f"{k} = {v}" for k, v in keys.items()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return make


class Records:
    """The stand-in's call records (JSON lines), read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self, call: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in
                self.path.read_text(encoding="utf-8", errors="replace").splitlines() if line]
        return [r for r in rows if call is None or r["call"] == call]


@pytest.fixture
def records(tmp_path: Path) -> Records:
    return Records(tmp_path / "calls.jsonl")


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Any:
    """pytest-aiohttp's client factory, with the server run as rkstream runs it."""
    async def make(app: Any, *, server_kwargs: dict[str, Any] | None = None,
                   **kwargs: Any) -> Any:
        return await aiohttp_client(app, server_kwargs={**SERVER_OPTIONS,
                                                        **(server_kwargs or {})}, **kwargs)
    return make


@pytest.fixture
def calls() -> Calls:
    """What the fake engine was given."""
    return Calls()


@pytest.fixture
def fake(aiohttp_client: Any, calls: Calls) -> Callable[..., Any]:
    """A client of a server on the fake engine (HTTP dialects' tests), its model
    served as ``m``: ``delay_ms`` a word, ``server`` settings, and any ``limits`` keys."""
    async def make(delay_ms: float = 0, server: dict[str, Any] | None = None,
                   **limits: Any) -> Any:
        settings = fake_settings(limits=replace(LimitSettings(), **limits),
                                 server=replace(ServerSettings(), **(server or {})))
        app = make_app(settings, lambda s: FakeEngine(s, delay_ms * MS, calls))
        return await aiohttp_client(app)
    return make


# Once per module: a fresh model's first run costs seconds, the tests leave it idle.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Any]:
    """The CPU engine with the bundled SmolLM2 model, loaded (context 512). Tests that
    use it run on the module's loop: ``pytest.mark.asyncio(loop_scope="module")``."""
    from rkstream.config import LlamaCppSettings, Settings
    from rkstream.engines.llamacpp.engine import LlamaCppEngine

    loaded = LlamaCppEngine(replace(Settings(), llamacpp=replace(LlamaCppSettings(), n_ctx=512)))
    await loaded.load()
    yield loaded
    await loaded.close()


@pytest.fixture
def named_standin(aiohttp_client: Any, standin_libs: dict[str, Path], records: Records,
                  tmp_path: Path) -> Callable[..., Any]:
    """A client of a server on a 1.3 stand-in model file called ``name`` (the name
    picks the chat family: Qwen2.5's tool markup by default), its calls recorded."""
    async def make(name: str = "qwen2.5-test.rkllm", **keys: Any) -> Any:
        model = model_file(tmp_path, name, record=records.path, **keys)
        return await aiohttp_client(make_app(standin_settings(standin_libs["1.3"], model)))
    return make


@pytest.fixture
def named_standin_url(aiohttp_server: Any, standin_libs: dict[str, Path], tmp_path: Path
                      ) -> Callable[..., Any]:
    """Like :func:`named_standin`, served on a port for the SDKs: its base URL."""
    async def make(name: str = "qwen2.5-test.rkllm", **keys: Any) -> str:
        model = model_file(tmp_path, name, **keys)
        server = await aiohttp_server(make_app(standin_settings(standin_libs["1.3"], model)))
        return str(server.make_url(""))
    return make

