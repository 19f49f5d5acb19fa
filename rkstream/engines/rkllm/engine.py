"""The RKLLM engine: a loaded librkllmrt.so and ``instances`` model handles."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

from rkstream.chat.format import ChatFormat, resolve_chat_format
from rkstream.chat.output import HERMES, THINK, Markup
from rkstream.config import Settings
from rkstream.core.embeddings import ImageTags
from rkstream.engines.base import Embeddings, InstanceEngine, ModelInfo
from rkstream.engines.rkllm.in_thread import ThreadInstance
from rkstream.engines.rkllm.instance import RKLLMInstance
from rkstream.engines.rkllm.loader import RuntimeLibrary, check_model_file, load_runtime
from rkstream.engines.rkllm.prompt_cache import plan_system_cache
from rkstream.engines.rkllm.worker.instance import WorkerInstance
from rkstream.engines.text import estimate_tokens
from rkstream.errors import RequestError
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
        self._embedding = asyncio.Lock()  # one embedding request at a time

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

    @property
    def can_embed(self) -> bool:
        return True

    async def embed(self, texts: list[str]) -> Embeddings:
        """One L2-normalised vector per text, from the last hidden layer
        (RKLLM_INFER_GET_LAST_HIDDEN_LAYER), pooled by ``rkllm.embedding_pooling``.

        Not through the scheduler: one request at a time takes a serving
        instance (an idle one if there is one) and queues its texts on that
        instance's native side, which runs them in turn with the instance's
        generations, never alongside one. So a generation may wait behind an
        embedding and the other way round, and the queue limits and metrics of
        the scheduler do not count embeddings.

        Raises:
            RequestError: ``invalid_field`` (an empty text), ``context_overflow``
                (a text longer than the context, by the byte estimate),
                ``runtime_error`` / ``runtime_crashed``, or ``model_loading`` when no
                instance serves.
        """
        context = self._settings.rkllm.max_context_len
        for number, text in enumerate(texts):
            if not text.strip():
                raise RequestError("invalid_field",
                                   f"input {number} is empty: there is nothing to embed")
            estimate = estimate_tokens(text)
            if estimate > context:
                raise RequestError("context_overflow",
                                   f"input {number} is about {estimate} tokens, longer than "
                                   f"the context ({context} tokens)")
        async with self._embedding:
            serving = [i for i in self._instances
                       if isinstance(i, RKLLMInstance) and i.health().status == "ok"]
            if not serving:
                raise RequestError("model_loading",
                                   "no RKLLM instance is serving (they are restarting)")
            idle = [i for i in serving if i.active is None]
            instance = (idle or serving)[0]
            vectors, tokens = [], 0
            for text in texts:
                vector, used = await instance.embed(text)
                vectors.append(vector)
                tokens += used
        return Embeddings(vectors=vectors, tokens=tokens)

    async def close(self) -> None:
        await super().close()
        self._control.shutdown(wait=False)
