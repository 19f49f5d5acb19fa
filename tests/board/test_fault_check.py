"""rkstream doctor's runtime-faults line: OK without a fault log, WARN with the latest
crash or hang, its exit and its last output lines, in the text and the JSON report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rkstream.board.checks_faults import check_runtime_faults
from rkstream.board.report import render_json, render_text
from rkstream.cli import main
from rkstream.config import RKLLMSettings, Settings
from rkstream.engines.rkllm.faults import read_faults, record_fault


def settings(fault_log: Path, isolation: str = "process") -> Settings:
    return replace(Settings(), rkllm=replace(RKLLMSettings(), fault_log=str(fault_log),
                                             isolation=isolation))


def crash_and_hang(log: Path) -> tuple[str, ...]:
    """Record a crash, then a hang with 12 output lines; return the hang's lines."""
    record_fault(log, kind="crash", instance=0, model="/m/qwen.rkllm",
                 exit="killed by SIGSEGV", pid=1234, output=("I rkllm: loading", "boom"))
    hang_output = tuple(f"I rkllm: line {n}" for n in range(12))
    record_fault(log, kind="hang", instance=1, model="/m/qwen.rkllm",
                 exit="killed by SIGKILL", pid=1235, output=hang_output)
    return hang_output


def test_no_fault_log_is_ok(tmp_path: Path) -> None:
    log = tmp_path / "faults.jsonl"
    check = check_runtime_faults(settings(log))
    assert check.status == "OK"
    assert check.detail == f"no runtime crash or hang recorded in {log}"
    assert check.lines == ()
    log.write_text("\n\n")  # a file with no entries
    assert check_runtime_faults(settings(log)).status == "OK"


def test_crash_and_hang_warn_with_the_latest(tmp_path: Path) -> None:
    log = tmp_path / "faults.jsonl"
    output = crash_and_hang(log)
    when = read_faults(log)[-1]["time"]
    check = check_runtime_faults(settings(log))
    assert check.status == "WARN"
    assert check.detail == (f"1 crash and 1 hang recorded in {log}; the latest, {when}: hang "
                            "of instance 1 (/m/qwen.rkllm), worker 1235 killed by SIGKILL; "
                            "its last 10 of 12 output lines:")
    assert check.lines == output[-10:]
    assert "watchdog" in check.fix and f"delete {log}" in check.fix
    assert "report it with this output" in check.fix

    text = render_text([check]).splitlines()
    assert text[0] == f"WARN runtime faults: {check.detail}"
    assert text[1:11] == [f"     | I rkllm: line {n}" for n in range(2, 12)]
    assert text[11].startswith("     fix: ")
    assert "I rkllm: line 1\n" not in render_text([check])  # only the last 10

    data = json.loads(render_json([check]))["checks"][0]
    assert data["name"] == "runtime faults" and data["status"] == "WARN"
    assert "killed by SIGKILL" in data["detail"]
    assert data["lines"] == list(output[-10:])


def test_a_malformed_line_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "faults.jsonl"
    record_fault(log, kind="crash", instance=0, model="/m/qwen.rkllm",
                 exit="killed by SIGSEGV", pid=77, output=("E RKNN: failed to submit",))
    with log.open("a") as file:
        file.write('{"kind": "hang", truncated\n[1, 2]\n')
    check = check_runtime_faults(settings(log))
    assert check.status == "WARN"
    assert check.detail.startswith(f"1 crash recorded in {log}; the latest, ")
    assert check.detail.endswith(": crash of instance 0 (/m/qwen.rkllm), worker 77 killed by "
                                 "SIGSEGV; its last output lines:")
    assert check.lines == ("E RKNN: failed to submit",)
    assert "rkllm-toolkit" in check.fix and "isolation" not in check.fix


def test_thread_isolation_no_output_and_an_unreadable_log(tmp_path: Path) -> None:
    log = tmp_path / "faults.jsonl"
    record_fault(log, kind="crash", instance=0, model="", exit="exit status 3", pid=None,
                 output=())
    check = check_runtime_faults(settings(log, isolation="thread"))
    assert check.detail.endswith(": crash of instance 0, its worker exit status 3; it "
                                 "printed nothing")
    assert check.lines == ()
    assert 'keep rkllm.isolation = "process": with "thread" a crash ends the server' in check.fix
    folder = tmp_path / "a-folder"
    folder.mkdir()
    check = check_runtime_faults(settings(folder))
    assert check.status == "WARN" and check.detail.startswith(f"cannot read {folder}: ")


def test_doctor_command_shows_the_fault(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "faults.jsonl"
    crash_and_hang(log)
    conf = tmp_path / "empty.toml"
    conf.write_text("")
    base = ["doctor", "--root", str(tmp_path / "root"), "--config", str(conf),
            "--set", f"rkllm.fault_log={log}"]
    main(base)
    out = capsys.readouterr().out
    assert f"WARN runtime faults: 1 crash and 1 hang recorded in {log}" in out
    assert "     | I rkllm: line 11\n" in out
    main([*base, "--json"])
    data = json.loads(capsys.readouterr().out)
    [check] = [c for c in data["checks"] if c["name"] == "runtime faults"]
    assert check["status"] == "WARN" and check["lines"][-1] == "I rkllm: line 11"
