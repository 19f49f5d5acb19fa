"""The RKLLM engine: a loaded librkllmrt.so and ``instances`` model handles."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

from rkstream.chat.format import ChatFormat, resolve_chat_format
from rkstream.chat.output import HERMES, THINK, Markup
from rkstream.config import Settings
from rkstream.core.embeddings import ImageTags
from rkstream.engines.base import InstanceEngine, ModelInfo
from rkstream.engines.rkllm.in_thread import ThreadInstance
from rkstream.engines.rkllm.instance import RKLLMInstance
from rkstream.engines.rkllm.loader import RuntimeLibrary, check_model_file, load_runtime
from rkstream.engines.rkllm.prompt_cache import plan_system_cache
from rkstream.engines.rkllm.worker.instance import WorkerInstance
from rkstream.log import engine_log

RUNTIME_TEMPLATE_MARKUP = Markup(think=THINK, call=HERMES)


class RKLLMEngine(InstanceEngine):
    """Language model served by Rockchip's RKLLM runtime (or the stand-in).

    Args:
        settings: the server settings.
        image_tags: the image tags of the vision encoder's model family, or
            None when no encoder is configured. They go to rkllm_init: 1.2
            takes them there, and on every line they move the model to the
            NPU domain an encoder in the same process needs.
    """

    def __init__(self, settings: Settings, image_tags: ImageTags | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._image_tags = image_tags
        self._control = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rkllm-control")
        self.runtime: RuntimeLibrary | None = None
        self._format: ChatFormat | None = None

    @property
    def chat_format(self) -> ChatFormat | None:
        return self._format

    @property
    def markup(self) -> Markup | None:
        """With the runtime's own template (no format), the model is unknown: the
        Hermes ``<tool_call>`` and ``<think>`` tags the runtime's templates use."""
        return self._format.markup if self._format is not None else RUNTIME_TEMPLATE_MARKUP

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
        chat = self._settings.chat
        fmt, reason = resolve_chat_format(chat.template, chat.family, str(model))
        (engine_log.info if fmt is not None else engine_log.warning)("chat format: %s", reason)
        self._format = fmt
        system = (plan_system_cache(fmt, chat.system_prompt, str(model), runtime.line,
                                    enable_thinking=chat.thinking)
                  if chat.cache_system_prompt else None)
        for index in range(self._settings.instances):
            keep = self._settings.chat.history_rewrite == "keep"
            instance: RKLLMInstance
            if rk.isolation == "process":
                instance = WorkerInstance(
                    runtime, rk, self._settings.sampling, str(model), index, self._image_tags,
                    raw_prompts=fmt is not None, keep_rewritten=keep, system_cache=system)
            else:
                instance = ThreadInstance(
                    runtime, rk, self._settings.sampling, str(model), index, self._control,
                    self._image_tags, raw_prompts=fmt is not None, keep_rewritten=keep,
                    system_cache=system)
            self._instances.append(instance)
            await instance.load()  # one at a time: NPU memory is allocated in init
        self._info = ModelInfo(
            id=model.stem, engine="rkllm", context_length=rk.max_context_len,
            vision=False, per_request_sampling=runtime.caps.per_run_sampling,
            fim=fmt is not None and fmt.has_fim,
            runtime=runtime.version or runtime.line, notes=runtime.caps.notes,
            chat_format=fmt.name if fmt is not None else None)

    async def close(self) -> None:
        await super().close()
        self._control.shutdown(wait=False)
