"""The CPU engine: ``instances`` llama.cpp models, one owner thread each."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
from dataclasses import replace

from rkstream.chat.format import ChatFormat, model_format, resolve_chat_format
from rkstream.chat.grammar import call_grammar
from rkstream.chat.output import Markup
from rkstream.config import Settings
from rkstream.core.request import Tool
from rkstream.engines.base import Embeddings, EmbedInput, InstanceEngine, ModelInfo
from rkstream.engines.llamacpp.embedder import LlamaEmbedder
from rkstream.engines.llamacpp.instance import LlamaInstance
from rkstream.engines.llamacpp.model import resolve_model
from rkstream.engines.llamacpp.threads import default_threads
from rkstream.log import engine_log


class LlamaCppEngine(InstanceEngine):
    """A GGUF model run by llama.cpp on the CPU (no NPU needed)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self._format: ChatFormat | None = None
        self._embedder: LlamaEmbedder | None = None

    @property
    def chat_format(self) -> ChatFormat | None:
        """rkstream's renderer only when ``[chat] template`` is set; else the GGUF's own
        template, applied by the instance."""
        return self._format

    def call_grammar(self, markup: Markup, tools: tuple[Tool, ...]) -> str | None:
        """llama.cpp samples under a grammar; one tool's arguments follow its schema."""
        arguments = None
        if len(tools) == 1 and tools[0].parameters:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            try:
                rules = json_schema_to_gbnf(json.dumps(tools[0].parameters))
            except Exception as exc:  # a schema it cannot translate: any object then
                engine_log.warning("tool %s: its parameters schema gives no grammar (%s); "
                                   "any JSON object is allowed", tools[0].name, exc)
            else:
                arguments = re.sub(r"^root\s*::=", "tool-args ::=", rules, flags=re.M)
        return call_grammar(markup, tuple(t.name for t in tools), arguments)

    async def count_tokens(self, text: str) -> tuple[int, bool]:
        """Exact: the model's own tokenizer, off the loop and off the owner thread
        (which may be busy generating for a long time; see LlamaInstance.count_tokens)."""
        instance = self._instances[0]
        assert isinstance(instance, LlamaInstance)
        count = await asyncio.get_running_loop().run_in_executor(
            None, instance.count_tokens, text)
        return count, True

    async def load(self) -> None:
        """Find the model, then load each instance on its owner thread.

        Raises:
            ModelFileError: no usable GGUF file.
            EngineInitError: llama-cpp-python is missing or cannot load the file.
        """
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, resolve_model, self._settings.llamacpp.model)
        chat = self._settings.chat
        if chat.template:
            self._format, reason = resolve_chat_format(chat.template, chat.family, str(model))
            engine_log.info("chat format: %s", reason)
        llama = self._settings.llamacpp
        if llama.n_threads == 0:
            llama = replace(llama, n_threads=default_threads(self._settings.instances))
            engine_log.info("llama.cpp decodes on %d threads per instance", llama.n_threads)
        for index in range(self._settings.instances):
            instance = LlamaInstance(llama, model, index)
            self._instances.append(instance)
            await instance.load()
        first = self._instances[0]
        if self._format is None and chat.family != "none" and isinstance(first, LlamaInstance) \
                and first.gguf_template is not None:
            # rkstream renders with the file's own template, so tools and reasoning
            # work as on RKLLM; the instance's own formatter stays the fallback.
            self._format, reason = model_format(*first.gguf_template, chat.family, str(model))
            (engine_log.info if self._format else engine_log.warning)("chat format: %s", reason)
        try:
            version = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - loaded above
            version = "?"
        first = instance
        self._info = ModelInfo(id=model.stem, engine="llamacpp", context_length=first.n_ctx,
                               vision=False, per_request_sampling=True,
                               fim=first.fim_tokens is not None or (
                                   self._format is not None
                                   and self._format.has_fim),
                               runtime=f"llama-cpp-python {version}",
                               chat_format=self._format.name if self._format else None)
        engine_log.info("CPU engine ready: %s", model)

    @property
    def can_embed(self) -> bool:
        return True

    async def embed(self, texts: list[str]) -> Embeddings:
        """Through a second, embedding-mode context (see embedder.py)."""
        return await self.embed_inputs(list(texts))

    async def embed_inputs(self, items: list[EmbedInput]) -> Embeddings:
        """Texts or token-id lists (OpenAI's ``input`` as tokens), one vector each."""
        if self._embedder is None:
            instance = self._instances[0]
            assert isinstance(instance, LlamaInstance)
            self._embedder = LlamaEmbedder(instance.settings, instance.model_path,
                                           instance.n_ctx, instance.metadata)
        return await self._embedder.embed(items)

    async def close(self) -> None:
        """The embedding context too, after the instances."""
        await super().close()
        if self._embedder is not None:
            embedder, self._embedder = self._embedder, None
            await embedder.close()
