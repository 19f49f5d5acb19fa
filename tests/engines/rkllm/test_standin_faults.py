"""The stand-in runtime's injected faults, in a subprocess that is allowed to die.

lib/README.md ("Injected faults") describes them: ``crash_after = N`` ends the
process with a real SIGSEGV after N tokens, ``hang_after = N`` stops the
callbacks and ignores ``rkllm_abort`` until the hang is released, and the fault
control file (``fault_file``), read at each run start, switches either on for
the next run without restarting the process. Each test starts a small driver
script with ``sys.executable`` that loads the stand-in through the real ctypes
binding and takes commands on stdin; it answers with JSON lines on stdout, one
per callback and one per command. Every test runs on both ABI lines.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import ModelFactory, Records
from helpers import MS

HERE = Path(__file__).resolve().parent  # where the driver finds native.py
LINES = ("1.3", "1.2")
REPLY = "a b c d"
TOKENS = ["a ", "b ", "c ", "d"]
CRASH_LINE = "E rkllm: stand-in: injected crash after {n} tokens"

# The driver. Commands (one a line): "run <prompt>" starts rkllm_run on a
# thread (then {"ev": "done", "ret": R}), "abort", "running", "destroy",
# "quit". Each callback prints {"ev": "cb", "state": ..., "text": ...}.
DRIVER = r'''
import json
import sys
import threading

sys.path.insert(0, sys.argv[3])  # the folder of native.py

from native import init_handle, run_prompt
from rkstream.engines.rkllm.loader import load_runtime

lock = threading.Lock()


def say(**event):
    with lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


runtime = load_runtime(sys.argv[1], "auto")
abi, fn = runtime.abi, runtime.functions
states = {abi.RKLLM_RUN_NORMAL: "normal", abi.RKLLM_RUN_WAITING: "waiting",
          abi.RKLLM_RUN_FINISH: "finish", abi.RKLLM_RUN_ERROR: "error"}


def on_result(result, userdata, state):
    text = result.contents.text
    say(ev="cb", state=states.get(state, str(state)),
        text=None if text is None else text.decode("utf-8", "replace"))
    return 0


opened = init_handle(runtime, sys.argv[2], on_result)
if opened.ret != 0:
    say(ev="init_failed")
    sys.exit(3)
handle = opened.handle
say(ev="ready", line=runtime.line)


def run(prompt):
    say(ev="done", ret=run_prompt(runtime, handle, prompt))


def destroy():
    say(ev="destroyed", ret=fn.rkllm_destroy(handle))


for line in sys.stdin:
    command, _, arg = line.rstrip("\n").partition(" ")
    if command == "run":
        threading.Thread(target=run, args=(arg,), daemon=True).start()
    elif command == "abort":
        say(ev="abort", ret=fn.rkllm_abort(handle))
    elif command == "running":
        say(ev="running", value=fn.rkllm_is_running(handle))
    elif command == "destroy":
        threading.Thread(target=destroy, daemon=True).start()
    elif command == "quit":
        break
'''


class Driver:
    """One driver subprocess, its JSON events and its stderr."""

    def __init__(self, tmp_path: Path, lib: Path, model: Path) -> None:
        script = tmp_path / "driver.py"
        script.write_text(DRIVER, encoding="utf-8")
        self.stderr_path = tmp_path / f"driver-stderr-{id(self)}.txt"
        env = {k: v for k, v in os.environ.items()
               if k not in ("RKLLM_STANDIN_RECORD", "RKLLM_STANDIN_FAULT_FILE",
                            "PYTHONFAULTHANDLER")}
        self._stderr: IO[bytes] = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(lib), str(model), str(HERE)], cwd=tmp_path,
            env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.callbacks: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.startswith(b"{"):  # other lines are the runtime's own stdout
                self.events.put(json.loads(raw))
        self.events.put(None)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event; None when the process closed its stdout (it ended)."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout:.3f} s") from None
        if event is not None and event["ev"] == "cb":
            self.callbacks.append(event)
        return event

    def expect(self, ev: str, timeout: float = 5000 * MS) -> dict[str, Any]:
        """Events until one of kind ``ev`` (callbacks on the way are kept)."""
        while True:
            event = self.next(timeout)
            assert event is not None, f"the driver ended while waiting for {ev!r}"
            if event["ev"] == ev:
                return event

    def quiet(self, duration: float) -> None:
        """Nothing at all arrives for ``duration`` seconds."""
        try:
            event = self.events.get(timeout=duration)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected event while quiet: {event}")

    def until_exit(self, timeout: float = 5000 * MS) -> int:
        """Collect the remaining events and wait for the process to end."""
        while self.next(timeout) is not None:
            pass
        return self.proc.wait(timeout=timeout)

    def texts(self) -> list[str | None]:
        return [cb["text"] for cb in self.callbacks if cb["state"] == "normal"]

    def states(self) -> list[str]:
        return [cb["state"] for cb in self.callbacks]

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5000 * MS)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._reader.join(timeout=5000 * MS)
        self._stderr.close()


def set_fault(path: Path, text: str) -> None:
    """Switch the fault control file atomically (as lib/README.md advises)."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


