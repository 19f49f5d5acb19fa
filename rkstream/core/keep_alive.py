"""How long a model stays loaded after its last request: Ollama's ``keep_alive``.

The value is a number of seconds or a Go-style duration ("5m", "1h30m",
"250ms", "0"); anything negative means "keep it loaded", and 0 means
"unload as soon as the request is answered". Internally it is seconds as a
float, ``math.inf`` for forever.
"""

from __future__ import annotations

import math
import re

FOREVER = math.inf

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_EXAMPLES = 'a number of seconds, or a duration such as "5m", "1h30m" or "30s" (negative = ' \
            'keep loaded, 0 = unload after the answer)'


def parse_keep_alive(value: object) -> float:
    """Seconds to keep a model loaded (``math.inf`` = forever).

    Accepts what Ollama accepts: a JSON number (seconds), or a duration string
    with units; plus a bare number in a string ("300"), which Ollama's own
    environment variable takes too.

    Raises:
        ValueError: saying what is accepted.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"keep_alive must be {_EXAMPLES}")
    if isinstance(value, str):
        seconds = _duration(value.strip())
    else:
        seconds = float(value)
        if math.isnan(seconds):
            raise ValueError(f"keep_alive must be {_EXAMPLES}")
    return FOREVER if seconds < 0 else seconds


def _duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # "300": seconds
    except ValueError:
        pass
    if body == "0":
        return 0.0
    total, at = 0.0, 0
    for match in _PART.finditer(body):
        if match.start() != at:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        at = match.end()
    if not body or at != len(body):
        raise ValueError(f"keep_alive {text!r} is not a duration; use {_EXAMPLES}")
    return sign * total


def describe_keep_alive(seconds: float) -> str:
    """For people: "forever", "0 s (unload after each answer)", "5 min"."""
    if seconds == FOREVER:
        return "forever"
    if seconds == 0:
        return "0 s (unload after each answer)"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
