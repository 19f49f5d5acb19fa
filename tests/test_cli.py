"""The ``rkstream`` command: config errors, ``config``, and ``serve --standin``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rkstream.cli import event_loop, main
from rkstream.errors import ConfigError

from helpers import MS, WSClient, create

REPO = Path(__file__).resolve().parent.parent


def test_bad_setting_is_refused_with_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "rkllm.runtime=1.1"]) == 2
    err = capsys.readouterr().err
    assert "rkllm.runtime = '1.1' is not allowed" in err and "'auto', '1.3', '1.2'" in err
    assert main(["config", "--set", "nonsense"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_config_prints_effective_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--port", "9999", "--standin"]) == 0
    out = capsys.readouterr().out
    assert "server.port = 9999" in out
    assert "librkllmrt-standin-1.3.so" in out and "demo.rkllm" in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_standin_streams_and_stops_on_sigterm(standin_libs: dict[str, Path]
                                                          ) -> None:
    port = free_port()
    env = {**os.environ, "RKSTREAM_LOG_LEVEL": "warning"}
    # Open requests may finish for shutdown_timeout_s; this one never would.
    server = subprocess.Popen(
        [sys.executable, "-m", "rkstream", "serve", "--standin", "--host", "127.0.0.1",
         "--port", str(port), "--set", "server.shutdown_timeout_s=0.5"], cwd=REPO, env=env,
        stderr=subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    ws = await session.ws_connect(f"http://127.0.0.1:{port}/ws")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(25 * MS)
            else:
                raise AssertionError("server did not start")
            conn = WSClient(ws)
            assert (await conn.recv())["model"]["id"] == "demo"
            await conn.send(create("a", "hello board [[token_delay_us=0]]"))
            await conn.until_done({"a"})
            assert conn.text("a") == "Echo: hello board"
            await conn.send(create("b", "a long one [[n_tokens=100000]]"))
            await conn.recv_type("response.output_text.delta")
            server.send_signal(signal.SIGTERM)
            done = await conn.recv_type("response.done")
            assert done["status"] == "cancelled"
            assert done["error"]["code"] == "shutting_down"
            msg = await ws.receive(timeout=5000 * MS)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1001
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        assert server.stderr is not None
        server.stderr.close()


async def test_missing_model_is_reported_by_health(tmp_path: Path,
                                                   standin_libs: dict[str, Path]) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rkstream", "serve", "--set", "engine=rkllm", "--rkllm-lib",
         str(standin_libs["1.3"]), "--model", str(tmp_path / "nope.rkllm"), "--host",
         "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        body = await response.json()
                        if body["status"] == "failed":
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(25 * MS)
            else:
                raise AssertionError("no failed health status")
            assert response.status == 503
            assert "nope.rkllm' does not exist" in body["reason"]
            async with session.get(f"http://127.0.0.1:{port}/ws") as ws_response:
                assert ws_response.status == 503
    finally:
        server.terminate()
        _, err = server.communicate(timeout=10)
    assert "loading the model 'nope' failed" in err and "nope.rkllm" in err


async def test_json_logs_include_the_runtimes_own_lines(standin_libs: dict[str, Path]) -> None:
    # On uvloop: the worker's pipes and output are read through its loop too.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rkstream", "serve", "--standin", "--host", "127.0.0.1",
         "--port", str(port), "--log-format", "json", "--set", "server.event_loop=uvloop"],
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(25 * MS)
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    native = [r for r in records if r["logger"] == "rkstream.native"]
    assert any("rkllm-runtime version: 1.3.0" in r["message"] for r in native)
    assert any("uvloop event loop" in r["message"] for r in records)


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    # Once shutdown has begun (the hook runs first in on_shutdown), one more
    # SIGTERM ends the process at once instead of waiting for the cleanup.
    script = tmp_path / "second.py"
    script.write_text(
        "import asyncio, os, signal\n"
        "from rkstream.cli import _exit_on_second_signal\n"
        "async def main():\n"
        "    await _exit_on_second_signal(None)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    await asyncio.sleep(30)  # a cleanup that would take long\n"
        "asyncio.run(main())\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 130 and time.monotonic() - started < 10


def test_warns_when_open_to_the_network_without_a_key() -> None:
    from dataclasses import replace

    from rkstream.cli import exposure_warning
    from rkstream.config import ServerSettings, Settings

    def server(**kw: Any) -> Settings:
        return replace(Settings(), server=replace(ServerSettings(), **kw))

    assert "without an API key" in (exposure_warning(Settings()) or "")  # default 0.0.0.0
    assert exposure_warning(server(api_keys="k")) is None
    assert exposure_warning(server(host="127.0.0.1")) is None


@pytest.mark.parametrize("args, words", [
    (["--set", "vision.mean=1,2"], ["vision.mean = '1,2'", "three comma-separated numbers"]),
    (["--set", "vision.std=1,0,1"], ["vision.std = '1,0,1'", "above 0"]),
    (["--runtime", "1.4"], ["rkllm.runtime = '1.4'", "'auto', '1.3', '1.2'"]),
    (["--set", "server.cors_origins=app.example"], ["server.cors_origins"]),
])
def test_serve_refuses_a_bad_value_at_once(args: list[str], words: list[str]) -> None:
    # Before any model load or bind: a server that started would outlive the timeout.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKSTREAM_")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1",
         "--port", str(free_port()), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 15
    for word in words:
        assert word in result.stderr
    assert "listening" not in result.stderr


def test_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    from rkstream import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"rkstream {__version__}\n"


def test_config_default_is_the_repositorys_config_toml(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # One source: config.toml is generated from the settings schema. After
    # changing a setting, regenerate it: rkstream config --default > config.toml
    from rkstream.config import Settings, load_settings

    assert main(["config", "--default", "--set", "not valid"]) == 0  # needs no settings
    text = capsys.readouterr().out
    assert text == (REPO / "config.toml").read_text(encoding="utf-8")
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    assert load_settings(tmp_path / "c.toml", environ={}) == Settings()


def test_the_event_loop_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop  # the test extra installs it

    assert event_loop("asyncio") is None
    for choice in ("auto", "uvloop"):
        loop = event_loop(choice)
        assert isinstance(loop, uvloop.Loop)
        loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert event_loop("auto") is None
    with pytest.raises(ConfigError) as refused:
        event_loop("uvloop")
    assert "pip install 'rkstream[uvloop]'" in str(refused.value)
