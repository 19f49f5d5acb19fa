"""examples/camera_loop.py runs on generated frames against a stand-in server with
an encoder, and gets answers about the frames it streams."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from client_links import ServerMaker
from helpers import MS

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "camera_loop.py"


async def test_the_camera_loop_gets_answers(client_server: ServerMaker) -> None:
    server = await client_server(vision=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--url", f"127.0.0.1:{server.port}",
        "--source", "/nonexistent.mp4", "--ask-every", "0.5", "--duration", "3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30000 * MS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = out.decode()
    assert process.returncode == 0, err.decode()
    assert "using generated frames" in text
    answers = re.findall(r"frame (\d+), \d+ ms old: Echo: .*What is in front|"
                         r"frame (\d+), \d+ ms old: Echo: .*What changed", text)
    assert len(answers) >= 2, text
    seqs = [int(a or b) for a, b in answers]
    assert seqs == sorted(seqs) and seqs[-1] > seqs[0]  # newer frames each time
    counts = re.search(r"frames: (\d+) given, (\d+) sent", text)
    assert counts is not None, text
    given, sent = map(int, counts.groups())
    assert given >= 10 and sent >= 10  # 5 fps for 3 s, and the link keeps up
