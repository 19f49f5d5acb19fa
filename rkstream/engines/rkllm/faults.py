"""The runtime's faults, kept on disk for ``rkstream doctor``.

Each crash or hang of a worker appends one JSON line (when, which instance
and model, how the worker ended, its last output lines); the file keeps the
latest :data:`KEEP`. A server that cannot write it only logs a warning.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rkstream.log import engine_log
from rkstream.resources import cache_dir

KEEP = 20
FILE_NAME = "runtime_faults.jsonl"


def fault_log_path(configured: str = "") -> Path:
    """``rkllm.fault_log``, or the default in the cache folder."""
    return Path(configured).expanduser() if configured else cache_dir() / FILE_NAME


def record_fault(path: Path, *, kind: str, instance: int, model: str, exit: str,
                 pid: int | None, output: tuple[str, ...]) -> None:
    """Append one fault to ``path``, keeping the last :data:`KEEP`."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kind": kind,
             "instance": instance, "model": model, "exit": exit, "pid": pid,
             "output": list(output)}
    try:
        lines = read_lines(path)[-(KEEP - 1):] + [json.dumps(entry)]
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(path)
    except OSError as exc:
        engine_log.warning("cannot record the fault in %s: %s", path, exc)


def read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def read_faults(path: Path) -> list[dict[str, Any]]:
    """The recorded faults, oldest first; lines that are not JSON objects are skipped."""
    faults = []
    for line in read_lines(path):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            faults.append(entry)
    return faults
