"""Ollama's keep_alive: seconds or Go durations, negative = keep, 0 = unload."""

from __future__ import annotations

import math

import pytest

from rkstream.core.keep_alive import describe_keep_alive, parse_keep_alive


@pytest.mark.parametrize(("value", "seconds"), [
    (0, 0.0), ("0", 0.0), ("0s", 0.0), (300, 300.0), (2.5, 2.5), ("300", 300.0),
    ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5h", 5400.0), ("10s", 10.0),
    (-1, math.inf), ("-1m", math.inf), ("-5", math.inf),
])
def test_what_ollama_accepts(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "m", "5x", "1h-2m", True, None, [5],
                                   float("nan"), {"s": 1}])
def test_anything_else_is_refused_with_what_is_accepted(value: object) -> None:
    with pytest.raises(ValueError) as refused:
        parse_keep_alive(value)
    assert "duration" in str(refused.value)


def test_it_reads_for_people() -> None:
    assert describe_keep_alive(math.inf) == "forever"
    assert describe_keep_alive(300) == "5 min"
    assert describe_keep_alive(0).startswith("0 s")
    assert describe_keep_alive(45) == "45 s"
