"""Concrete sampling settings: server defaults, then each layer of params on top."""

from __future__ import annotations

from ..config import Settings
from ..engines.base import SamplingSettings
from ..errors import ProtocolError
from ..protocol.events import Params


def effective_sampling(settings: Settings, *layers: Params, event_id: str | None = None,
                       request_id: str | None = None) -> SamplingSettings:
    """Lay ``layers`` (first = lowest) over the [sampling] defaults.

    Raises:
        ProtocolError: ``invalid_param`` when max_tokens is above limits.max_tokens.
    """
    d = settings.sampling
    merged = Params(max_tokens=d.max_tokens, temperature=d.temperature, top_p=d.top_p,
                    top_k=d.top_k, repeat_penalty=d.repeat_penalty,
                    frequency_penalty=d.frequency_penalty,
                    presence_penalty=d.presence_penalty, stop=())
    for layer in layers:
        merged = layer.over(merged)
    cap = settings.limits.max_tokens
    max_tokens = merged.max_tokens if merged.max_tokens is not None else d.max_tokens
    if max_tokens > cap:
        raise ProtocolError(
            "invalid_param",
            f"params.max_tokens = {max_tokens} is above this server's limit of {cap}",
            param="params.max_tokens", event_id=event_id, request_id=request_id)

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    return SamplingSettings(
        max_tokens=max_tokens,
        temperature=pick(merged.temperature, d.temperature),
        top_p=pick(merged.top_p, d.top_p),
        top_k=int(pick(merged.top_k, d.top_k)),
        repeat_penalty=pick(merged.repeat_penalty, d.repeat_penalty),
        frequency_penalty=pick(merged.frequency_penalty, d.frequency_penalty),
        presence_penalty=pick(merged.presence_penalty, d.presence_penalty),
        stop=merged.stop or ())
