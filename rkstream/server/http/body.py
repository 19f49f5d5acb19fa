"""What the Ollama and /rkllm_chat dialects read alike: token budgets and roles.

(The body itself is read by :func:`rkstream.server.http.runner.read_body`;
every field check is :class:`rkstream.core.fields.Fields`.)
"""

from __future__ import annotations

from typing import Any, cast

from rkstream.core.fields import Fields
from rkstream.core.messages import ROLES, Role
from rkstream.core.params import PARAM_RULES

# The sampling fields these dialects name as Params does (max_tokens is read apart).
SAMPLING = {name: name for name in PARAM_RULES if name != "max_tokens"}


def token_budget(f: Fields, key: str, cap: int) -> int | None:
    """A max-token count, clamped to the server's cap (``limits.max_tokens``).

    Clamping, not refusing, because Ollama-style clients send large values
    meaning "as much as you can"; done_reason "length" tells them it ended
    there. A negative count (Ollama's -1, -2) means the server default.
    """
    raw = f.get(key)
    if raw is None:
        return None
    count = f.to_integer(raw, f.path(key), code="invalid_param")
    if count < 0:
        return None
    if count < 1:
        raise f.out_of_range(f.path(key), count, 1, None, "invalid_param")
    return min(count, cap)


def message_role(m: Fields) -> Role:
    """The role of one message object."""
    return cast(Role, m.choice("role", ROLES, required=True))


def image_base64(f: Fields, value: Any, path: str) -> bytes:
    """A base64 image (optionally a ``data:`` URL); its bytes are checked later."""
    if not isinstance(value, str) or not value.strip():
        raise f.wrong(path, "a non-empty base64 string", value)
    if value.startswith("data:"):
        value = value.partition(",")[2]
    return f.base64(value, path)
