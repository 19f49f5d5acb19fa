"""What the embeddings endpoints of every API share: reading ``input`` and asking
the named model (loaded first if need be), counted in /metrics under the API's
label.

There is no queue: the engine serialises embeddings on its own owner thread,
apart from generation. An RKLLM model takes its turn on the NPU first, as a
generation would (:class:`~rkstream.core.npu_gate.NpuGate`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rkstream.core.fields import Fields
from rkstream.engines.base import Embeddings, EmbedInput
from rkstream.errors import RequestError
from rkstream.server.state import AppState, ready

EmbedItem = EmbedInput


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_input(f: Fields, key: str, *, tokens: bool, required: bool = True
               ) -> list[EmbedItem] | None:
    """``key`` as a list of inputs: a string, a list of strings, and (``tokens``) a
    list of token ids or a list of such lists. None when absent and not required.

    Raises:
        RequestError: ``missing_field``, ``invalid_field`` (wrong kind, an empty
            list or text).
    """
    raw = f.get(key, required)
    path = f.path(key)
    if raw is None:
        return None
    expected = ("a string, a list of strings, a list of token ids or a list of token-id "
                "lists" if tokens else "a string or a list of strings")
    if isinstance(raw, str):
        items: list[EmbedItem] = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise f.error("invalid_field", f"{path} must not be empty", path)
        if tokens and all(_is_token(v) for v in raw):
            items = [list(raw)]
        else:
            items = []
            for index, value in enumerate(raw):
                if isinstance(value, str):
                    items.append(value)
                elif tokens and isinstance(value, list) and all(_is_token(v) for v in value):
                    items.append(list(value))
                else:
                    raise f.wrong(f"{path}[{index}]", "a string" + (
                        " or a list of token ids" if tokens else ""), value)
    else:
        raise f.wrong(path, expected, raw)
    for index, item in enumerate(items):
        if not item:
            raise f.error("invalid_field", f"{path}[{index}] must not be empty; send some "
                          "text to embed", path)
    return items


@dataclass(frozen=True)
class Embedded:
    """The vectors, the model that made them, and how long its load took."""

    result: Embeddings
    model: str
    load_ms: float


async def embed(state: AppState, api: str, model: str | None, items: list[EmbedItem],
                keep_alive_s: float | None = None) -> Embedded:
    """``model``'s vectors for ``items`` (no items: only load it), counted as one
    request of ``api``.

    Raises:
        RequestError: ``model_not_found``, ``model_load_failed``,
            ``embeddings_unsupported`` (the engine gives none, or takes no token
            ids), ``context_overflow``.
    """
    pool = ready(state)
    lease = await pool.acquire(model, keep_alive_s)
    try:
        engine = lease.model.engine
        if not items:
            return Embedded(Embeddings([], 0), lease.model.name, lease.load_ms)
        try:
            if engine.info.engine == "rkllm":
                async with pool.gate.hold(lease.model.name):
                    result = await engine.embed_inputs(items)
            else:
                result = await engine.embed_inputs(items)
        except RequestError:
            state.metrics.requests.labels(api, "failed").inc()
            raise
        state.metrics.requests.labels(api, "completed").inc()
        return Embedded(result, lease.model.name, lease.load_ms)
    finally:
        lease.release()
