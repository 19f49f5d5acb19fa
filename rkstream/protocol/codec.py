"""Bytes on the wire <-> event maps, for both encodings of protocol v1.

Binary messages are msgpack, text messages are JSON. Decoding refuses what
a client could use to smuggle objects in (ext types, non-string keys).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import msgpack

from rkstream.errors import ProtocolError

Encoding = Literal["msgpack", "json"]


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not accepted")


def decode_binary(data: bytes) -> Any:
    """Decode one binary WebSocket message (one msgpack object)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(
            "invalid_encoding",
            f"a binary message must be one msgpack map ({type(exc).__name__}: {exc})",
        ) from None


def decode_text(text: str) -> Any:
    """Decode one text WebSocket message (one JSON object)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(
            "invalid_encoding", f"a text message must be one JSON object ({exc})"
        ) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode(event: dict[str, Any], encoding: Encoding) -> bytes | str:
    """Encode a server event: bytes for msgpack, str for JSON."""
    if encoding == "msgpack":
        return msgpack.packb(event, use_bin_type=True)  # type: ignore[no-any-return]
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=_json_default)
