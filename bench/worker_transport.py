"""Tokens from a producer to an asyncio loop: in-process thread vs worker process.

Issue 20 moves the native runtime into one worker process per model instance.
This measures what each way back to the event loop costs per token, against
today's in-process path, on this machine:

1. in-process: a producer thread -> LoopChannel -> loop (the baseline);
2. worker -> AF_UNIX SOCK_STREAM socketpair, length-prefixed frames, add_reader;
3. worker -> AF_UNIX SOCK_SEQPACKET socketpair, one record per token, add_reader;
4. worker -> os.pipe, the frames of 2, add_reader;
5. worker -> multiprocessing.shared_memory ring, with an eventfd wake-up only
   when the loop has gone idle (one wake-up per burst, like LoopChannel).

Every token carries its sequence number and the producer's CLOCK_MONOTONIC
stamp; the loop reads the same clock right after the read that delivered it.
Workers are started with multiprocessing's "spawn" (see START_METHOD_WHY).
Self-contained: no rkstream server and no stand-in library.

    python bench/worker_transport.py            # about 2 minutes
    python bench/worker_transport.py --quick    # about 25 s
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import platform
import random
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Lock
from pathlib import Path
from typing import Any

from rkstream.core.channel import LoopChannel

Item = tuple[int, int, bytes]  # seq, producer stamp (ns), token bytes
Emit = Callable[[int, int, bytes], None]
Context = SpawnContext | ForkServerContext

START_METHOD_WHY = (
    "spawn: the server is multi-threaded (event loop, executor, the runtime's own threads) and "
    "fork copies locks other threads hold; spawn starts a fresh single-threaded interpreter with "
    "nothing inherited, and needs no extra long-lived helper to supervise. forkserver is also "
    "safe and starts faster (table below), but a worker start is followed by a model load of "
    "seconds, so that saving does not matter.")

END = 0xFFFF_FFFF  # sequence number of the end marker, sent after the last token
# Token-like payloads, including a UTF-8 character split across two tokens.
PAYLOADS = (b" the", b" stream", b"ing", b",", b" \xe4\xbd", b"\xa0", b" token", b"s.")
FRAME = struct.Struct("<HIq")  # payload length, seq, stamp; the payload follows
READ_SIZE = 1 << 16

# Shared-memory ring: four header fields, each on its own cache line, then
# fixed slots of FRAME + up to 50 payload bytes.
HEAD, TAIL, IDLE, WAITING = 0, 64, 128, 192
DATA = 256
SLOT = 64
SLOTS = 4096  # 256 KiB of slots, about an AF_UNIX socket's default buffer
U64 = struct.Struct("<Q")

WORKER_KINDS = {
    "stream": "worker → socketpair SOCK_STREAM",
    "seqpacket": "worker → socketpair SOCK_SEQPACKET",
    "pipe": "worker → os.pipe",
    "shm": "worker → shm ring + eventfd",
}
IN_PROCESS = "in-process: thread → LoopChannel"


def produce(emit: Emit, count: int, delay_s: float) -> float:
    """Emit ``count`` tokens then the end marker, as the runtime's callback
    thread would; return this thread's CPU seconds."""
    cpu = time.thread_time()
    for seq in range(count):
        if delay_s:
            time.sleep(delay_s)
        emit(seq, time.monotonic_ns(), PAYLOADS[seq % len(PAYLOADS)])
    emit(END, time.monotonic_ns(), b"")
    return time.thread_time() - cpu


def produce_into(out: list[float], emit: Emit, count: int, delay_s: float) -> None:
    """A thread target: produce(), keeping its CPU seconds in ``out``."""
    out.append(produce(emit, count, delay_s))


# --- worker side ---------------------------------------------------------

def frame_writer(fd: int) -> Emit:
    def emit(seq: int, stamp: int, payload: bytes) -> None:
        frame = FRAME.pack(len(payload), seq, stamp) + payload
        # Blocking fd: a full buffer is the back-pressure; short writes would
        # break the framing, so refuse them loudly.
        if os.write(fd, frame) != len(frame):
            raise OSError("short write")
    return emit


