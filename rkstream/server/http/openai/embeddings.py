"""``POST /v1/embeddings``: OpenAI embeddings from the model ``model`` names
(the default when it names none; an unknown name is 404 ``model_not_found``).

``input`` is a string, a list of strings, a list of token ids or a list of
such lists (token ids on llama.cpp only); ``encoding_format`` ``float`` or
``base64`` (little-endian float32 bytes); ``dimensions`` is refused with
``embeddings_unsupported`` unless it is the model's own size; ``user`` is
accepted. Vectors are L2-normalised.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from aiohttp import web

from rkstream.errors import RequestError
from rkstream.server.http.embed_input import embed, read_input
from rkstream.server.http.runner import read_body
from rkstream.server.state import STATE


def _encode(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


async def embeddings(request: web.Request) -> web.Response:
    """``POST /v1/embeddings``."""
    state = request.app[STATE]
    f = await read_body(request)
    model = f.string("model")
    items = read_input(f, "input", tokens=True)
    assert items is not None
    fmt = f.choice("encoding_format", ("float", "base64")) or "float"
    dimensions = f.integer("dimensions", minimum=1)
    f.string("user")
    embedded = await embed(state, "openai_embeddings", model, items)
    result = embedded.result
    size = len(result.vectors[0]) if result.vectors else 0
    if dimensions is not None and dimensions != size:
        raise RequestError("embeddings_unsupported",
                           f"dimensions = {dimensions} cannot be honoured: this model's "
                           f"embeddings have {size} dimensions and are not shortened; send "
                           f"{size} or leave dimensions out", param="dimensions")
    data: list[dict[str, Any]] = [
        {"object": "embedding", "index": index, "embedding": _encode(vector, fmt)}
        for index, vector in enumerate(result.vectors)]
    return web.json_response({
        "object": "list", "data": data, "model": model or embedded.model,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens}})
