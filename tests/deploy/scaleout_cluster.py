"""Real processes for the scale-out tests: rkstream servers on the stand-in
runtime ("boards") and the shipped HAProxy and nginx configurations, all on
127.0.0.1 with free ports. Every process is stopped by its owner's teardown."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import MS, REPO

HAPROXY_CFG = REPO / "docs" / "deploy" / "haproxy.cfg"
NGINX_CONF = REPO / "docs" / "deploy" / "nginx.conf"
# The stand-in at about 20 tokens/s, as `rkstream serve --standin` plays it, but
# named so the qwen2 chat format (and with it KV reuse across turns) is used.
MODEL = ("#rkstream-standin\ntoken_delay_us = 50000\nprefill_delay_us = 20000\n"
         "prefill_us_per_byte = 100\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists()
                                  else None)
    if path is None:
        pytest.fail(f"{tool} is not installed; bash tests/setup_and_run installs it "
                    f"(apt-get install {tool})")
    return path


def get_json(url: str, timeout_s: float = 1.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_until(check: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(20 * MS)
    raise AssertionError(f"timed out after {timeout_s:.1f} s waiting for {what}")


class Board:
    """One ``rkstream serve --standin`` process, named ``server.id = name``."""

    def __init__(self, name: str, directory: Path, drain_s: float) -> None:
        self.name = name
        self.port = free_port()
        self.directory = directory
        self.drain_s = drain_s
        self.model = directory / "qwen2.5-standin.rkllm"
        self.model.write_text(MODEL)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RKSTREAM_")}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rkstream", "serve", "--standin", "--model",
                 str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                 "--set", f"server.id={self.name}", "--set", f"server.drain_s={self.drain_s}",
                 # The balancer runs here too; the test clients all share 127.0.0.1.
                 "--set", "server.trusted_proxies=127.0.0.1",
                 "--set", "limits.max_connections_per_address=256",
                 "--set", "limits.max_queue=256"],
                cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout_s: float = 30000 * MS) -> None:
        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}: "
                                     f"{self.log.read_text()[-2000:]}")
            return get_json(self.url + "/health")[0] == 200

        wait_until(healthy, f"{self.name}'s /health 200", timeout_s)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Teardown: end the process whatever its state (a second SIGTERM exits at once)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            if process is not None:
                process.wait()
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def client_address_is_forwarded(base: str, boards: list[Board]) -> None:
    """A /ws client that sends X-Forwarded-For: 203.0.113.5 through the balancer
    is logged under that address by the board (server.trusted_proxies)."""
    # The balancer appends 127.0.0.1 (trusted by the boards) after the client's
    # entry; the board takes the first untrusted one from the right.
    async with aiohttp.ClientSession() as session, session.ws_connect(
            base + "/ws", headers={"X-Forwarded-For": "203.0.113.5"}) as ws:
        await ws.receive()  # session.created: the board has counted the connection

        def logged() -> bool:
            return any("203.0.113.5 connected" in board.log.read_text() for board in boards)

        wait_until(logged, "a board's log line naming 203.0.113.5", 5000 * MS)


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), 0.5):
        return True


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def haproxy_config(boards: list[Board], port: int, stats: Path, inter_ms: int) -> str:
    """The shipped haproxy.cfg with this test's addresses, ports and check pace
    (its inter, fastinter and downinter scaled down together: 2s -> inter_ms)."""
    text = HAPROXY_CFG.read_text()
    text = text.replace("bind :8080", f"bind 127.0.0.1:{port}")
    text = text.replace("/run/haproxy/admin.sock", str(stats))
    text = text.replace("inter 2s fastinter 500ms downinter 1s",
                        f"inter {inter_ms}ms fastinter {inter_ms // 4}ms "
                        f"downinter {inter_ms // 2}ms")
    for index, board in enumerate(boards, 1):
        text = re.sub(rf"(server board{index}) 192\.168\.1\.1{index}:8080",
                      rf"\1 127.0.0.1:{board.port}", text)
    assert "192.168" not in text and str(stats) in text, "the shipped config changed shape"
    return text


class HAProxy:
    """HAProxy in the foreground on the shipped config."""

    def __init__(self, boards: list[Board], directory: Path, inter_ms: int) -> None:
        self.port = free_port()
        self.stats = directory / "haproxy.sock"
        self.config = directory / "haproxy.cfg"
        self.config.write_text(haproxy_config(boards, self.port, self.stats, inter_ms))
        self.log = directory / "haproxy.log"
        binary = require("haproxy")
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log.open("ab") as log:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def servers(self, backend: str = "rk_any") -> dict[str, str]:
        """Each server's status (UP, DOWN, ...) from the stats socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.stats))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]
                if line]
        return {r["svname"]: r["status"] for r in rows
                if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_status(self, server: str, status: str, timeout_s: float) -> None:
        wait_until(lambda: self.servers().get(server, "").startswith(status),
                   f"HAProxy to see {server} {status}", timeout_s)

    def stop(self) -> None:
        process, self.process = self.process, None
        _stop(process)


class Nginx:
    """nginx in the foreground, with its own prefix in ``directory``, on the
    shipped server block (http context) wrapped in a minimal main config."""

    def __init__(self, boards: list[Board], directory: Path,
                 edits: dict[str, str] | None = None) -> None:
        self.port = free_port()
        prefix = directory / "nginx"
        prefix.mkdir()
        site = NGINX_CONF.read_text().replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        for old, new in (edits or {}).items():  # a test's own values (a shorter timeout)
            assert old in site, f"the shipped config has no {old!r}"
            site = site.replace(old, new)
        for index, board in enumerate(boards, 1):
            site = site.replace(f"192.168.1.1{index}:8080", f"127.0.0.1:{board.port}")
        site = re.sub(r"\n\s*server 192\.168\.1\.1\d:8080[^;]*;", "", site)  # boards not run
        assert "192.168" not in site, "the shipped config changed shape"
        (prefix / "rkstream.conf").write_text(site)
        # Run as root (CI), the workers would become "nobody", who cannot reach tmp_path.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n  access_log {prefix}/access.log;\n"
            f"  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
            f"  fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n"
            f"  scgi_temp_path {prefix}/scgi;\n"
            f"  include {prefix}/rkstream.conf;\n}}\n")
        binary = require("nginx")
        args = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e",
                str(prefix / "error.log")]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [*args, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _listening(self.port), "nginx to listen", 10000 * MS)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        process, self.process = self.process, None
        _stop(process)