class RingProducer:
    """The worker's end of the ring.

    Python has no memory fences, so HEAD, TAIL and the two flags change only
    under a process-shared lock (uncontended it is a futex with no syscall).
    Slot bytes are written before the release that publishes them and read
    after the consumer's acquire, which keeps them ordered on aarch64 too.
    """

    def __init__(self, buf: memoryview, lock: Lock, wake_fd: int, space_fd: int) -> None:
        self._buf = buf
        self._lock = lock
        self._wake_fd = wake_fd
        self._space_fd = space_fd
        self._head = 0
        self._tail = 0  # the last TAIL seen; the real one can only be ahead

    def put(self, seq: int, stamp: int, payload: bytes) -> None:
        if len(payload) > SLOT - FRAME.size:
            raise ValueError("token longer than a slot")
        if self._head - self._tail >= SLOTS:
            self._wait_for_space()
        buf = self._buf
        off = DATA + (self._head % SLOTS) * SLOT
        FRAME.pack_into(buf, off, len(payload), seq, stamp)
        buf[off + FRAME.size:off + FRAME.size + len(payload)] = payload
        self._head += 1
        with self._lock:
            U64.pack_into(buf, HEAD, self._head)
            self._tail = U64.unpack_from(buf, TAIL)[0]
            wake = buf[IDLE]
            if wake:
                buf[IDLE] = 0  # cleared here, so a burst costs one wake-up
        if wake:
            os.eventfd_write(self._wake_fd, 1)

    def _wait_for_space(self) -> None:
        while True:
            with self._lock:
                self._tail = U64.unpack_from(self._buf, TAIL)[0]
                if self._head - self._tail < SLOTS:
                    return
                self._buf[WAITING] = 1
            os.eventfd_read(self._space_fd)  # blocks until the loop frees slots


def worker_main(ctrl: socket.socket, lock: Lock | None) -> None:
    """The worker process: get the transport's fds, then run producers on order."""
    ctrl.send(b"hello")
    msg, fds, _flags, _addr = socket.recv_fds(ctrl, 1024, 4)
    setup = json.loads(msg)
    shm: shared_memory.SharedMemory | None = None
    try:
        if setup["kind"] == "none":
            return
        if setup["kind"] == "shm":
            assert lock is not None
            shm = shared_memory.SharedMemory(name=setup["shm"])
            assert shm.buf is not None
            emit: Emit = RingProducer(shm.buf, lock, fds[0], fds[1]).put
        else:
            emit = frame_writer(fds[0])
        ctrl.send(b"ready")
        while True:
            cmd = ctrl.recv(1024)
            if not cmd:
                break
            order = json.loads(cmd)
            if order["op"] != "run":
                break
            cpu: list[float] = []
            # A thread of its own, like the runtime's callback thread.
            thread = threading.Thread(target=produce_into,
                                      args=(cpu, emit, order["count"], order["delay_s"]))
            thread.start()
            thread.join()
            ctrl.send(json.dumps({"producer_cpu_s": cpu[0]}).encode())
    finally:
        for fd in fds:
            os.close(fd)
        if shm is not None:
            shm.close()
        ctrl.close()


# --- loop side -----------------------------------------------------------

class Sink:
    """What the loop does with tokens: checks order, keeps latencies."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.count = count
        self.latencies: list[int] = []
        self.payloads: list[bytes] = []
        self.wakeups = 0
        self.out_of_order = 0
        self.after_end = 0
        self.first_stamp = 0
        self.last_now = 0
        self._next = 0
        self._ended = False
        self.done: asyncio.Future[None] = loop.create_future()

    def take(self, now: int, items: list[Item]) -> None:
        for seq, stamp, payload in items:
            if self._ended:
                self.after_end += 1
            elif seq == END:
                self._ended = True
                self.done.set_result(None)
            else:
                if seq != self._next:
                    self.out_of_order += 1
                if seq == 0:
                    self.first_stamp = stamp
                self._next = seq + 1
                self.latencies.append(now - stamp)
                self.payloads.append(payload)
                self.last_now = now

    def batch(self, items: list[Item]) -> None:
        """LoopChannel's consumer: one call per wake-up of the loop."""
        self.wakeups += 1
        self.take(time.monotonic_ns(), items)

    def fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(why))

    def problems(self) -> list[str]:
        out = []
        if len(self.latencies) != self.count:
            out.append(f"{self.count - len(self.latencies)} lost")
        if self.out_of_order:
            out.append(f"{self.out_of_order} out of order")
        if self.after_end:
            out.append(f"{self.after_end} after the end")
        expected = [PAYLOADS[i % len(PAYLOADS)] for i in range(self.count)]
        if self.payloads != expected:
            out.append("payloads differ")
        return out


