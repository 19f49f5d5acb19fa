"""Generation parameters: the one table of their rules, what a request asks for,
and the concrete settings a run uses.

:data:`PARAM_RULES` is the only place a sampling field is defined: its kind,
its range and what it means. Every front end (/ws, OpenAI, Ollama, the demo's
/rkllm_chat) reads its values through :meth:`rkstream.core.fields.Fields.param`,
so a new parameter is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, Protocol

from rkstream.errors import ProtocolError

MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class ParamRule:
    """How one generation parameter is checked and documented."""

    kind: Literal["int", "float", "stop"]
    low: float
    high: float
    description: str


PARAM_RULES: dict[str, ParamRule] = {
    "max_tokens": ParamRule("int", 1, 1 << 31, "most tokens to generate; the default is "
                            "[sampling] max_tokens, the most limits.max_tokens"),
    "temperature": ParamRule("float", 0.0, 5.0, "sampling temperature (0 = greedy)"),
    "top_p": ParamRule("float", 0.0, 1.0, "nucleus sampling mass"),
    "top_k": ParamRule("int", 0, 1 << 20, "sample from the k likeliest tokens (0 = off)"),
    "repeat_penalty": ParamRule("float", 0.0, 10.0, "penalty on repeated tokens (1 = off)"),
    "frequency_penalty": ParamRule("float", -2.0, 2.0, "penalty by how often a token came"),
    "presence_penalty": ParamRule("float", -2.0, 2.0, "penalty on any token that came"),
    "stop": ParamRule("stop", 0, MAX_STOP_SEQUENCES,
                      f"up to {MAX_STOP_SEQUENCES} strings of at most {MAX_STOP_CHARS} "
                      "characters that end the answer (not included in it)"),
}


# The sampling fields HTTP dialects name as Params does; each reads max_tokens its own way.
SAMPLING_FIELDS = {name: name for name in PARAM_RULES if name != "max_tokens"}


@dataclass(frozen=True)
class Params:
    """Generation parameters; None means "use the session or server default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] | None = None

    def over(self, base: Params) -> Params:
        """Return ``base`` with every field this object sets taking precedence."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class SamplingSettings:
    """Concrete generation settings of one request (defaults already applied)."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    frequency_penalty: float
    presence_penalty: float
    stop: tuple[str, ...] = ()


class SamplingDefaults(Protocol):
    """The server's defaults (config's [sampling] section has these fields)."""

    @property
    def max_tokens(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def top_k(self) -> int: ...
    @property
    def repeat_penalty(self) -> float: ...
    @property
    def frequency_penalty(self) -> float: ...
    @property
    def presence_penalty(self) -> float: ...


def effective_sampling(defaults: SamplingDefaults, cap: int, *layers: Params,
                       path: str = "max_tokens", event_id: str | None = None,
                       request_id: str | None = None) -> SamplingSettings:
    """Lay ``layers`` (first = lowest) over the server's defaults.

    Args:
        path: how the request names max_tokens, for the error message.

    Raises:
        ProtocolError: ``invalid_param`` when max_tokens is above ``cap``
            (limits.max_tokens).
    """
    merged = Params()
    for layer in layers:
        merged = layer.over(merged)
    max_tokens = merged.max_tokens if merged.max_tokens is not None else defaults.max_tokens
    if max_tokens > cap:
        raise ProtocolError(
            "invalid_param",
            f"{path} = {max_tokens} is above this server's limit of {cap} (limits.max_tokens)",
            param=path, event_id=event_id, request_id=request_id)

    values = {name: getattr(merged, name) for name in PARAM_RULES}
    for name, value in values.items():
        if value is None and name != "stop":
            values[name] = getattr(defaults, name)
    values["max_tokens"] = max_tokens
    values["stop"] = merged.stop or ()
    return SamplingSettings(**values)
