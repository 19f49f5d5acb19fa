"""Embeddings on llama.cpp: a second ``Llama`` on the same GGUF, in embedding mode.

The generation context cannot give pooled embeddings, so a second context is
opened with ``embedding=True`` on first use, on an owner thread of its own
(never touched by generation); requests are serialised on that thread. Pooling
is the model's own (``<arch>.pooling_type`` in the GGUF: mean, cls or last);
a model that declares none (a chat model such as SmolLM2) is mean-pooled.
Every vector is L2-normalised.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rkstream.config import LlamaCppSettings
from rkstream.core.embeddings import l2_normalised
from rkstream.core.owner import OwnerThread
from rkstream.engines.base import Embeddings, EmbedInput
from rkstream.errors import EngineInitError, RequestError
from rkstream.log import engine_log

# A text, or token ids given as they are.


class LlamaEmbedder:
    """Owns the embedding-mode ``Llama`` through one thread.

    Args:
        settings: the [llamacpp] settings (threads).
        model_path: the GGUF file.
        n_ctx: the longest input, in tokens (the generation context's size).
        metadata: the GGUF's key/values (its pooling type).
    """

    def __init__(self, settings: LlamaCppSettings, model_path: Path, n_ctx: int,
                 metadata: dict[str, str]) -> None:
        self.metadata = metadata
        self.settings = settings
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_embd = 0
        self.pooling = ""
        self._owner = OwnerThread("llama-embed")
        self._llm: Any = None
        self._started = False

    def _load_sync(self) -> None:
        import llama_cpp

        started = time.perf_counter()
        try:
            arch = self.metadata.get("general.architecture", "")
            declared = self.metadata.get(f"{arch}.pooling_type")
            pooling = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if declared not in (
                None, "0") else llama_cpp.LLAMA_POOLING_TYPE_MEAN
            llm = llama_cpp.Llama(
                model_path=str(self.model_path), embedding=True, n_ctx=self.n_ctx,
                n_batch=self.n_ctx, n_ubatch=self.n_ctx, pooling_type=pooling,
                n_threads=self.settings.n_threads or None, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise EngineInitError(f"llama.cpp could not open {self.model_path} for "
                                  f"embeddings: {exc}") from None
        self._llm = llm
        self.n_embd = llm.n_embd()
        names: dict[int, str] = {llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean",
                                 llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
                                 llama_cpp.LLAMA_POOLING_TYPE_LAST: "last"}
        kind = int(llm.pooling_type())
        self.pooling = names.get(kind, str(kind))
        engine_log.info("embedding context for %s opened in %.0f ms (%s pooling, width %d)",
                        self.model_path.name, (time.perf_counter() - started) * 1000,
                        self.pooling, self.n_embd)

    def _tokens(self, item: EmbedInput, index: int) -> list[int]:
        llm = self._llm
        if isinstance(item, str):
            if not item:
                raise RequestError("invalid_field", f"input[{index}] is an empty string; "
                                   "send some text to embed", param="input")
            tokens = list(llm.tokenize(item.encode(), add_bos=True, special=False))
        else:
            if not item:
                raise RequestError("invalid_field", f"input[{index}] is an empty token list; "
                                   "send at least one token id", param="input")
            n_vocab = llm.n_vocab()
            bad = [t for t in item if not 0 <= t < n_vocab]
            if bad:
                raise RequestError("invalid_field", f"input[{index}] holds token id {bad[0]}, "
                                   f"outside this model's vocabulary [0, {n_vocab - 1}]",
                                   param="input")
            tokens = list(item)
        if len(tokens) > self.n_ctx:
            raise RequestError("context_overflow", f"input[{index}] is {len(tokens)} tokens, "
                               f"but this model embeds at most {self.n_ctx}; shorten it")
        return tokens

    def _embed_sync(self, items: list[EmbedInput]) -> Embeddings:
        import llama_cpp

        if self._llm is None:
            self._load_sync()
        llm = self._llm
        batches = [self._tokens(item, i) for i, item in enumerate(items)]  # check all first
        vectors: list[list[float]] = []
        for tokens in batches:
            llm._batch.reset()
            llm._batch.add_sequence(tokens, 0, True)
            llm._ctx.kv_cache_clear()
            llm._ctx.decode(llm._batch)
            pointer = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0)
            vectors.append(l2_normalised(np.ctypeslib.as_array(pointer, shape=(self.n_embd,))))
        llm._batch.reset()
        llm._ctx.kv_cache_clear()
        return Embeddings(vectors=vectors, tokens=sum(map(len, batches)))

    async def embed(self, items: list[EmbedInput]) -> Embeddings:
        """One L2-normalised vector per input, in order (the context opens on first use).

        Raises:
            RequestError: ``invalid_field`` (empty input, a token id outside the
                vocabulary) or ``context_overflow``.
        """
        if not self._started:
            self._owner.start()
            self._started = True
        return await self._owner.call(lambda: self._embed_sync(items))

    def _close_sync(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    async def close(self) -> None:
        if self._started:
            await self._owner.stop(self._close_sync)
