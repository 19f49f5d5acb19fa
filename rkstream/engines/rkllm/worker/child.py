"""The worker process: one RKLLM handle, driven by the server over two channels.

Started by :mod:`.process` as ``python -m rkstream.engines.rkllm.worker
--control-fd N --token-fd M``. The main thread owns the handle (init, every
run, destroy); a control thread reads orders while a run is under way, so a
stop or cancel reaches rkllm_abort without waiting for the run. The
runtime's own output goes to this process's stdout and stderr, which the
server reads line by line; stdout is made line-buffered first, so the last
lines before a crash are not lost in a stdio buffer.

The worker ends when told to close, and at once when the server goes away
(the control socket closes, or the kernel's parent-death signal).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time

from rkstream.engines.rkllm.loader import load_runtime
from rkstream.engines.rkllm.native import NativeModel, Order, Steps
from rkstream.engines.rkllm.worker.wire import (
    WorkerInit,
    control_frame,
    end_frame,
    receive,
    text_frame,
    vector_frame,
    write_all,
)
from rkstream.errors import RkstreamError

PR_SET_PDEATHSIG = 1
_IOLBF = 1


def _prepare_process() -> None:
    """Die with the server; line-buffer C's stdout (it is a pipe, so fully buffered)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stdout, None, _IOLBF, 0)
    except (OSError, AttributeError, ValueError):
        pass  # not glibc: the control socket's end still stops the worker


class Worker:
    """Serves one handle: runs from the control thread's queue, one at a time."""

    def __init__(self, model: NativeModel, control: socket.socket, token_fd: int) -> None:
        self.model = model
        self.control = control
        self.token_fd = token_fd
        # a run, the text of an embedding, or None to close
        self.runs: queue.SimpleQueue[tuple[Order, Steps] | str | None] = queue.SimpleQueue()
        self.current: Steps | None = None

    def emit(self, text: str) -> None:
        write_all(self.token_fd, text_frame(text))

    def read_orders(self) -> None:
        """The control thread: orders for the running or next run."""
        while True:
            message = receive(self.control)
            if message is None:  # the server is gone: nothing to finish for anyone
                os._exit(0)
            kind = message[0]
            if kind == "run":
                order: Order = message[1]
                steps = Steps(self.model.runtime.abi, order.max_tokens, self.emit)
                self.current = steps
                self.runs.put((order, steps))
            elif kind == "embed":
                text: str = message[1]
                self.runs.put(text)
            elif kind in ("stop", "cancel") and self.current is not None:
                steps = self.current
                if kind == "stop":
                    steps.stop_requested = True
                elif steps.cancel_s is None:
                    steps.cancel_s = time.perf_counter()
                self.model.abort(steps)
            elif kind == "close":
                self.runs.put(None)
                return

    def serve(self) -> int:
        threading.Thread(target=self.read_orders, name="rkllm-control", daemon=True).start()
        while True:
            item = self.runs.get()
            if item is None:
                break
            if isinstance(item, str):
                embedded = self.model.embed(item, self.model.settings.embedding_pooling)
                write_all(self.token_fd, vector_frame(embedded))
                continue
            order, steps = item
            end = self.model.run(order, steps)
            write_all(self.token_fd, end_frame(end))
        self.model.destroy()
        self.control.sendall(control_frame(("closed",)))
        return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m rkstream.engines.rkllm.worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--token-fd", type=int, required=True)
    args = parser.parse_args(argv)
    _prepare_process()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    control = socket.socket(fileno=args.control_fd)
    message = receive(control)
    if message is None or message[0] != "init":
        return 2
    init: WorkerInit = message[1]
    try:
        runtime = load_runtime(init.library, init.line)  # type: ignore[arg-type]
        model = NativeModel(runtime, init.settings, init.defaults, init.model_path, init.index,
                            init.image_tags, raw_prompts=init.raw_prompts,
                            system_block=init.system_block)
        cache = model.init()
    except RkstreamError as exc:
        control.sendall(control_frame(("init_failed", str(exc))))
        return 3
    control.sendall(control_frame(("ready", cache)))
    return Worker(model, control, args.token_fd).serve()

