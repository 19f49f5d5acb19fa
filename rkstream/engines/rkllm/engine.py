"""The RKLLM engine: a loaded librkllmrt.so and ``instances`` model handles."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

from ...config import Settings
from ...log import engine_log
from ..base import InstanceEngine, ModelInfo
from .instance import RKLLMInstance
from .loader import RuntimeLibrary, check_model_file, load_runtime


class RKLLMEngine(InstanceEngine):
    """Language model served by Rockchip's RKLLM runtime (or the stand-in)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self._control = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rkllm-control")
        self.runtime: RuntimeLibrary | None = None

    def _prepare_sync(self) -> tuple[RuntimeLibrary, Path]:
        rk = self._settings.rkllm
        model = check_model_file(rk.model)
        runtime = load_runtime(rk.library or None, rk.runtime)  # type: ignore[arg-type]
        return runtime, model

    async def load(self) -> None:
        """Check the model file, load the library, then init each handle in turn.

        Raises:
            ModelFileError, RuntimeLibraryError, RuntimeVersionError: before any
                native init.
            EngineInitError: rkllm_init failed; handles already made are freed.
        """
        loop = asyncio.get_running_loop()
        runtime, model = await loop.run_in_executor(None, self._prepare_sync)
        # Start the abort thread now, so the first cancel does not wait for it.
        await asyncio.wrap_future(self._control.submit(lambda: None))
        self.runtime = runtime
        engine_log.info("runtime %s (line %s) from %s", runtime.version or "?", runtime.line,
                        runtime.path)
        rk = self._settings.rkllm
        tags = None
        if self._settings.vision.encoder:  # runtime 1.2 takes the image tags at init
            from ...vision.service import preset_from, tags_of

            tags = tags_of(preset_from(self._settings.vision))
        for index in range(self._settings.instances):
            instance = RKLLMInstance(runtime, rk, self._settings.sampling, str(model), index,
                                     self._control, tags)
            self._instances.append(instance)
            await instance.load()  # one at a time: NPU memory is allocated in init
        per_run = runtime.line != "1.2"
        notes = () if per_run else (
            "runtime 1.2 has no per-request sampling: temperature, top_p, top_k and the "
            "penalties use the server's configured values; max_tokens is still honoured",)
        self._info = ModelInfo(
            id=model.stem, engine="rkllm", context_length=rk.max_context_len,
            vision=False, per_request_sampling=per_run,
            runtime=runtime.version or runtime.line, notes=notes)

    async def close(self) -> None:
        await super().close()
        self._control.shutdown(wait=False)
