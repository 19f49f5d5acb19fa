"""Conversation keys: what a load balancer hashes on to send every turn of a
conversation to the board whose KV cache holds it (docs/deploy/README.md).

A key is 1 to 128 letters, digits, ``-``, ``.``, ``_`` or ``~`` (the characters a
URL never percent-encodes), the same rule as the server's: a balancer copies
``?conversation=`` into a header as it is, so an encoded key would differ from
the decoded one. A UUID per conversation is the usual choice. On /ws it travels
as ``?conversation=<key>``.
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

PARAM = "conversation"
MAX_KEY_CHARS = 128
_KEY = re.compile(r"[A-Za-z0-9._~-]{1,128}")


def new_conversation_key() -> str:
    """A fresh conversation key: a random UUID as 32 hex digits."""
    return uuid.uuid4().hex


def check_conversation_key(key: str) -> str:
    """Return ``key`` if the server would take it.

    Raises:
        ValueError: the key is empty, longer than 128 characters, or has another
            character than a letter, a digit, ``-``, ``.``, ``_`` or ``~``.
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
        bad = next(c for c in key if not _KEY.fullmatch(c))
        why = f"it has {bad!r} at {key.index(bad)}"
    raise ValueError(f"a conversation key is 1 to {MAX_KEY_CHARS} URL-safe characters "
                     f"(letters, digits, '-', '.', '_', '~'), such as new_conversation_key(); "
                     f"{why}")


def conversation_in(url: str) -> str | None:
    """The ``?conversation=`` a URL carries already (None: none)."""
    found = [v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)
             if k == PARAM]
    return found[-1] if found else None


def with_conversation(url: str, key: str | None) -> str:
    """``url`` with its ``?conversation=`` set to ``key`` (None: taken out); other
    query parameters are kept (and percent-encoded as needed; a key needs none)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != PARAM]
    if key is not None:
        query.append((PARAM, key))
    return urlunsplit((parts.scheme, parts.netloc, parts.path,
                       urlencode(query, quote_via=quote, safe=""), ""))
