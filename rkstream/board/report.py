"""One doctor check, and the text and JSON reports made of them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["OK", "WARN", "FAIL"]
"""OK: fine. WARN: works, but slower or only partly. FAIL: rkstream will not run as set up."""

STATUSES: tuple[Status, ...] = ("OK", "WARN", "FAIL")


@dataclass(frozen=True)
class Check:
    """The outcome of one doctor check.

    Attributes:
        name: what was checked, e.g. ``"NPU driver"``.
        status: ``"OK"``, ``"WARN"`` or ``"FAIL"``.
        detail: what was found, in one line.
        fix: what to do about a WARN or FAIL; empty for OK.
        lines: text quoted under the detail as it was found, e.g. a runtime's
            last output lines; empty for most checks.
    """

    name: str
    status: Status
    detail: str
    fix: str = ""
    lines: tuple[str, ...] = ()


def worst(statuses: Sequence[Status]) -> Status:
    """Return the most severe of ``statuses`` (OK if there are none)."""
    return max(statuses, key=STATUSES.index, default="OK")


def summary(checks: Sequence[Check]) -> dict[Status, int]:
    """Count the checks of each status."""
    return {status: sum(c.status == status for c in checks) for status in STATUSES}


def render_text(checks: Sequence[Check]) -> str:
    """Render checks as the text report ``rkstream doctor`` prints.

    One line per check (``OK   name: detail``), its quoted ``lines`` (each
    indented after ``| ``), an indented ``fix:`` line under each WARN and
    FAIL, then a summary line.

    Args:
        checks: the checks, in report order.

    Returns:
        The report, ending with a newline.
    """
    lines: list[str] = []
    for check in checks:
        lines.append(f"{check.status:<4} {check.name}: {check.detail}")
        lines += [f"     | {line}" for line in check.lines]
        if check.status != "OK" and check.fix:
            lines.append(f"     fix: {check.fix}")
    counts = summary(checks)
    verdict = ("rkstream will not run as configured" if counts["FAIL"]
               else "ready, with warnings" if counts["WARN"] else "ready")
    lines.append(f"summary: {counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL"
                 f" ({verdict})")
    return "\n".join(lines) + "\n"


def render_json(checks: Sequence[Check]) -> str:
    """Render checks as JSON: ``{"checks": [...], "summary": {"OK": n, ...}}``.

    Args:
        checks: the checks, in report order.

    Returns:
        Indented JSON text; each check has name, status, detail, fix and lines
        (a list, empty for most checks).
    """
    return json.dumps({"checks": [asdict(c) for c in checks], "summary": summary(checks)},
                      indent=2, ensure_ascii=False)
