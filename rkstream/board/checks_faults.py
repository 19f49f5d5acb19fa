"""Doctor check of the runtime's recorded faults: worker crashes and hangs.

The server appends one line to the fault log each time an RKLLM worker
process crashes or is killed because its runtime hung (see
:mod:`rkstream.engines.rkllm.faults`); this check reports them, with the
latest one's exit and last output lines, so they reach the issue.
"""

from __future__ import annotations

from typing import Any

from rkstream.board.report import Check
from rkstream.config import Settings
from rkstream.engines.rkllm.faults import fault_log_path, read_faults

SHOWN_LINES = 10
"""How many of the latest fault's output lines the report quotes."""

NAME = "runtime faults"


def check_runtime_faults(settings: Settings) -> Check:
    """``rkllm.fault_log``: the worker crashes and hangs the server recorded.

    Args:
        settings: ``rkllm.fault_log`` and ``rkllm.isolation`` are used.
    """
    path = fault_log_path(settings.rkllm.fault_log)
    try:
        faults = read_faults(path)
    except OSError as exc:
        return Check(NAME, "WARN", f"cannot read {path}: {exc.strerror or exc}",
                     "make the file readable by the user running rkstream, or set "
                     "rkllm.fault_log to another file")
    except UnicodeDecodeError:
        return Check(NAME, "WARN", f"{path} is not text",
                     "delete it (the server starts a new one), or set rkllm.fault_log "
                     "to another file")
    if not faults:
        return Check(NAME, "OK", f"no runtime crash or hang recorded in {path}")
    latest = faults[-1]
    kind = str(latest.get("kind") or "fault")
    output = _output(latest)
    shown = output[-SHOWN_LINES:]
    if not output:
        said = "; it printed nothing"
    elif len(shown) < len(output):
        said = f"; its last {len(shown)} of {len(output)} output lines:"
    else:
        said = "; its last output lines:"
    detail = f"{_counts(faults)} recorded in {path}; the latest, {_latest(latest)}{said}"
    fix = _fix(kind, bool(output), settings.rkllm.isolation, str(path))
    return Check(NAME, "WARN", detail, fix, lines=shown)


def _counts(faults: list[dict[str, Any]]) -> str:
    """``1 crash and 2 hangs``."""
    crashes = sum(f.get("kind") == "crash" for f in faults)
    hangs = sum(f.get("kind") == "hang" for f in faults)
    other = len(faults) - crashes - hangs
    parts = [f"{crashes} crash{'es' if crashes != 1 else ''}" if crashes else "",
             f"{hangs} hang{'s' if hangs != 1 else ''}" if hangs else "",
             f"{other} other fault{'s' if other != 1 else ''}" if other else ""]
    parts = [p for p in parts if p]
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def _latest(fault: dict[str, Any]) -> str:
    """``2025-01-02T03:04:05+0000: crash of instance 0 (/m/q.rkllm), worker 123 killed by
    SIGSEGV``."""
    when = fault.get("time") or "at an unknown time"
    what = str(fault.get("kind") or "fault")
    instance = fault.get("instance")
    if instance is not None:
        what += f" of instance {instance}"
    if fault.get("model"):
        what += f" ({fault['model']})"
    pid = fault.get("pid")
    worker = f"worker {pid}" if pid is not None else "its worker"
    return f"{when}: {what}, {worker} {fault.get('exit') or 'ended'}"


def _output(fault: dict[str, Any]) -> tuple[str, ...]:
    output = fault.get("output")
    if not isinstance(output, list):
        return ()
    return tuple(str(line) for line in output)


def _fix(kind: str, has_output: bool, isolation: str, path: str) -> str:
    lines = ("read the runtime's lines above (RKLLM_LOG_LEVEL=2 makes it say more)"
             if has_output else "run with RKLLM_LOG_LEVEL=2 so the runtime says more")
    if kind == "hang":
        first = ("the runtime stopped producing tokens and its worker was killed: if long "
                 "prompts trip the watchdog, raise rkllm.watchdog_prefill_s or "
                 f"rkllm.watchdog_token_s; else {lines}")
    else:
        first = ("check the model was converted with the rkllm-toolkit of this runtime's "
                 f"version (RKLLM runtime above), and {lines}")
    thread = ('; keep rkllm.isolation = "process": with "thread" a crash ends the server'
              if isolation == "thread" else "")
    return (f"{first}; if it recurs, report it with this output{thread}; delete {path} "
            "once it is dealt with")
