"""Conversation keys: what a load balancer hashes on to send every turn of a
conversation to the board whose KV cache holds it (docs/deploy/README.md).

A key is 1 to 128 visible ASCII characters (``!`` to ``~``: no space, no control
or non-ASCII character), the same rule as the server's; a UUID per conversation
is the usual choice. On /ws it travels as ``?conversation=<key>``.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

PARAM = "conversation"
MAX_KEY_CHARS = 128
_KEY = re.compile(r"[!-~]{1,128}")


def new_conversation_key() -> str:
    """A fresh conversation key: a random UUID as 32 hex digits."""
    return uuid.uuid4().hex


def check_conversation_key(key: str) -> str:
    """Return ``key`` if the server would take it.

    Raises:
        ValueError: the key is empty, longer than 128 characters, or has a space, a
            control character or a non-ASCII character.
        TypeError: the key is not a str.
    """
    if not isinstance(key, str):
        raise TypeError(f"a conversation key is a str, not {type(key).__name__}")
    if _KEY.fullmatch(key):
        return key
    if not key:
        why = "it is empty"
    elif len(key) > MAX_KEY_CHARS:
        why = f"it has {len(key)}"
    else:
        bad = next(c for c in key if not "!" <= c <= "~")
        why = f"it has {bad!r} at {key.index(bad)}"
    raise ValueError(f"a conversation key is 1 to {MAX_KEY_CHARS} visible ASCII characters "
                     f"without spaces, such as new_conversation_key(); {why}")


def conversation_in(url: str) -> str | None:
    """The ``?conversation=`` a URL carries already (None: none)."""
    found = [v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)
             if k == PARAM]
    return found[-1] if found else None


def with_conversation(url: str, key: str | None) -> str:
    """``url`` with its ``?conversation=`` set to ``key`` (None: taken out); other
    query parameters are kept. The key is percent-encoded (``&``, ``#``, ``+``...)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != PARAM]
    if key is not None:
        query.append((PARAM, key))
    return urlunsplit((parts.scheme, parts.netloc, parts.path,
                       urlencode(query, quote_via=quote, safe=""), ""))
