"""``rkstream serve`` over https and wss with a self-signed certificate, and a bad
pair refused at start with its key named."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from test_cli import REPO, free_port

from helpers import MS, WSClient, create, self_signed


async def test_serve_speaks_https_and_wss(tmp_path: Path, standin_libs: dict[str, Path]
                                          ) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rkstream", "serve", "--standin", "--host", "127.0.0.1",
         "--port", str(port), "--set", f"server.tls_cert={cert}",
         "--set", f"server.tls_key={key}"],
        cwd=REPO, env={**os.environ, "RKSTREAM_LOG_LEVEL": "info"}, stderr=subprocess.PIPE,
        text=True)
    trusting = ssl.create_default_context(cafile=str(cert))  # checks the name too
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                try:
                    async with session.get(f"https://127.0.0.1:{port}/health",
                                           ssl=trusting) as response:
                        if response.status == 200:
                            assert (await response.json())["status"] == "ok"
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(25 * MS)
            else:
                raise AssertionError("no https /health")
            async with session.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=trusting) as ws:
                conn = WSClient(ws)
                assert (await conn.recv())["type"] == "session.created"
                await conn.send(create("a", "hello over tls [[token_delay_us=0]]"))
                done = (await conn.until_done({"a"}))["a"]
                assert done["status"] == "completed"
                assert conn.text("a") == "Echo: hello over tls"
            # A client that does not trust the certificate refuses it.
            untrusting = ssl.create_default_context()
            try:
                async with session.get(f"https://127.0.0.1:{port}/health", ssl=untrusting):
                    raise AssertionError("an unknown certificate was accepted")
            except aiohttp.ClientConnectorCertificateError:
                pass
    finally:
        server.terminate()
        _, err = server.communicate(timeout=20)
    assert f"listening on https://127.0.0.1:{port} (WebSocket wss at /ws" in err


def test_serve_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "one")
    _, other = self_signed(tmp_path, "two")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKSTREAM_")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1",
         "--port", str(free_port()), "--set", f"server.tls_cert={cert}",
         "--set", f"server.tls_key={other}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 15
    assert f"server.tls_key = '{other}' is not the private key" in result.stderr
    assert "listening" not in result.stderr