class FdReader:
    """add_reader on a pipe or socket; each wake-up reads all that is there."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, records: bool) -> None:
        self._loop = loop
        self._fd = fd
        self._records = records  # SOCK_SEQPACKET: one read per record
        self._pending = b""
        self.sink = Sink(loop, 0)
        loop.add_reader(fd, self._on_readable)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        sink = self.sink
        sink.wakeups += 1
        while True:
            try:
                chunk = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return
            now = time.monotonic_ns()
            if not chunk:
                self._loop.remove_reader(self._fd)
                sink.fail("the worker closed its end")
                return
            sink.take(now, self._parse(chunk))
            if not self._records and len(chunk) < READ_SIZE:
                return  # drained; anything newer brings its own readiness

    def _parse(self, chunk: bytes) -> list[Item]:
        buf = self._pending + chunk if self._pending else chunk
        items = []
        off, size, n = 0, FRAME.size, len(buf)
        while n - off >= size:
            length, seq, stamp = FRAME.unpack_from(buf, off)
            end = off + size + length
            if end > n:
                break
            items.append((seq, stamp, buf[off + size:end]))
            off = end
        self._pending = buf[off:]
        return items


class RingConsumer:
    """The loop's end of the ring; see RingProducer for the locking."""

    def __init__(self, loop: asyncio.AbstractEventLoop, buf: memoryview, lock: Lock,
                 wake_fd: int, space_fd: int) -> None:
        self._loop = loop
        self._buf = buf
        self._lock = lock
        self._wake_fd = wake_fd
        self._space_fd = space_fd
        self._tail = 0
        self.lock_misses = 0
        self.sink = Sink(loop, 0)
        loop.add_reader(wake_fd, self._on_wake)

    def close(self) -> None:
        self._loop.remove_reader(self._wake_fd)

    def _on_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        self.sink.wakeups += 1
        self._drain()

    def _drain(self) -> None:
        buf = self._buf
        while True:
            if not self._lock.acquire(False):
                # The worker is inside its few-bytecode critical section: go
                # round the loop once instead of blocking it. A worker that
                # dies holding the lock takes its ring with it.
                self.lock_misses += 1
                self._loop.call_soon(self._drain)
                return
            try:
                U64.pack_into(buf, TAIL, self._tail)
                space = buf[WAITING] == 1
                if space:
                    buf[WAITING] = 0
                head: int = U64.unpack_from(buf, HEAD)[0]
                idle = head == self._tail
                if idle:
                    buf[IDLE] = 1  # the next put wakes us
            finally:
                self._lock.release()
            if space:
                os.eventfd_write(self._space_fd, 1)
            if idle:
                return
            now = time.monotonic_ns()
            items = []
            for i in range(self._tail, head):
                off = DATA + (i % SLOTS) * SLOT
                length, seq, stamp = FRAME.unpack_from(buf, off)
                start = off + FRAME.size
                items.append((seq, stamp, bytes(buf[start:start + length])))
            self._tail = head
            self.sink.take(now, items)


@dataclass
class Result:
    name: str
    count: int
    latencies_ns: list[int]
    first_stamp: int
    last_now: int
    wakeups: int
    consumer_cpu_s: float
    producer_cpu_s: float
    problems: list[str]
    lock_misses: int = 0

    @property
    def lat_us(self) -> list[float]:
        return sorted(x / 1000 for x in self.latencies_ns)

    def p50(self) -> float:
        return statistics.median(self.lat_us)

    def p99(self) -> float:
        lat = self.lat_us
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))]

    def rate(self) -> float:
        return self.count / ((self.last_now - self.first_stamp) / 1e9)

    def per_token_us(self, cpu_s: float) -> float:
        return cpu_s / self.count * 1e6

    def check(self) -> str:
        return "ok" if not self.problems else "; ".join(self.problems)

    def merge(self, other: Result) -> Result:
        """Two halves of one scenario as one result (latency and CPU only)."""
        return Result(self.name, self.count + other.count,
                      self.latencies_ns + other.latencies_ns, self.first_stamp,
                      other.last_now, self.wakeups + other.wakeups,
                      self.consumer_cpu_s + other.consumer_cpu_s,
                      self.producer_cpu_s + other.producer_cpu_s,
                      self.problems + other.problems, self.lock_misses + other.lock_misses)


