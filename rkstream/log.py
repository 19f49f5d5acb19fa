"""Every logger rkstream writes to, one per concern, and how the CLI sets them up.

rkstream configures logging only in the CLI entry point (:func:`configure`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

server_log = logging.getLogger("rkstream.server")
ws_log = logging.getLogger("rkstream.ws")
engine_log = logging.getLogger("rkstream.engine")
native_log = logging.getLogger("rkstream.native")
scheduler_log = logging.getLogger("rkstream.scheduler")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the error)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level``, as plain text or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def capture_native_stdout() -> None:
    """Send what native libraries print on stdout (the runtime's version and
    memory lines) to the ``rkstream.native`` logger, one record per line.

    File descriptor 1 is replaced by a pipe read by a daemon thread. C stdio
    buffers a pipe, so a runtime that does not flush shows its lines late.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    os.dup2(write_fd, 1)
    os.close(write_fd)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    native_log.info("%s", line)

    threading.Thread(target=pump, name="native-stdout", daemon=True).start()
