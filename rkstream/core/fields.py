"""The one reader of request fields, with one wording for every refusal.

Every front end (/ws events, OpenAI, Ollama and /rkllm_chat bodies) reads
its fields through :class:`Fields`. A refusal is a ProtocolError (a
RequestError) with a code from the error table, the field's path as
``param``, and one of these sentences:

- ``{path} is required``
- ``{path} must be {expected}, not {what it is}``
- ``{path} = {value} is out of range [{low}, {high}]``
- ``{path} = {value!r} is not one of {allowed}``
- ``{path} must not be empty``
- ``{path} is {n} characters long; the most is {limit}``
- ``unknown field {path}; allowed: ...``
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

from rkstream.core.params import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, PARAM_RULES
from rkstream.errors import ProtocolError


def kind_of(value: Any) -> str:
    """What ``value`` is, in the words error messages use."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "binary"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class Fields:
    """Typed access to one object of a request; remembers which keys were read.

    Args:
        obj: the decoded object.
        where: its path in the request ("" at the top, "messages[0]", ...).
        request_id, event_id: carried by every refusal (/ws names the request).
        binary: bytes fields arrive as msgpack bin (True) or base64 text.
    """

    def __init__(self, obj: Mapping[str, Any], where: str = "", *,
                 request_id: str | None = None, event_id: str | None = None,
                 binary: bool = False) -> None:
        self.obj = obj
        self.where = where
        self.used: set[str] = set()
        self.request_id = request_id
        self.event_id = event_id
        self.binary = binary

    # -- errors ------------------------------------------------------------------
    def error(self, code: str, message: str, param: str | None = None) -> ProtocolError:
        return ProtocolError(code, message, param=param, request_id=self.request_id,
                             event_id=self.event_id)

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def wrong(self, path: str, expected: str, value: Any) -> ProtocolError:
        """``invalid_field``: the value at ``path`` is of the wrong kind."""
        return self.error("invalid_field", f"{path} must be {expected}, not {kind_of(value)}",
                          path)

    def missing(self, path: str, hint: str = "") -> ProtocolError:
        """``missing_field``: a required field is absent."""
        return self.error("missing_field", f"{path} is required{hint}", path)

    def out_of_range(self, path: str, value: Any, low: float | None, high: float | None,
                     code: str = "invalid_field") -> ProtocolError:
        lo = "-inf" if low is None else _bound(low)
        hi = "inf" if high is None else _bound(high)
        return self.error(code, f"{path} = {value} is out of range [{lo}, {hi}]", path)

    # -- reading -----------------------------------------------------------------
    def get(self, key: str, required: bool = False, hint: str = "") -> Any:
        """The raw value; None when absent or null."""
        self.used.add(key)
        value = self.obj.get(key)
        if value is None and required:
            raise self.missing(self.path(key), hint)
        return value

    def string(self, key: str, *, required: bool = False, max_chars: int | None = None,
               non_empty: bool = False) -> str | None:
        value = self.get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.wrong(self.path(key), "a string", value)
        if non_empty and not value:
            raise self.error("invalid_field", f"{self.path(key)} must not be empty",
                             self.path(key))
        if max_chars is not None and len(value) > max_chars:
            raise self.error(
                "invalid_field",
                f"{self.path(key)} is {len(value)} characters long; the most is {max_chars}",
                self.path(key))
        return value

    def choice(self, key: str, allowed: tuple[str, ...], *, required: bool = False
               ) -> str | None:
        """A string that must be one of ``allowed``."""
        value = self.string(key, required=required)
        if value is not None and value not in allowed:
            raise self.error("invalid_field", f"{self.path(key)} = {value!r} is not one of "
                             + ", ".join(allowed), self.path(key))
        return value

    def integer(self, key: str, *, required: bool = False, minimum: int | None = None,
                maximum: int | None = None, code: str = "invalid_field") -> int | None:
        """An integer; an integral float (40.0, as JavaScript may send) is taken."""
        value = self.get(key, required)
        if value is None:
            return None
        return self.to_integer(value, self.path(key), minimum, maximum, code)

    def to_integer(self, value: Any, path: str, minimum: int | None = None,
                   maximum: int | None = None, code: str = "invalid_field") -> int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong(path, "an integer", value)
        if (minimum is not None and value < minimum) or (maximum is not None
                                                         and value > maximum):
            raise self.out_of_range(path, value, minimum, maximum, code)
        return value

    def flag(self, key: str, default: bool | None = None) -> bool | None:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.wrong(self.path(key), "true or false", value)
        return value

    def mapping(self, key: str, *, required: bool = False) -> Mapping[str, Any] | None:
        value = self.get(key, required)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.wrong(self.path(key), "an object", value)
        return value

    def array(self, key: str, *, required: bool = False) -> list[Any] | None:
        value = self.get(key, required)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise self.wrong(self.path(key), "a list", value)
        return list(value)

    def blob(self, key: str, *, required: bool = False) -> bytes | None:
        """Bytes: msgpack bin, or base64 text."""
        value = self.get(key, required)
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            return self.base64(value, self.path(key), "invalid_field")
        expected = "binary (msgpack bin) or a base64 string" if self.binary \
            else "a base64 string"
        raise self.wrong(self.path(key), expected, value)

    def base64(self, text: str, path: str, code: str = "invalid_image") -> bytes:
        """Decode base64 text (white space allowed); refuse what is not base64."""
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise self.error(code, f"{path} is not valid base64", path) from None
        if not data:
            raise self.error(code, f"{path} decodes to no bytes", path)
        return data

    def child(self, obj: Any, where: str) -> Fields:
        """The reader of a nested object at ``where``; refuses a non-object."""
        if not isinstance(obj, Mapping):
            raise self.wrong(where, "an object", obj)
        return Fields(obj, where, request_id=self.request_id, event_id=self.event_id,
                      binary=self.binary)

    # -- generation parameters (PARAM_RULES) ---------------------------------------
    def param(self, key: str, name: str | None = None) -> Any:
        """The value of parameter ``name`` (default: ``key``), checked by its rule."""
        rule = PARAM_RULES[name or key]
        raw = self.get(key)
        if raw is None:
            return None
        path = self.path(key)
        if rule.kind == "stop":
            return self.stops(raw, path)
        if rule.kind == "int":
            return self.to_integer(raw, path, int(rule.low), int(rule.high), "invalid_param")
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise self.wrong(path, "a number", raw)
        if not (math.isfinite(raw) and rule.low <= raw <= rule.high):
            raise self.out_of_range(path, raw, rule.low, rule.high, "invalid_param")
        return float(raw)

    def params(self, names: Mapping[str, str]) -> dict[str, Any]:
        """Every parameter in ``names`` (client name -> Params field) that is set."""
        out: dict[str, Any] = {}
        for key, name in names.items():
            value = self.param(key, name)
            if value is not None:
                out[name] = value
        return out

    def stops(self, raw: Any, path: str) -> tuple[str, ...]:
        """One string or a list of them; empty strings mean nothing and are dropped."""
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
            raise self.wrong(path, "a string or a list of strings", raw)
        stops = tuple(s for s in items if s)
        if len(stops) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise self.error("invalid_param",
                             f"{path} may hold at most {MAX_STOP_SEQUENCES} sequences of at "
                             f"most {MAX_STOP_CHARS} characters", path)
        return stops

    # -- the end -------------------------------------------------------------------
    def finish(self, code: str = "unknown_field") -> None:
        """Refuse any key that was not read (strict dialects: /ws)."""
        extra = sorted(str(k) for k in self.obj if k not in self.used)
        if extra:
            what = "parameter" if code == "unknown_param" else "field"
            raise self.error(code, f"unknown {what} {self.path(extra[0])}; allowed: "
                             + ", ".join(sorted(self.used - {"type"})), self.path(extra[0]))