def result_of(name: str, sink: Sink, consumer_cpu_s: float, producer_cpu_s: float) -> Result:
    return Result(name, sink.count, sink.latencies, sink.first_stamp, sink.last_now,
                  sink.wakeups, consumer_cpu_s, producer_cpu_s, sink.problems())


def timeout_for(count: int, delay_s: float) -> float:
    return count * delay_s * 3 + 30


class InProcess:
    """Today's path: a producer thread in the loop's own process."""

    name = IN_PROCESS

    async def run(self, count: int, delay_s: float) -> Result:
        loop = asyncio.get_running_loop()
        sink = Sink(loop, count)
        channel: LoopChannel[Item] = LoopChannel(loop, sink.batch)

        def emit(seq: int, stamp: int, payload: bytes) -> None:
            channel.put((seq, stamp, payload))

        producer_cpu: list[float] = []
        thread = threading.Thread(target=produce_into, args=(producer_cpu, emit, count, delay_s),
                                  daemon=True)
        cpu = time.process_time()
        thread.start()
        await asyncio.wait_for(sink.done, timeout_for(count, delay_s))
        thread.join()  # it has sent the end marker: only its return is left
        cpu = time.process_time() - cpu
        # One process: the loop's share is the process's CPU less the producer's.
        return result_of(self.name, sink, cpu - producer_cpu[0], producer_cpu[0])

    async def close(self) -> None:
        pass


class Worker:
    """A worker process and its control socket; close() always reaps it."""

    def __init__(self, ctx: Context, lock: Lock | None) -> None:
        self.ctrl, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process: BaseProcess = ctx.Process(target=worker_main, args=(child, lock),
                                                daemon=True)
        try:
            self.process.start()
        finally:
            child.close()  # the worker has its own copy now
        self.ctrl.setblocking(False)
        self.pid = self.process.pid

    async def recv(self, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.ctrl, 1024), timeout)
        if not data:
            raise RuntimeError(f"worker {self.pid} exited")
        return data

    async def expect(self, word: bytes) -> None:
        got = await self.recv(60)
        if got != word:
            raise RuntimeError(f"worker said {got!r}, expected {word!r}")

    def send_setup(self, setup: dict[str, Any], fds: list[int]) -> None:
        # A few bytes into an empty SEQPACKET buffer: this cannot block.
        socket.send_fds(self.ctrl, [json.dumps(setup).encode()], fds)

    async def send(self, order: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.ctrl, json.dumps(order).encode())

    async def close(self) -> None:
        try:
            await self.send({"op": "quit"})
        except OSError:
            pass  # already gone
        # Escalate: ask, then SIGTERM, then SIGKILL; join() reaps each time.
        for action in (None, self.process.terminate, self.process.kill):
            if action is not None:
                action()
            if await wait_exit(self.process, 5):
                break
        self.process.join()
        self.process.close()  # frees the sentinel fd
        self.ctrl.close()


