"""One RKLLM handle and the one thread that owns it.

The owner thread runs rkllm_init, every rkllm_run and rkllm_destroy. The
result callback (which the runtime may call from a thread of its own) copies
the step's bytes, stitches split UTF-8 characters, and hands text to the
loop through a :class:`LoopChannel`; the end of the run goes through the same
channel after rkllm_run returns, so it is always ordered after the last token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any

from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.embeddings import ImageTags
from rkstream.core.owner import OwnerThread
from rkstream.engines.base import EngineInstance, Job, TextSink
from rkstream.engines.kv import KVPlan, KVText, kv_mode
from rkstream.engines.prompt import render_prompt
from rkstream.engines.rkllm.loader import RuntimeLibrary
from rkstream.engines.rkllm.prompt_cache import (
    LoadedCache,
    PrefillOnly,
    SystemBlock,
    cached_tokens,
    save_and_load,
)
from rkstream.engines.rkllm.structs import (
    CONTINUE,
    PAUSE,
    RunStructs,
    make_param,
    make_run_structs,
)
from rkstream.engines.run import BridgedRun, RunFacts
from rkstream.engines.text import Utf8Stitcher
from rkstream.errors import EngineInitError
from rkstream.log import engine_log, native_log

ABORT_GRACE_S = 0.25  # after a cancel, pause generation if abort has not taken effect


class RKLLMRun(BridgedRun):
    """A run on one RKLLM handle; :meth:`on_step` runs on the callback thread."""

    def __init__(self, instance: RKLLMInstance, job: Job, sink: TextSink,
                 loop: asyncio.AbstractEventLoop, structs: RunStructs,
                 plan: KVPlan | None = None) -> None:
        max_tokens = job.sampling.max_tokens
        if not instance.runtime.caps.per_run_max_new_tokens:  # the init value is a hard cap
            max_tokens = min(max_tokens, instance.settings.max_new_tokens)
        super().__init__(job, sink, loop, max_tokens)
        self._instance = instance
        self.structs = structs
        self.plan = plan
        self._abi = instance.runtime.abi
        # Callback-thread state.
        self.stitcher = Utf8Stitcher()
        self.tokens = 0
        self.error_state = False
        self.perf: tuple[float, int, float, int] | None = None
        self.generated: list[str] = []  # all text, stop sequences included: it is in the cache
        self.cached_tokens = 0

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
                    self.generated.append(text)
                    self.emit(text)
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

    def finish_native(self, ret: int, exception: str | None) -> None:
        """Called by the owner thread once rkllm_run has returned."""
        tail = self.stitcher.flush()
        if tail:
            self.generated.append(tail)
            self.emit(tail)
        failed = ret != 0 or self.error_state or exception is not None
        if self.plan is not None:
            # Cut short by us (stop, max_tokens, cancel) or by the runtime's own limit?
            cut = self.stop_requested or self.cancelled or self.tokens >= self.max_tokens
            self._instance.kv.settle(self.plan, "".join(self.generated),
                                     natural_end=not cut, failed=failed,
                                     end_of_turn=self.job.prompt.end_of_turn
                                     if self.job.prompt is not None else "")
        facts = RunFacts(tokens=self.tokens, prompt_tokens=0, prompt_ms=None,
                         predicted_ms=None, first_text_s=self.first_text_s,
                         start_s=self.start_s, end_s=time.perf_counter())
        facts.cached_tokens = self.cached_tokens
        if self.perf is not None:
            facts.prompt_ms, facts.prompt_tokens, facts.predicted_ms, _ = self.perf
        if failed:
            facts.error_code = "runtime_error"
            facts.error_message = exception or (
                f"the RKLLM runtime reported an error during generation (rkllm_run "
                f"returned {ret}); see the server log")
        self.finish(facts)

    def _abort(self) -> None:
        self._instance.abort(self)


Callback = Callable[[Any, Any, int], int]


class RKLLMInstance(EngineInstance):
    """Owns one RKLLM handle through one thread: init, runs, destroy.

    Args:
        runtime: the loaded library and its ABI module.
        settings: the [rkllm] settings.
        defaults: sampling defaults for the init-time RKLLMParam.
        model_path: a checked model path.
        index: which instance this is (for logs and thread names).
        control: a small executor for rkllm_abort, so it never runs on the loop.
        image_tags: the vision encoder's image tags, or None without one; used
            at init (see :func:`make_param`).
        raw_prompts: rkstream renders prompts itself (a chat format), so the
            runtime's own template is turned off once, after init.
        keep_rewritten: see :class:`~rkstream.engines.kv.KVText`.
        system_cache: the system block to prefill once at load and keep as a
            prompt cache (:mod:`~rkstream.engines.rkllm.prompt_cache`), or None.
    """

    def __init__(self, runtime: RuntimeLibrary, settings: RKLLMSettings,
                 defaults: SamplingDefaults, model_path: str, index: int,
                 control: concurrent.futures.Executor,
                 image_tags: ImageTags | None = None, *, raw_prompts: bool = False,
                 keep_rewritten: bool = True, system_cache: SystemBlock | None = None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.defaults = defaults
        self.model_path = model_path
        self.image_tags = image_tags
        self.index = index
        self._control = control
        self._owner = OwnerThread(f"rkllm-owner-{index}")
        self._handle = runtime.abi.LLMHandle()
        self._lock = threading.Lock()  # guards _active against a late abort
        self._active: RKLLMRun | None = None
        # Kept for as long as the handle lives: C holds pointers to them.
        self._callback: Any = runtime.abi.LLMResultCallback(self._on_result)
        self._callbacks_struct: Any = None
        self._param: Any = None
        self._closed = False
        self.kv = KVText(kv_mode(settings.kv_reuse),
                         end_of_turn_kept=settings.kv_end_of_turn == "kept",
                         keep_rewritten=keep_rewritten)
        self.raw_prompts = raw_prompts
        self._system_block = system_cache if raw_prompts else None
        self.prompt_cache: LoadedCache | None = None  # loaded into the handle
        self._prefill_only: PrefillOnly | None = None  # gets the callbacks of the save run

    # -- owner thread --------------------------------------------------------
    def _on_result(self, result: Any, userdata: Any, state: int) -> int:
        # Never let an exception reach C: its return value would be undefined.
        try:
            run = self._active
            if run is not None:
                return run.on_step(result, state)
            steps = self._prefill_only
            return CONTINUE if steps is None else steps.on_step(result, state)
        except BaseException:
            native_log.exception("result callback failed; generation continues")
            return CONTINUE

    def _init_sync(self) -> None:
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
            self.kv.clear()
            if self._system_block is not None:
                self._load_prompt_cache(self._system_block)

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
        self.kv.clear()
        if self.prompt_cache is not None:
            engine_log.info("instance %d: system prompt cached (%d tokens) in %s", self.index,
                            self.prompt_cache.tokens, block.path)

    def _kv_tokens(self) -> int:
        sizes = (ctypes.c_int * 1)()
        if self.runtime.functions.rkllm_get_kv_cache_size(self._handle, sizes) != 0:
            return 0
        return max(0, int(sizes[0]))

    def _prepare_cache(self, run: RKLLMRun) -> None:
        """Clear the cache or count what it holds, as the run's plan says."""
        plan = run.plan
        if plan is None:
            return
        if plan.clear:
            self.runtime.functions.rkllm_clear_kv_cache(self._handle, 0, None, None)
        elif plan.reused:
            held = self._kv_tokens()
            # history: the whole cache is the prompt's prefix; runtime: the share
            # of it that matches, an estimate (the runtime does not say).
            share = 1.0 if plan.keep_history else plan.reused / max(1, plan.prompt_chars)
            run.cached_tokens = round(held * min(1.0, share))
        # a run that starts the cache afresh with the system block skips it
        run.cached_tokens = max(run.cached_tokens, cached_tokens(self.prompt_cache, plan))

    def _run_sync(self, run: RKLLMRun) -> None:
        fns = self.runtime.functions
        with self._lock:
            self._active = run
        run.start_s = time.perf_counter()
        ret, exception = -1, None
        if run.should_stop:  # cancelled before it reached the runtime
            with self._lock:
                self._active = None
            run.finish_native(0, None)
            return
        try:
            self._prepare_cache(run)
            ret = fns.rkllm_run(self._handle, ctypes.byref(run.structs.input),
                                ctypes.byref(run.structs.infer), None)
        except BaseException as exc:  # reported as a failed request, not a crash
            exception = f"rkllm_run raised {type(exc).__name__}: {exc}"
            engine_log.exception("rkllm_run raised")
        finally:
            with self._lock:
                self._active = None
        run.finish_native(ret, exception)

    def _abort_sync(self, run: RKLLMRun) -> None:
        with self._lock:
            if self._active is run:
                self.runtime.functions.rkllm_abort(self._handle)

    def _destroy_sync(self) -> None:
        if self._handle.value:
            if self.prompt_cache is not None:
                self.runtime.functions.rkllm_release_prompt_cache(self._handle)
                self.prompt_cache = None
            self.runtime.functions.rkllm_destroy(self._handle)
            self._handle = self.runtime.abi.LLMHandle()

    # -- event loop ------------------------------------------------------------
    async def load(self) -> None:
        """Start the owner thread and run rkllm_init on it."""
        self._owner.start()
        await self._owner.call(self._init_sync)

    def affinity(self, job: Job) -> int:
        if job.prompt is None or not self.raw_prompts:
            return 0
        return self.kv.match(job.prompt)

    def start(self, job: Job, sink: TextSink) -> RKLLMRun:
        plan = None
        images = job.images
        if job.prompt is not None and self.raw_prompts:
            plan = self.kv.plan(job.prompt, tuple(image.key for image in job.images))
            prompt, role = plan.send, "user"
            images = job.images[plan.first_image:]
        elif job.prompt is not None:  # raw text, but the runtime's template still wraps it
            prompt, role = job.prompt.text, "user"
        else:  # no chat format: one labelled transcript; the runtime's template wraps it
            prompt, role = render_prompt(job.messages, job.instructions)
        structs = make_run_structs(self.runtime, prompt, role, job.sampling, self.settings,
                                   images, job.image_tags,
                                   keep_history=plan is not None and plan.keep_history)
        run = RKLLMRun(self, job, sink, asyncio.get_running_loop(), structs, plan)
        self._owner.submit(lambda: self._run_sync(run))
        return run

    def abort(self, run: RKLLMRun) -> None:
        """Ask the runtime to stop ``run`` if it is still the active one."""
        self._control.submit(self._abort_sync, run)

    async def close(self) -> None:
        """Abort any run, destroy the handle on its owner thread, end the thread."""
        if self._closed:
            return
        self._closed = True
        active = self._active
        if active is not None:
            active.cancel()
        await self._owner.stop(self._destroy_sync)
