"""The native side of one RKLLM handle: init, runs, abort and destroy, with no asyncio.

Whoever owns the handle calls these in order from one thread: an owner
thread in the server process (``rkllm.isolation = "thread"``) or a worker
process's main thread (``"process"``). The runtime may call the result
callback from a thread of its own; a run's :class:`Steps` handles it.
What goes in (:class:`Order`) and what comes out (:class:`NativeEnd`)
pickle, so both modes share this module and only the transport differs.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.embeddings import ImageEmbedding, ImageTags, l2_normalised
from rkstream.core.params import SamplingSettings
from rkstream.engines.rkllm.loader import RuntimeLibrary
from rkstream.engines.rkllm.prompt_cache import LoadedCache, PrefillOnly, SystemBlock, save_and_load
from rkstream.engines.rkllm.structs import CONTINUE, PAUSE, make_param, make_run_structs
from rkstream.engines.text import Utf8Stitcher
from rkstream.errors import EngineInitError
from rkstream.log import engine_log, native_log

ABORT_GRACE_S = 0.25  # after a cancel, pause generation if abort has not taken effect


@dataclass(frozen=True)
class Order:
    """One run as the native side needs it.

    Attributes:
        prompt: the text rkllm_run gets, ``<image>`` where each image goes.
        role: ``RKLLMInput.role``.
        clear: clear the whole KV cache first.
        count_share: when above 0, the run's cached tokens are this share of
            what the KV cache holds before it (the runtime does not say).
        enable_thinking: ``RKLLMInput.enable_thinking`` (the runtime's own template).
        tools_json: the tools for the runtime's own template, as a JSON array;
            set with rkllm_set_function_tools when they differ from the last set.
    """

    prompt: str
    role: str
    sampling: SamplingSettings
    max_tokens: int
    images: tuple[ImageEmbedding, ...] = ()
    image_tags: ImageTags | None = None
    keep_history: bool = False
    clear: bool = False
    count_share: float = 0.0
    enable_thinking: bool = False
    tools_json: str | None = None  # the runtime's own template: rkllm_set_function_tools


@dataclass(frozen=True)
class NativeEnd:
    """What the native side knows once rkllm_run has returned."""

    ret: int
    tokens: int
    error_state: bool = False
    perf: tuple[float, int, float, int] | None = None  # prefill ms, tokens; generate ms, tokens
    cached_tokens: int = 0
    exception: str | None = None

    @property
    def failed(self) -> bool:
        return self.ret != 0 or self.error_state or self.exception is not None


@dataclass(frozen=True)
class EmbedEnd:
    """One embedding run's result: an L2-normalised vector, or why there is none."""

    vector: list[float] | None
    tokens: int = 0
    error: str | None = None


class HiddenSteps:
    """The callbacks of one RKLLM_INFER_GET_LAST_HIDDEN_LAYER run.

    The hidden states are pooled (``last`` row or ``mean`` of the rows) while
    the callback runs: the buffer is only valid inside it. The callback then
    returns ``release`` (2 on 1.3: the runtime frees the buffer at once).
    """

    def __init__(self, abi: Any, pooling: str, release: int) -> None:
        self._abi = abi
        self.pooling = pooling
        self.release = release
        self.pooled: Any = None  # float64 vector
        self.tokens = 0
        self.error_state = False

    def on_step(self, result: Any, state: int) -> int:
        abi = self._abi
        if state == abi.RKLLM_RUN_ERROR:
            self.error_state = True
            return CONTINUE
        if state == abi.RKLLM_RUN_FINISH:
            return CONTINUE
        layer = result.contents.last_hidden_layer
        rows, width = int(layer.num_tokens), int(layer.embd_size)
        if not layer.hidden_states or rows <= 0 or width <= 0:
            return CONTINUE  # a step without hidden states (rknn-llm #278 saw one)
        states = np.ctypeslib.as_array(layer.hidden_states, shape=(rows * width,))
        states = states.reshape(rows, width)
        if self.pooling == "mean":
            self.pooled = states.astype(np.float64).mean(axis=0)
        else:
            self.pooled = states[rows - 1].astype(np.float64)  # a copy
        self.tokens = rows
        return self.release


class Steps:
    """One run's callbacks: stitch split UTF-8, count tokens, say when to stop.

    ``emit`` gets complete text, in order. ``stop_requested`` (a stop
    sequence matched) and ``cancel_s`` (when a cancel came) are plain
    attributes set from another thread; a late read costs one more token.
    """

    def __init__(self, abi: Any, max_tokens: int, emit: Callable[[str], None]) -> None:
        self._abi = abi
        self._emit = emit
        self.max_tokens = max_tokens
        self.stitcher = Utf8Stitcher()
        self.tokens = 0
        self.error_state = False
        self.perf: tuple[float, int, float, int] | None = None
        self.stop_requested = False
        self.cancel_s: float | None = None

    @property
    def should_stop(self) -> bool:
        return self.stop_requested or self.cancel_s is not None

    def on_step(self, result: Any, state: int) -> int:
        """Handle one callback; returns what the runtime should do next."""
        abi = self._abi
        if state == abi.RKLLM_RUN_NORMAL or state == abi.RKLLM_RUN_WAITING:
            data: bytes = result.contents.text or b""
            self.tokens += 1
            if state == abi.RKLLM_RUN_WAITING:
                self.stitcher.waiting(data)
            else:
                text = self.stitcher.normal(data)
                if text:
                    self._emit(text)
            if self.stop_requested or self.tokens >= self.max_tokens:
                return PAUSE  # stops at once, also where abort is slow
            if self.cancel_s is not None and time.perf_counter() - self.cancel_s > ABORT_GRACE_S:
                return PAUSE  # the abort was lost (it raced the start of rkllm_run)
        elif state == abi.RKLLM_RUN_FINISH:
            perf = result.contents.perf
            self.perf = (perf.prefill_time_ms, perf.prefill_tokens,
                         perf.generate_time_ms, perf.generate_tokens)
        elif state == abi.RKLLM_RUN_ERROR:
            self.error_state = True
        return CONTINUE

    def flush(self) -> None:
        """Emit what the stitcher still holds, once the run has returned."""
        tail = self.stitcher.flush()
        if tail:
            self._emit(tail)


class NativeModel:
    """One RKLLM handle and the callback the runtime holds for it.

    Args:
        runtime: the loaded library and its ABI module.
        settings: the [rkllm] settings.
        defaults: sampling defaults for the init-time RKLLMParam.
        model_path: a checked model path.
        index: which instance this is (for logs).
        image_tags: the vision encoder's image tags, or None (see :func:`make_param`).
        raw_prompts: rkstream renders prompts itself, so the runtime's own
            template is turned off once, after init.
        system_block: the system block to prefill once at init and keep as a
            prompt cache, or None.
    """

    def __init__(self, runtime: RuntimeLibrary, settings: RKLLMSettings,
                 defaults: SamplingDefaults, model_path: str, index: int,
                 image_tags: ImageTags | None = None, *, raw_prompts: bool = False,
                 system_block: SystemBlock | None = None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.defaults = defaults
        self.model_path = model_path
        self.index = index
        self.image_tags = image_tags
        self.raw_prompts = raw_prompts
        self._system_block = system_block if raw_prompts else None
        self._handle = runtime.abi.LLMHandle()
        self._lock = threading.Lock()  # guards _active against a late abort
        self._active: Steps | None = None
        self._prefill_only: PrefillOnly | None = None  # gets the callbacks of the save run
        self._hidden: HiddenSteps | None = None  # gets the callbacks of an embedding run
        # Kept for as long as the handle lives: C holds pointers to them.
        self._callback: Any = runtime.abi.LLMResultCallback(self._on_result)
        self._callbacks_struct: Any = None
        self._param: Any = None
        self.prompt_cache: LoadedCache | None = None
        self._tools_json: str | None = None  # the last rkllm_set_function_tools

    def _on_result(self, result: Any, userdata: Any, state: int) -> int:
        # Never let an exception reach C: its return value would be undefined.
        try:
            steps = self._active
            if steps is not None:
                return steps.on_step(result, state)
            hidden = self._hidden
            if hidden is not None:
                return hidden.on_step(result, state)
            prefill = self._prefill_only
            return CONTINUE if prefill is None else prefill.on_step(result, state)
        except BaseException:
            native_log.exception("result callback failed; generation continues")
            return CONTINUE

    def init(self) -> LoadedCache | None:
        """rkllm_init, the template switch and the system prompt cache.

        Returns the prompt cache loaded into the handle, if any.

        Raises:
            EngineInitError: rkllm_init or the template switch failed.
        """
        abi, fns = self.runtime.abi, self.runtime.functions
        self._param = make_param(self.runtime, self.settings, self.defaults,
                                 self.model_path.encode(), self.image_tags)
        if self.runtime.caps.callbacks_in_struct:
            self._callbacks_struct = abi.RKLLMCallback()
            self._callbacks_struct.result_callback = self._callback
            target: Any = ctypes.byref(self._callbacks_struct)
        else:
            target = self._callback
        started = time.perf_counter()
        ret = fns.rkllm_init(ctypes.byref(self._handle), ctypes.byref(self._param), target)
        if ret != 0 or not self._handle.value:
            self._handle = abi.LLMHandle()
            raise EngineInitError(
                f"rkllm_init failed (returned {ret}) for {self.model_path}: check that the "
                f"model was converted for runtime {self.runtime.version or self.runtime.line}"
                " and this chip, and that NPU memory is free; the runtime's own message is"
                " in the log above")
        engine_log.info("instance %d loaded %s in %.0f ms", self.index, self.model_path,
                        (time.perf_counter() - started) * 1000)
        if self.raw_prompts:
            # Empty parts: the text passes as it is. Once only: the call clears the
            # KV cache (and the runtime's thinking switch) every time it is made.
            ret = fns.rkllm_set_chat_template(self._handle, b"", b"", b"")
            if ret != 0:
                raise EngineInitError(f"rkllm_set_chat_template failed (returned {ret}), so "
                                      "the runtime's own template cannot be turned off; set "
                                      "[chat] family = \"none\" to use it instead")
            if self._system_block is not None:
                self._load_prompt_cache(self._system_block)
        return self.prompt_cache

    def _load_prompt_cache(self, block: SystemBlock) -> None:
        # Optional: a failure costs only the cache, never the instance.
        steps = PrefillOnly(self.runtime.abi)
        self._prefill_only = steps
        try:
            self.prompt_cache = save_and_load(self.runtime, self._handle, block, steps,
                                              self.settings, self.defaults)
        except Exception:
            engine_log.exception("system prompt not cached: saving or loading %s failed",
                                 block.path)
            self.runtime.functions.rkllm_clear_kv_cache(self._handle, 0, None, None)
        finally:
            self._prefill_only = None
        if self.prompt_cache is not None:
            engine_log.info("instance %d: system prompt cached (%d tokens) in %s", self.index,
                            self.prompt_cache.tokens, block.path)

    def _kv_tokens(self) -> int:
        sizes = (ctypes.c_int * 1)()
        if self.runtime.functions.rkllm_get_kv_cache_size(self._handle, sizes) != 0:
            return 0
        return max(0, int(sizes[0]))

    def run(self, order: Order, steps: Steps) -> NativeEnd:
        """Clear or count the KV cache as ``order`` says, then rkllm_run with ``steps``
        receiving the callbacks. Never raises: a failure is in the result."""
        fns = self.runtime.functions
        with self._lock:
            self._active = steps
        ret, exception, cached = -1, None, 0
        try:
            if steps.should_stop:  # cancelled before it reached the runtime
                ret = 0
            else:
                self._set_tools(order.tools_json)
                structs = make_run_structs(self.runtime, order.prompt, order.role,
                                           order.sampling, self.settings, order.images,
                                           order.image_tags, keep_history=order.keep_history,
                                           enable_thinking=order.enable_thinking)
                if order.clear:
                    fns.rkllm_clear_kv_cache(self._handle, 0, None, None)
                elif order.count_share > 0:
                    cached = round(self._kv_tokens() * min(1.0, order.count_share))
                ret = fns.rkllm_run(self._handle, ctypes.byref(structs.input),
                                    ctypes.byref(structs.infer), None)
        except BaseException as exc:  # reported as a failed request, not a crash
            exception = f"rkllm_run raised {type(exc).__name__}: {exc}"
            engine_log.exception("rkllm_run raised")
        finally:
            with self._lock:
                self._active = None
        steps.flush()
        return NativeEnd(ret=ret, tokens=steps.tokens, error_state=steps.error_state,
                         perf=steps.perf, cached_tokens=cached, exception=exception)

    def embed(self, text: str, pooling: str) -> EmbedEnd:
        """One embedding of ``text`` (RKLLM_INFER_GET_LAST_HIDDEN_LAYER), pooled and
        L2-normalised. The KV cache is cleared first and holds ``text`` after, so
        the loop side must treat the cache as unknown. Never raises."""
        hidden = HiddenSteps(self.runtime.abi, pooling, self.runtime.caps.hidden_states_return)
        fns = self.runtime.functions
        self._hidden = hidden
        try:
            d = self.defaults
            sampling = SamplingSettings(max_tokens=1, temperature=d.temperature, top_p=d.top_p,
                                        top_k=d.top_k, repeat_penalty=d.repeat_penalty,
                                        frequency_penalty=d.frequency_penalty,
                                        presence_penalty=d.presence_penalty)
            structs = make_run_structs(self.runtime, text, "user", sampling, self.settings,
                                       hidden_states=True)
            fns.rkllm_clear_kv_cache(self._handle, 0, None, None)
            ret = fns.rkllm_run(self._handle, ctypes.byref(structs.input),
                                ctypes.byref(structs.infer), None)
        except BaseException as exc:
            engine_log.exception("rkllm_run (hidden states) raised")
            return EmbedEnd(None, error=f"rkllm_run raised {type(exc).__name__}: {exc}")
        finally:
            self._hidden = None
        if ret != 0 or hidden.error_state or hidden.pooled is None:
            return EmbedEnd(None, hidden.tokens,
                            f"the RKLLM runtime gave no hidden states (rkllm_run returned "
                            f"{ret}); see the server log")
        return EmbedEnd(l2_normalised(hidden.pooled), hidden.tokens)

    def _set_tools(self, tools_json: str | None) -> None:
        """Give the runtime's template the tools, only when they changed. Once set,
        they are never unset (Rockchip: do not call it without tools): a run
        without tools after one with them sends an empty list."""
        if tools_json is None:
            if self._tools_json in (None, "[]"):
                return
            tools_json = "[]"
        if tools_json == self._tools_json:
            return
        ret = self.runtime.functions.rkllm_set_function_tools(
            self._handle, b"", tools_json.encode(), b"tool_response")
        if ret != 0:
            engine_log.warning("rkllm_set_function_tools returned %d; the tools may not reach "
                               "the model", ret)
        self._tools_json = tools_json

    def abort(self, steps: Steps) -> None:
        """rkllm_abort, if ``steps`` is still the running one (any thread)."""
        with self._lock:
            if self._active is steps:
                self.runtime.functions.rkllm_abort(self._handle)

    def destroy(self) -> None:
        """Release the prompt cache and destroy the handle; safe to call twice."""
        if self._handle.value:
            if self.prompt_cache is not None:
                self.runtime.functions.rkllm_release_prompt_cache(self._handle)
                self.prompt_cache = None
            self.runtime.functions.rkllm_destroy(self._handle)
            self._handle = self.runtime.abi.LLMHandle()
