"""The CPU engine: ``instances`` llama.cpp models, one owner thread each."""

from __future__ import annotations

import asyncio
import importlib.metadata

from rkstream.config import Settings
from rkstream.engines.base import InstanceEngine, ModelInfo
from rkstream.engines.llamacpp.instance import LlamaInstance
from rkstream.engines.llamacpp.model import resolve_model
from rkstream.log import engine_log


class LlamaCppEngine(InstanceEngine):
    """A GGUF model run by llama.cpp on the CPU (no NPU needed)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings

    async def load(self) -> None:
        """Find the model, then load each instance on its owner thread.

        Raises:
            ModelFileError: no usable GGUF file.
            EngineInitError: llama-cpp-python is missing or cannot load the file.
        """
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, resolve_model, self._settings.llamacpp.model)
        for index in range(self._settings.instances):
            instance = LlamaInstance(self._settings.llamacpp, model, index)
            self._instances.append(instance)
            await instance.load()
        try:
            version = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - loaded above
            version = "?"
        first = instance
        self._info = ModelInfo(id=model.stem, engine="llamacpp", context_length=first.n_ctx,
                               vision=False, per_request_sampling=True,
                               fim=first.fim_tokens is not None,
                               runtime=f"llama-cpp-python {version}")
        engine_log.info("CPU engine ready: %s", model)
