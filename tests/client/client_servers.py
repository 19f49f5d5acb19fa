"""Servers on the stand-in runtime for the client's tests, on a real port.

Test modules load these fixtures with ``pytest_plugins = ["client_servers"]`` and
never import this module (a tests/client/conftest.py would take the module name
``conftest`` from tests/conftest.py, which other tests import). Their names are
the client's own, so they shadow no other module's fixtures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from rkstream.config import LimitSettings, ServerSettings, VisionSettings
from rkstream.server.app import make_app

from client_links import ServerMaker
from helpers import model_file, standin_settings
from tiny_encoder import build_tiny_encoder


@pytest.fixture(scope="module")
def client_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX vision encoder (16 rows of 16 floats per image)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny_qwen2.onnx", size=32,
                              patch=8, width=16)


@pytest.fixture
def client_server(aiohttp_server: Any, standin_libs: dict[str, Path], records: Any,
                   tmp_path: Path, client_encoder: Path) -> ServerMaker:
    """A server on a 1.3 stand-in model (its calls recorded), on 127.0.0.1:``port``
    (a free one by default): ``vision`` adds the tiny encoder, ``server`` and ``limits``
    are ServerSettings and LimitSettings keys, ``keys`` the model file's."""
    async def make(port: int | None = None, vision: bool = False,
                   server: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
                   **keys: Any) -> TestServer:
        model = model_file(tmp_path, "qwen2.5-test.rkllm", record=records.path,
                           embed_width=16, **keys)
        settings = standin_settings(standin_libs["1.3"], model)
        settings = replace(
            settings, server=replace(ServerSettings(), **(server or {})),
            limits=replace(LimitSettings(), **(limits or {})),
            vision=replace(VisionSettings(), encoder=str(client_encoder) if vision else ""))
        test_server: TestServer = await aiohttp_server(make_app(settings), host="127.0.0.1",
                                                       port=port)
        return test_server
    return make
