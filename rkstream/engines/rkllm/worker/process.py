"""The server's side of one worker process: start it, talk to it, see it end.

The worker is a fresh interpreter (``python -m``, never a fork of the
threaded server) with the control socket and the write end of the token
pipe passed as file descriptors. The token pipe is read on the loop with
``add_reader`` (no polling, no thread); stdout and stderr are read line by
line, logged, and the last lines kept for the report of a fault.
:attr:`WorkerProcess.exited` resolves once the process has been reaped and
its pipes drained, so every token it wrote is delivered before its end is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from rkstream.engines.rkllm.native import EmbedEnd, NativeEnd
from rkstream.engines.rkllm.prompt_cache import LoadedCache
from rkstream.engines.rkllm.worker.wire import (
    FrameReader,
    WorkerInit,
    control_frame,
    receive_async,
)
from rkstream.errors import EngineInitError
from rkstream.log import engine_log, native_log

OUTPUT_LINES = 40  # kept for the report of a fault
DRAIN_S = 2.0  # after the exit, how long the pipes may take to reach their end
WORKER_MODULE = "rkstream.engines.rkllm.worker"
# A log record of the worker's own (child.py's format): logged again under its logger and level.
LOG_RECORD = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) (rkstream[\w.]*): (.*)")


def describe_exit(returncode: int) -> str:
    """``killed by SIGSEGV`` or ``exit status 3``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


class WorkerProcess:
    """One worker process.

    Args:
        index: the instance's index (logs).
        on_items: called on the loop with text and ends from the token pipe, in order.
    """

    def __init__(self, index: int,
                 on_items: Callable[[list[str | NativeEnd | EmbedEnd]], None]) -> None:
        self.index = index
        self._on_items = on_items
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self.killed = False  # by the server (a hang, or a close that took too long)
        self.pid: int | None = None
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
        self._frames = FrameReader()
        self._token_fd = -1
        self._token_end: asyncio.Future[None] = self._loop.create_future()
        self._tasks: list[asyncio.Task[None]] = []

    # -- start ---------------------------------------------------------------------
    async def start(self, init: WorkerInit) -> LoadedCache | None:
        """Start the worker and load the model in it.

        Returns the system prompt cache it loaded, if any.

        Raises:
            EngineInitError: the worker could not start, or its model load failed
                or crashed (the message has its exit and last output).
        """
        parent_sock, child_sock = socket.socketpair()
        token_r, token_w = os.pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", WORKER_MODULE, "--control-fd", str(child_sock.fileno()),
                "--token-fd", str(token_w), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                pass_fds=(child_sock.fileno(), token_w))
        except OSError as exc:
            parent_sock.close()
            os.close(token_r)
            raise EngineInitError(f"cannot start a worker process ({sys.executable}): "
                                  f"{exc}") from exc
        finally:
            child_sock.close()
            os.close(token_w)
        self.pid = self._proc.pid
        self._token_fd = token_r
        os.set_blocking(token_r, False)
        self._loop.add_reader(token_r, self._readable)
        reader, self._writer = await asyncio.open_unix_connection(sock=parent_sock)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._tasks = [asyncio.create_task(self._lines(self._proc.stdout)),
                       asyncio.create_task(self._lines(self._proc.stderr)),
                       asyncio.create_task(self._replies_from(reader)),
                       asyncio.create_task(self._watch_exit())]
        self.send(("init", init))
        reply = await self._replies.get()
        if reply is not None and reply[0] == "ready":
            cache: LoadedCache | None = reply[1]
            return cache
        await self.stop(grace_s=DRAIN_S)
        if reply is not None and reply[0] == "init_failed":
            raise EngineInitError(str(reply[1]))
        raise EngineInitError(
            f"the worker process of instance {self.index} ended while loading the model "
            f"({describe_exit(self.exited.result())}); its last output: "
            + (" | ".join(list(self.output)[-5:]) or "none"))

    # -- the channels --------------------------------------------------------------
    def send(self, message: tuple[Any, ...]) -> bool:
        """Queue a control message; False when the worker is already gone."""
        writer = self._writer
        if writer is None or writer.is_closing() or self.exited.done():
            return False
        writer.write(control_frame(message))
        return True

    def _readable(self) -> None:
        try:
            data = os.read(self._token_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self._token_fd)
            if not self._token_end.done():
                self._token_end.set_result(None)
            return
        items = self._frames.feed(data)
        if items:
            self._on_items(items)

    async def _lines(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the stream's limit
                line = await stream.read(1 << 16)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self.output.append(text)
                self._relay(text)

    def _relay(self, text: str) -> None:
        record = LOG_RECORD.fullmatch(text)
        if record is None:  # the runtime's own output, or a traceback's lines
            native_log.info("worker %d: %s", self.index, text)
        else:
            logging.getLogger(record[2]).log(int(logging.getLevelName(record[1])), "worker %d: %s",
                                             self.index, record[3])

    async def _replies_from(self, reader: asyncio.StreamReader) -> None:
        while True:
            message = await receive_async(reader)
            await self._replies.put(message)
            if message is None:
                return

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        returncode = await self._proc.wait()
        # Everything the worker wrote before it ended is delivered before its end.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(self._token_end, *self._tasks[:3]), DRAIN_S)
        self._close_channels()
        await self._replies.put(None)
        if not self.exited.done():
            self.exited.set_result(returncode)

    def _close_channels(self) -> None:
        if self._token_fd >= 0:
            self._loop.remove_reader(self._token_fd)
            os.close(self._token_fd)
            self._token_fd = -1
        if self._writer is not None:
            self._writer.close()
        for task in self._tasks[:3]:
            task.cancel()

    # -- the end -------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the worker (it hangs); :attr:`exited` follows."""
        if self._proc is None or self._proc.returncode is not None:
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def abandon(self) -> None:
        """Kill a worker whose start was cancelled, and reap it."""
        if self._proc is None:
            return
        self.kill()
        await asyncio.shield(self.exited)

    async def stop(self, grace_s: float) -> int:
        """Ask the worker to destroy its handle and end; kill it after ``grace_s``.

        Returns its exit status (see :func:`describe_exit`).
        """
        if self._proc is None:
            return 0
        self.send(("close",))
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), grace_s)
        except asyncio.TimeoutError:
            engine_log.warning("worker %d did not end within %g s of close; killing it",
                               self.index, grace_s)
            self.kill()
        return await self.exited
