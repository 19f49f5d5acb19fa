"""What the HTTP dialects read alike: token budgets, roles and images.

(The body itself is read by :func:`rkstream.server.http.runner.read_body`;
every field check is :class:`rkstream.core.fields.Fields`.)
"""

from __future__ import annotations

from typing import Any, cast

from rkstream.core.fields import Fields
from rkstream.core.messages import ROLES, Role


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


def data_url(f: Fields, url: str, param: str) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URL; http(s) URLs are refused."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        raise f.error("remote_image_url", "remote image URLs are not fetched; send the image "
                      "as a base64 data URL (data:image/jpeg;base64,...)", param)
    head, sep, data = url.partition(",")
    if scheme != "data" or not sep:
        raise f.error("invalid_image",
                      f"{param} must be a data: URL (data:image/jpeg;base64,...)", param)
    media_type, *options = head[5:].split(";")
    if "base64" not in options:
        raise f.error("invalid_image",
                      f"{param} must be base64 data (data:image/...;base64,...)", param)
    if media_type and not media_type.lower().startswith("image/"):
        raise f.error("unsupported_image_format", f"{param} holds {media_type}, not an image",
                      param)
    # The vision step reads the format from the bytes; clients mislabel it.
    return f.base64(data, param)


def image_base64(f: Fields, value: Any, path: str) -> bytes:
    """A base64 image (optionally a ``data:`` URL); its bytes are checked later."""
    if not isinstance(value, str) or not value.strip():
        raise f.wrong(path, "a non-empty base64 string", value)
    if value.startswith("data:"):
        value = value.partition(",")[2]
    return f.base64(value, path)
