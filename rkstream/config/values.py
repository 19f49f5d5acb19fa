"""How one setting is declared and checked: ``_opt`` and the parse hooks.

A parse hook takes a value that passed the type check and returns its
structured form (``(r, g, b)``, a tuple of origins), or raises ValueError
saying what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

from rkstream.core.keep_alive import parse_keep_alive
from rkstream.vision.presets import rgb

# A parse hook takes a value that has passed the type check and returns its
# structured form, or raises ValueError saying what is wrong with it.
Parse = Callable[[Any], Any]


def opt(default: Any, help: str, *, choices: tuple[Any, ...] | None = None,
         minimum: float | None = None, maximum: float | None = None,
         parse: Parse | None = None, allowed: str | None = None) -> Any:
    """A setting; ``allowed`` says in words what ``parse`` accepts."""
    return field(default=default, metadata={
        "help": help, "choices": choices, "min": minimum, "max": maximum,
        "parse": parse, "allowed": allowed})


def _rgb(text: str, *, std: bool) -> tuple[float, float, float] | None:
    if not text.strip():
        return None  # the preset's own
    numbers: list[float] = []
    for part in text.split(","):
        try:
            numbers.append(float(part))
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number") from None
    return rgb(numbers, std=std)  # the vision presets' own rule


def parse_mean(text: str) -> tuple[float, float, float] | None:
    """``"r,g,b"`` in 0-255 units; None for empty (the preset's)."""
    return _rgb(text, std=False)


def parse_std(text: str) -> tuple[float, float, float] | None:
    """``"r,g,b"`` above 0 and at most 255 (a division); None for empty."""
    return _rgb(text, std=True)


def _items(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if text and not items:
        # "," or " " would look set but mean "none": refuse rather than guess.
        raise ValueError("it lists nothing")
    return items


# scheme://host[:port]; a path never matches a browser's Origin header.
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]+")


def parse_origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins (a trailing / dropped), or ``*``; () for empty."""
    origins = tuple(item.rstrip("/") for item in _items(text))
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(f"{origin!r} is not an origin")
    return origins


def parse_api_keys(text: str) -> tuple[str, ...]:
    """Comma-separated keys of visible ASCII (they travel in HTTP headers and URLs)."""
    keys = _items(text)
    for key in keys:
        if not re.fullmatch(r"[!-~]+", key):
            raise ValueError("a key has a space or a character outside visible ASCII")
    return keys


# A server's name: it travels in a response header and in Prometheus labels.
_SERVER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
SERVER_ID_ALLOWED = ("1 to 64 letters, digits, '.', '_', ':' or '-' (empty = "
                     "<hostname>:<port>)")


def parse_server_id(text: str) -> str:
    """This server's name for balancers and operators; empty = the default."""
    if text and not _SERVER_ID.fullmatch(text):
        raise ValueError("it has a character other than letters, digits, '.', '_', ':' "
                         "and '-', or is longer than 64")
    return text


# A proxy's address, or a network of them (CIDR).
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TRUSTED_PROXIES_ALLOWED = ('comma-separated IP addresses or networks such as '
                           '"10.0.0.0/8,192.168.1.5" (empty = trust no one)')


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses and CIDR networks; () for empty (trust no one)."""
    networks: list[Network] = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            try:
                wider = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
            # 10.0.0.5/8 is most likely a typo: say what it would mean.
            raise ValueError(f"{item!r} has host bits set; the network is {wider}") from None
    return tuple(networks)


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_host(text: str) -> str:
    """A host name or IP address to bind; empty = every interface (as asyncio)."""
    if not text:
        return text
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if len(text) > 253 or not _HOSTNAME.fullmatch(text):
        raise ValueError("it is not a host name or IP address")
    return text


def parse_duration(text: str) -> float | None:
    """A keep-alive in seconds (inf = forever); None for empty (the default's)."""
    return parse_keep_alive(text) if text.strip() else None


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int | None:
    """Bytes from ``"6G"``, ``"512MiB"``, ``"3000"``; None for empty (automatic)."""
    if not text.strip():
        return None
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError("it is not a size")
    return int(float(found.group(1)) * _SIZE_UNITS[found.group(2).lower()])


# Model names as the APIs carry them: Ollama's "qwen2.5:7b", "library/x".
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z0-9*][A-Za-z0-9._:/+*-]{0,127}")


def parse_aliases(text: str) -> tuple[str, ...]:
    """Comma-separated model names, ``*`` matching any run of characters."""
    aliases = _items(text)
    for alias in aliases:
        if not _ALIAS.fullmatch(alias):
            raise ValueError(f"{alias!r} is not a model name or pattern")
    return aliases
DURATION_ALLOWED = ('a number of seconds or a duration such as "5m", "1h", "30s"; negative '
                    '= forever, 0 = unload after each answer')
ALIASES_ALLOWED = ('comma-separated model names such as "gpt-4o,claude-*" (* matches '
                   'anything)')
SIZE_ALLOWED = 'a size such as "6G", "512M" or a number of bytes (empty = automatic)'
ORIGINS_ALLOWED = ("comma-separated origins such as \"https://app.example,"
                    "http://localhost:3000\" (scheme://host[:port], no path), or *")
RGB_EXAMPLE = "such as \"127.5,127.5,127.5\" (empty = preset)"

