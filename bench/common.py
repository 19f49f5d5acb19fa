"""What the benchmarks share: a free port and waiting for a server to start."""

from __future__ import annotations

import asyncio
import socket
import subprocess

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(server: subprocess.Popen[bytes], port: int, seconds: float = 30) -> None:
    """Poll /health until it answers 200; stop if the server process exits."""
    for _ in range(int(seconds * 10)):
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{port}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the server did not start")