@pytest.fixture(params=LINES)
def line(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fault_file(tmp_path: Path) -> Path:
    path = tmp_path / "fault"
    set_fault(path, "")
    return path


@pytest.fixture
def start(tmp_path: Path, standin_libs: dict[str, Path], standin_model: ModelFactory,
          records: Records, fault_file: Path, line: str) -> Iterator[Any]:
    """Start a driver on a model with ``reply = a b c d``, the record file and
    the fault control file; keyword arguments add model keys."""
    drivers: list[Driver] = []

    def make(**keys: Any) -> Driver:
        model = standin_model(reply=REPLY, record=records.path, fault_file=fault_file, **keys)
        driver = Driver(tmp_path, standin_libs[line], model)
        drivers.append(driver)
        assert driver.expect("ready", 10000 * MS)["line"] == line
        return driver

    try:
        yield make
    finally:
        for driver in drivers:
            driver.close()


@pytest.mark.parametrize("source", ["key", "directive", "fault_file"])
def test_crash_after_two_tokens(start: Any, records: Records, fault_file: Path,
                                source: str) -> None:
    keys = {"crash_after": 2} if source == "key" else {}
    driver = start(**keys)
    if source == "fault_file":
        set_fault(fault_file, "crash 2\n")
    driver.send("run go [[crash_after=2]]" if source == "directive" else "run go")
    status = driver.until_exit()
    assert status == -signal.SIGSEGV
    assert driver.states() == ["normal", "normal"]  # exactly two, no FINISH
    assert driver.texts() == TOKENS[:2]
    assert CRASH_LINE.format(n=2) in driver.stderr().splitlines()
    (run,) = records.all("run")
    assert run["fault"] == "crash:2"
    assert run["fault_source"] == ("fault_file" if source == "fault_file" else "settings")
    assert records.all("run_end") == []
    (fault,) = records.all("fault")
    assert fault["kind"] == "crash" and fault["after"] == 2


def test_hang_ignores_abort_until_the_control_file_releases_it(
        start: Any, records: Records, fault_file: Path) -> None:
    driver = start()
    set_fault(fault_file, "hang 1")
    driver.send("run go")
    driver.expect("cb")
    assert driver.texts() == TOKENS[:1]
    driver.quiet(100 * MS)  # no more callbacks, the run does not end
    driver.send("abort")
    assert driver.expect("abort")["ret"] == 0
    driver.quiet(100 * MS)  # the abort changed nothing
    driver.send("running")
    assert driver.expect("running")["value"] == 1
    (abort,) = records.all("abort")
    assert abort["running"] is True and abort["ignored"] is True
    assert records.all("run_end") == []

    set_fault(fault_file, "")  # release: the pending abort now takes effect
    assert driver.expect("done", 5000 * MS)["ret"] == 0
    assert driver.states() == ["normal", "finish"]
    (end,) = records.all("run_end")
    assert end["finish"] == "abort" and end["generated"] == 1
    (hang_end,) = records.all("hang_end")
    assert hang_end["released_by"] == "fault_file" and hang_end["abort_pending"] is True
    assert records.all("run")[0]["fault"] == "hang:1"
    driver.send("quit")
    assert driver.until_exit() == 0


def test_hang_ends_when_the_process_is_killed(start: Any, records: Records) -> None:
    driver = start()
    driver.send("run go [[hang_after=1]]")  # nothing releases this hang
    driver.expect("cb")
    driver.quiet(100 * MS)
    driver.send("abort")
    assert driver.expect("abort")["ret"] == 0
    driver.quiet(50 * MS)
    assert records.all("abort")[0]["ignored"] is True
    driver.proc.kill()
    assert driver.until_exit() == -signal.SIGKILL
    assert driver.texts() == TOKENS[:1]
    assert records.all("run")[0]["fault"] == "hang:1"
    assert records.all("run_end") == [] and records.all("hang_end") == []


def test_destroy_ends_a_hang(start: Any, records: Records) -> None:
    driver = start(hang_after=0)
    driver.send("run go")
    driver.quiet(50 * MS)  # hung before the first token
    driver.send("destroy")
    ends: dict[str, int] = {}
    while len(ends) < 2:  # the run's "done" and "destroyed" come in either order
        event = driver.next(5000 * MS)
        assert event is not None
        if event["ev"] in ("done", "destroyed"):
            ends[event["ev"]] = event["ret"]
    assert ends == {"done": 0, "destroyed": 0}
    assert driver.states() == ["finish"]
    assert records.all("hang_end")[0]["released_by"] == "destroy"
    assert records.all("run_end")[0]["finish"] == "abort"


def test_flipping_the_control_file_between_runs(start: Any, records: Records,
                                                fault_file: Path) -> None:
    driver = start()
    driver.send("run one")
    assert driver.expect("done")["ret"] == 0
    assert driver.texts() == TOKENS and driver.states()[-1] == "finish"

    driver.callbacks.clear()
    set_fault(fault_file, "hang 1\n")
    driver.send("run two")
    driver.expect("cb")
    driver.quiet(100 * MS)
    set_fault(fault_file, "")  # released without an abort: the run goes on
    assert driver.expect("done")["ret"] == 0
    assert driver.texts() == TOKENS and driver.states()[-1] == "finish"

    driver.callbacks.clear()
    set_fault(fault_file, "crash 1\n")
    driver.send("run three")
    assert driver.until_exit() == -signal.SIGSEGV
    assert driver.texts() == TOKENS[:1]
    assert CRASH_LINE.format(n=1) in driver.stderr()

    runs = records.all("run")
    assert [r["fault"] for r in runs] == [None, "hang:1", "crash:1"]
    assert [e["finish"] for e in records.all("run_end")] == ["eos", "eos"]
    assert records.all("hang_end")[0]["released_by"] == "fault_file"