async def wait_exit(process: BaseProcess, timeout: float) -> bool:
    """Wait for the process's sentinel without polling or blocking the loop."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(process.sentinel, on_exit)
    try:
        await asyncio.wait_for(exited, timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_reader(process.sentinel)


class WorkerTransport:
    """One worker process and one way for its tokens to reach the loop."""

    def __init__(self, kind: str, worker: Worker, reader: FdReader | RingConsumer,
                 closers: list[Callable[[], None]]) -> None:
        self.name = WORKER_KINDS[kind]
        self.worker = worker
        self.reader = reader
        self._closers = closers

    @classmethod
    async def start(cls, ctx: Context, kind: str) -> WorkerTransport:
        loop = asyncio.get_running_loop()
        lock = ctx.Lock() if kind == "shm" else None
        worker = Worker(ctx, lock)
        closers: list[Callable[[], None]] = []
        try:
            await worker.expect(b"hello")
            reader: FdReader | RingConsumer
            if kind == "shm":
                assert lock is not None
                shm = shared_memory.SharedMemory(create=True, size=DATA + SLOTS * SLOT)
                closers += [shm.unlink, shm.close]  # run in reverse order
                assert shm.buf is not None
                shm.buf[IDLE] = 1  # the loop starts idle: the first token wakes it
                wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                closers.append(lambda: os.close(wake))
                space = os.eventfd(0, os.EFD_CLOEXEC)  # the worker blocks on it
                closers.append(lambda: os.close(space))
                worker.send_setup({"kind": kind, "shm": shm.name}, [wake, space])
                reader = RingConsumer(loop, shm.buf, lock, wake, space)
            elif kind == "pipe":
                r, w = os.pipe()
                closers.append(lambda: os.close(r))
                os.set_blocking(r, False)
                try:
                    worker.send_setup({"kind": kind}, [w])
                finally:
                    os.close(w)
                reader = FdReader(loop, r, records=False)
            else:
                stype = socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_STREAM
                mine, theirs = socket.socketpair(socket.AF_UNIX, stype)
                closers.append(mine.close)
                mine.setblocking(False)
                try:
                    worker.send_setup({"kind": kind}, [theirs.fileno()])
                finally:
                    theirs.close()
                reader = FdReader(loop, mine.fileno(), records=kind == "seqpacket")
            closers.append(reader.close)
            await worker.expect(b"ready")
        except BaseException:
            await worker.close()
            for close in reversed(closers):
                close()
            raise
        return cls(kind, worker, reader, closers)

    async def run(self, count: int, delay_s: float) -> Result:
        loop = asyncio.get_running_loop()
        sink = self.reader.sink = Sink(loop, count)
        misses = self.lock_misses()
        cpu = time.process_time()
        await self.worker.send({"op": "run", "count": count, "delay_s": delay_s})
        await asyncio.wait_for(sink.done, timeout_for(count, delay_s))
        cpu = time.process_time() - cpu
        reply = json.loads(await self.worker.recv(30))
        result = result_of(self.name, sink, cpu, reply["producer_cpu_s"])
        result.lock_misses = self.lock_misses() - misses
        return result

    def lock_misses(self) -> int:
        return self.reader.lock_misses if isinstance(self.reader, RingConsumer) else 0

    async def close(self) -> None:
        # The worker first: it must not write into a ring that is gone.
        await self.worker.close()
        for close in reversed(self._closers):
            close()


# --- hygiene -------------------------------------------------------------

def open_fds() -> list[str]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            out.append(f"{name}->{os.readlink(f'/proc/self/fd/{name}')}")
        except OSError:
            pass  # the fd listdir itself used
    return sorted(out)


def children() -> list[tuple[int, str, str]]:
    """(pid, state, command line) of every child process of this one."""
    out = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(line.split(":\t", 1) for line in
                          (entry / "status").read_text().splitlines() if ":\t" in line)
            if status.get("PPid", "").strip() != me:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append((int(entry.name), status["State"].strip(), cmd.strip()))
    return out


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


def listed(names: list[str]) -> str:
    return f" (new: {', '.join(names)})" if names else ""


# --- the run -------------------------------------------------------------

async def start_times(ctx: Context, n: int) -> list[float]:
    """Milliseconds from Process.start() to the worker's first word."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        worker = Worker(ctx, None)
        await worker.expect(b"hello")
        out.append((time.perf_counter() - started) * 1000)
        worker.send_setup({"kind": "none"}, [])
        await worker.close()
    return out


