"""Ollama's ``keep_alive`` field and its empty requests (load or unload a model)."""

from __future__ import annotations

from rkstream.core.fields import Fields
from rkstream.core.keep_alive import parse_keep_alive


def read_keep_alive(f: Fields) -> float | None:
    """The request's ``keep_alive`` in seconds (inf = keep), None when absent.

    Raises:
        RequestError: ``invalid_field``, saying what is accepted.
    """
    raw = f.get("keep_alive")
    if raw is None:
        return None
    try:
        return parse_keep_alive(raw)
    except ValueError as exc:
        raise f.error("invalid_field", str(exc), "keep_alive") from None


def empty_request(f: Fields, chat: bool) -> bool:
    """No prompt and no messages: Ollama's way to load or unload a model."""
    if chat:
        return not f.get("messages")
    return not f.get("prompt") and not f.get("images")
