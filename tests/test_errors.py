"""The one error table: complete, consistent, and the same as the docs."""

from __future__ import annotations

import ast
from pathlib import Path

from rkstream.errors import ERRORS, QueueFullError, RequestError, VisionError, error_spec

REPO = Path(__file__).resolve().parent.parent


def _row(code: str) -> str:
    s = ERRORS[code]
    retry = "" if s.retry_after_s is None else str(s.retry_after_s)
    kind = "server" if s.server_side else "client"
    return f"| `{code}` | {s.status} | {kind} | {retry} | {s.meaning} |"


def test_docs_list_exactly_the_table() -> None:
    doc = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `")
            and line.count("|") == 6]
    assert rows == [_row(code) for code in ERRORS]


def _codes_raised_in_the_package() -> set[str]:
    """Every string literal passed as the first argument of a RequestError-like call."""
    names = {"RequestError", "ProtocolError", "VisionError", "error"}
    found: set[str] = set()
    for path in (REPO / "rkstream").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in names and isinstance(first, ast.Constant) and isinstance(
                    first.value, str) and "_" in first.value and " " not in first.value:
                found.add(first.value)
    return found


def test_every_code_the_server_raises_is_in_the_table() -> None:
    missing = _codes_raised_in_the_package() - set(ERRORS) - {"http_error"}
    assert not missing, f"add these codes to rkstream/errors.py ERRORS: {sorted(missing)}"


def test_type_status_and_retry_come_from_the_table() -> None:
    assert QueueFullError(3).error_type == "server_error"
    assert QueueFullError(3).spec.status == 429 and QueueFullError(3).spec.retry_after_s == 1
    assert VisionError("encoder_error", "x").error_type == "server_error"
    assert VisionError("invalid_image", "x").error_type == "invalid_request_error"
    assert RequestError("model_loading", "x").spec.status == 503
    assert error_spec("no_such_code").status == 400
    for code, spec in ERRORS.items():
        assert spec.meaning, code
        assert spec.server_side == (spec.status >= 500 or code in (
            "queue_full", "model_loading", "shutting_down")), code
