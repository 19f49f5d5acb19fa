"""``rkstream chat`` in a subprocess, driven over a pipe: turns with history,
multi-line input, stats, and Ctrl-C (SIGINT) stopping an answer, then quitting."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from client_links import ServerMaker, url
from helpers import MS, eventually, jpeg, reply

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder

REPO = Path(__file__).resolve().parents[2]
LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"


class Chat:
    """A running ``rkstream chat``: write lines, read what it printed so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.out = ""
        self.err = ""
        self._readers = [asyncio.ensure_future(self._read(process.stdout, "out")),
                         asyncio.ensure_future(self._read(process.stderr, "err"))]

    async def _read(self, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while chunk := await stream.read(1024):
            setattr(self, name, getattr(self, name) + chunk.decode())

    async def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        await self.process.stdin.drain()

    async def wait_for(self, check: Any) -> None:
        await eventually(check, tries=500)
        assert check(), f"stdout: {self.out!r}\nstderr: {self.err!r}"

    async def end(self) -> int:
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.close()
        code = await asyncio.wait_for(self.process.wait(), 10000 * MS)
        await asyncio.gather(*self._readers)
        return code


@asynccontextmanager
async def chat(*args: str) -> AsyncIterator[Chat]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rkstream", "chat", *args, cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    running = Chat(process)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_turns_keep_history_and_lines_go_on(client_server: ServerMaker,
                                                  records: Any, tmp_path: Path) -> None:
    server = await client_server(vision=True)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(1))
    async with chat(url(server), "--system", "Be brief.", "--image", str(photo),
                    "--max-tokens", "40") as session:
        await session.write(reply("first answer") + "\n")
        await session.write("line one \\\nline two " + reply("second answer") + "\n\n")
        await session.write("/reset\n" + reply("third answer") + "\n")
        code = await session.end()
    assert code == 0, session.err
    assert session.out.splitlines() == ["first answer", "second answer", "third answer"]
    assert session.err.count("tokens/s") == 3 and "first token" in session.err
    first, second, third = records.all("run")
    assert "Be brief." in first["prompt"] and first["n_image"] == 1
    assert "line one \nline two" in second["prompt"]
    # The history went along: the runtime was asked to extend its cache of the first
    # turn (the KV-cache reuse sends only what is new); /reset started afresh.
    assert second["kv_before"] > 0 and "first answer" not in second["prompt"]
    assert third["kv_before"] == 0 and third["prompt"].startswith("<|im_start|>system\nBe brief.")
    assert third["infer"]["max_new_tokens"] == 40


async def test_ctrl_c_stops_the_answer_and_a_second_quits(client_server: ServerMaker,
                                                          records: Any) -> None:
    server = await client_server()
    async with chat(url(server)) as session:
        await session.write(LONG + "\n")
        await session.wait_for(lambda: session.out.count("w") >= 3)
        session.process.send_signal(signal.SIGINT)
        await session.wait_for(lambda: "(stopped)" in session.err)
        assert records.all("abort")  # the runtime was stopped, not left to finish
        await session.write(reply("still here") + "\n")
        await session.wait_for(lambda: "still here" in session.out)
        before = len(session.out)
        await session.write(LONG + "\n")
        await session.wait_for(lambda: len(session.out) > before + 6)
        session.process.send_signal(signal.SIGINT)
        await asyncio.sleep(5 * MS)
        session.process.send_signal(signal.SIGINT)
        code = await session.end()
    assert code == 130, session.err
    assert "Traceback" not in session.err


async def test_a_refused_key_is_said_plainly(client_server: ServerMaker) -> None:
    server = await client_server(server={"api_keys": "sesame"})
    async with chat(url(server), "--key", "wrong") as session:
        code = await session.end()
    assert code == 1 and "HTTP 401" in session.err and "Traceback" not in session.err


async def test_the_server_is_named_and_the_queue_shown(client_server: ServerMaker) -> None:
    from rkstream.client import AsyncClient

    server = await client_server(server={"id": "board5"})
    async with AsyncClient(url(server), timeout_s=5000 * MS) as other:
        # One answer runs and one waits: the chat's request has one ahead of it.
        busy = [other.stream(LONG), other.stream(LONG)]
        for stream in busy:
            await stream.start()
        await eventually(lambda: busy[0].text and busy[1].queue_position is not None)
        async with chat(url(server)) as session:
            await session.write(reply("after the queue") + "\n")
            await session.wait_for(lambda: "(waiting, 1 ahead)" in session.err)
            for stream in busy:
                await stream.cancel()
            await session.wait_for(lambda: "after the queue" in session.out)
            await session.write(reply("second") + "\n/reset\n" + reply("third") + "\n")
            code = await session.end()
    assert code == 0, session.err
    assert session.out.splitlines() == ["after the queue", "second", "third"]
    # The server is named once: the first time, and never again while it stays.
    assert session.err.count("server board5") == 1 and "was " not in session.err
    assert session.err.count("tokens/s") == 3 and "\x1b" not in session.err


def test_reset_starts_a_new_conversation() -> None:
    import argparse
    import io

    from rkstream.client.chat_cli import Chat

    class Stub:
        keys: list[str | None] = []

        def new_conversation(self, key: str | None = None) -> str:
            self.keys.append(key)
            return "fresh"

    stub = Stub()
    err = io.StringIO()
    session = Chat(stub, argparse.Namespace(image=[]), io.StringIO(),  # type: ignore[arg-type]
                   io.StringIO(), err)
    session.history.append({"role": "user", "content": "hi"})
    session.command("/reset")
    assert stub.keys == [None] and not session.history and "forgotten" in err.getvalue()