def table_slow(results: list[Result]) -> list[str]:
    base = results[0].p50()
    rows = ["| transport | tokens | wake-ups | order, loss | p50 µs | p99 µs | max µs | "
            "added p50 µs | loop CPU µs/token | producer CPU µs/token |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        added = "-" if r.name == IN_PROCESS else f"{r.p50() - base:+.0f}"
        rows.append(f"| {r.name} | {r.count} | {r.wakeups} | {r.check()} | {r.p50():.0f} | "
                    f"{r.p99():.0f} | {r.lat_us[-1]:.0f} | {added} | "
                    f"{r.per_token_us(r.consumer_cpu_s):.1f} | "
                    f"{r.per_token_us(r.producer_cpu_s):.1f} |")
    return rows


def table_fast(results: list[Result]) -> list[str]:
    rows = ["| transport | tokens | wake-ups | order, loss | tokens/s delivered | "
            "loop CPU µs/token | producer CPU µs/token | both µs/token |",
            "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in results:
        loop_us = r.per_token_us(r.consumer_cpu_s)
        prod_us = r.per_token_us(r.producer_cpu_s)
        rows.append(f"| {r.name} | {r.count} | {r.wakeups} | {r.check()} | {r.rate():,.0f} | "
                    f"{loop_us:.2f} | {prod_us:.2f} | {loop_us + prod_us:.2f} |")
    return rows


# The choice: the lowest added p50 at 20 tokens/s (the measure).
# Within NOISE_US of the best, the lower loop CPU per token at full speed
# decides. The shm ring must win by more than that: it shares a lock that a
# crashing worker may leave held, leaves a /dev/shm name to clean after every
# crash, and gives the loop no EOF when the worker dies.
NOISE_US = 30.0


def added_p50_interval(base: Result, other: Result, rounds: int = 1000) -> tuple[float, float]:
    """A 95 % bootstrap interval for other's p50 minus base's, in µs."""
    rng = random.Random(20)  # fixed seed: the same data gives the same interval
    a, b = base.lat_us, other.lat_us
    diffs = sorted(statistics.median(rng.choices(b, k=len(b)))
                   - statistics.median(rng.choices(a, k=len(a))) for _ in range(rounds))
    return diffs[int(rounds * 0.025)], diffs[int(rounds * 0.975) - 1]


def choose(slow: dict[str, Result], fast: dict[str, Result]) -> str:
    best = min(r.p50() for r in slow.values())
    fd_kinds = [k for k in slow if k != "shm" and slow[k].p50() - best <= NOISE_US]
    if not fd_kinds:
        return "shm"
    return min(fd_kinds, key=lambda k: fast[k].consumer_cpu_s)


def conclusion(slow: list[Result], fast: list[Result]) -> str:
    base = slow[0].p50()
    by_kind = {kind: r for kind, r in zip(WORKER_KINDS, slow[1:], strict=True)}
    fast_by_kind = {kind: r for kind, r in zip(WORKER_KINDS, fast[1:], strict=True)}
    best_kind = min(by_kind, key=lambda k: by_kind[k].p50())
    best = by_kind[best_kind]
    added = best.p50() - base
    low, high = added_p50_interval(slow[0], best)
    spread = max(r.p50() for r in by_kind.values()) - best.p50()
    pick = choose(by_kind, fast_by_kind)
    chosen, chosen_fast = by_kind[pick], fast_by_kind[pick]
    if high <= 100:
        verdict = (
            "That meets the ≤ 100 µs p50 target on this VM, although one idle wake-up here "
            f"already costs {base:.0f} µs p50 (the in-process figure is that floor): a worker "
            "pays the same single wake-up of the loop, because its write makes the loop's "
            "epoll ready just as call_soon_threadsafe's self-pipe byte does, so the process "
            "boundary adds a switch of address space, not a second wake-up.")
    elif added <= 100:
        verdict = (
            "The median meets the ≤ 100 µs p50 target, but the interval reaches past it, so "
            "this run cannot promise it: on this VM the noise of one idle wake-up "
            f"({base:.0f} µs p50 in-process, the floor) is as large as the difference.")
    else:
        verdict = (
            "That misses the ≤ 100 µs p50 target on this VM. The in-process path is already "
            f"the VM's wake-up floor ({base:.0f} µs p50 for one idle wake-up of the loop), and "
            "here a wake-up that crosses processes costs more than one inside a process (a "
            "switch of address space on a 2-core guest). Re-measure on the board, where "
            "wake-ups are far cheaper.")
    adds = f"adds {added:.0f} µs to" if added >= 0 else f"is {-added:.0f} µs under"
    return (
        f"At 20 tokens/s the best worker transport, {WORKER_KINDS[best_kind]}, {adds} the "
        f"in-process p50 (95 % bootstrap interval {low:+.0f} to {high:+.0f} µs, sampling "
        f"noise only; {base:.0f} → {best.p50():.0f} µs, p99 {slow[0].p99():.0f} → "
        f"{best.p99():.0f} µs), and the four worker transports are within {spread:.0f} µs p50 "
        f"of each other. {verdict} Use {WORKER_KINDS[pick]}: added p50 "
        f"{chosen.p50() - base:+.0f} µs, and at full speed {chosen_fast.rate():,.0f} tokens/s "
        f"for {chosen_fast.per_token_us(chosen_fast.consumer_cpu_s):.2f} µs of loop CPU per "
        f"token (in-process {fast[0].per_token_us(fast[0].consumer_cpu_s):.2f} µs), far "
        f"beyond a 20 tokens/s decode. The rule: within {NOISE_US:.0f} µs of the best p50 "
        "the lower loop CPU wins, among the fd transports, which read a whole burst per "
        "wake-up (SOCK_SEQPACKET: one read per token), share no lock a crashing worker could "
        "leave held, leave nothing in /dev/shm after a crash, and give the loop an EOF the "
        "moment the worker dies.")


async def main_async(args: argparse.Namespace) -> int:
    slow_n, fast_n, starts = (100, 20_000, 3) if args.quick else (400, 100_000, 5)
    spawn = multiprocessing.get_context("spawn")
    forkserver = multiprocessing.get_context("forkserver")
    ctx: Context = spawn if args.start_method == "spawn" else forkserver

    load_before = os.getloadavg()[0]  # other work on 2 cores skews every figure
    startup = {"spawn": await start_times(spawn, starts),
               "forkserver": await start_times(forkserver, starts)}

    # Baseline after the start-up runs, which start multiprocessing's own
    # helpers (resource tracker, fork server) and their fds.
    gc.collect()
    fds_before, shm_before = open_fds(), shm_names()
    worker_pids: list[int] = []
    transports: list[InProcess | WorkerTransport] = [InProcess()]
    try:
        for kind in WORKER_KINDS:
            started = await WorkerTransport.start(ctx, kind)
            transports.append(started)
            worker_pids.append(started.worker.pid or 0)
        for transport in transports:
            await transport.run(500, 0.0)  # warm-up
        # 20 tokens/s in two halves, in order then in reverse, so a drift in
        # the VM's wake-up cost over the minutes of the run favours no one.
        half = slow_n // 2
        first = [await t.run(half, 0.05) for t in transports]
        print("  20 tokens/s, first half done", file=sys.stderr, flush=True)
        second = [await t.run(slow_n - half, 0.05) for t in reversed(transports)][::-1]
        print("  20 tokens/s, second half done", file=sys.stderr, flush=True)
        slow = [a.merge(b) for a, b in zip(first, second, strict=True)]
        fast = [await t.run(fast_n, 0.0) for t in transports]
    finally:
        for transport in transports:
            await transport.close()
    # Drop every reference, so the ring's lock is finalized (its named
    # semaphore unlinked) before /dev/shm is checked.
    del transports, transport, started
    gc.collect()
    fds_after, shm_after = open_fds(), shm_names()

    kids = children()
    leftover_workers = [pid for pid in worker_pids if Path(f"/proc/{pid}").exists()]
    helpers = [k for k in kids if "resource_tracker" in k[2] or "forkserver" in k[2]]
    strays = [k for k in kids if k not in helpers]
    zombies = [k for k in kids if k[1].startswith("Z")]

    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"kernel {platform.release()}, workers started with {args.start_method!r}; "
          f"1-minute load average {load_before:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end.\n")
    print(f"Start method: {START_METHOD_WHY}\n")
    print("| start method | first start ms | median start ms |")
    print("|---|---:|---:|")
    for method, times in startup.items():
        print(f"| {method} | {times[0]:.0f} | {statistics.median(times):.0f} |")
    print(f"\n### (a) 20 tokens/s ({slow_n} tokens; latency from the producer's stamp "
          "to the loop's read)\n")
    print("\n".join(table_slow(slow)))
    print(f"\n### (b) Full speed ({fast_n:,} tokens)\n")
    print("\n".join(table_fast(fast)))
    print(f"\nshm ring: the loop found the worker holding the ring lock {slow[-1].lock_misses} "
          f"times at 20 tokens/s and {fast[-1].lock_misses} times at full speed (each time it "
          "went round the loop once instead of blocking).")
    leaked = sorted(set(fds_after) - set(fds_before))
    new_shm = sorted(shm_after - shm_before)
    ok = not (leftover_workers or strays or zombies or leaked or shm_after - shm_before)
    print(f"\nHygiene: {len(worker_pids)} workers started, {len(leftover_workers)} left; "
          f"zombies {len(zombies)}; other children {len(strays)}; multiprocessing helpers "
          f"still running {len(helpers)} (they exit with this process); open fds "
          f"{len(fds_before)} before, {len(fds_after)} after"
          f"{listed(leaked)}; /dev/shm entries {len(shm_before)} before, "
          f"{len(shm_after)} after{listed(new_shm)}.")
    print(f"\n### Conclusion\n\n{conclusion(slow, fast)}")
    problems = [r for r in slow + fast if r.problems]
    return 0 if ok and not problems else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 25 s)")
    parser.add_argument("--start-method", choices=("spawn", "forkserver"), default="spawn",
                        help="how workers start for the transport runs")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
