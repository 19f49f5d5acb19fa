"""``rkllm.isolation = "thread"``: the handle lives in the server process.

One owner thread runs rkllm_init, every rkllm_run and rkllm_destroy; the
result callback hands text to the loop through the run's LoopChannel, and
the end of the run follows through the same channel, after the last token.
A crash in the runtime ends the server; a runtime that hangs and ignores
rkllm_abort leaves this instance out of service (a thread cannot be killed)
until the call returns, if ever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time

from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.embeddings import ImageTags
from rkstream.core.owner import OwnerThread
from rkstream.engines.rkllm.faults import fault_log_path, record_fault
from rkstream.engines.rkllm.instance import RKLLMInstance, RKLLMRun
from rkstream.engines.rkllm.loader import RuntimeLibrary
from rkstream.engines.rkllm.native import EmbedEnd, NativeModel, Steps
from rkstream.engines.rkllm.prompt_cache import SystemBlock
from rkstream.log import engine_log


class ThreadInstance(RKLLMInstance):
    """An RKLLM handle owned by a thread of this process.

    Args:
        control: a small executor for rkllm_abort, so it never runs on the loop.
        The others: see :class:`RKLLMInstance`.
    """

    def __init__(self, runtime: RuntimeLibrary, settings: RKLLMSettings,
                 defaults: SamplingDefaults, model_path: str, index: int,
                 control: concurrent.futures.Executor,
                 image_tags: ImageTags | None = None, *, raw_prompts: bool = False,
                 keep_rewritten: bool = True, system_cache: SystemBlock | None = None) -> None:
        super().__init__(runtime, settings, defaults, model_path, index, image_tags,
                         raw_prompts=raw_prompts, keep_rewritten=keep_rewritten,
                         system_cache=system_cache)
        self._control = control
        self._owner = OwnerThread(f"rkllm-owner-{index}")
        self.native = NativeModel(runtime, settings, defaults, model_path, index, image_tags,
                                  raw_prompts=raw_prompts, system_block=self.system_block)
        self._current: tuple[RKLLMRun, Steps] | None = None
        self._stuck_run: RKLLMRun | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def load(self) -> None:
        """Start the owner thread and run rkllm_init on it."""
        self._loop = asyncio.get_running_loop()
        self._owner.start()
        self.prompt_cache = await self._owner.call(self.native.init)
        self.kv.clear()

    def launch(self, run: RKLLMRun) -> None:
        steps = Steps(self.runtime.abi, run.max_tokens, run.emit)
        self._current = (run, steps)
        self._owner.submit(lambda: self._run_sync(run, steps))

    async def embed_native(self, text: str) -> EmbedEnd:
        pooling = self.settings.embedding_pooling
        end: EmbedEnd = await self._owner.call(lambda: self.native.embed(text, pooling))
        return end

    def _run_sync(self, run: RKLLMRun, steps: Steps) -> None:
        end = self.native.run(run.order, steps)
        run.finish(run.facts(end))
        if self._stuck_run is run and self._loop is not None:
            self._loop.call_soon_threadsafe(self._returned, run)

    def abort(self, run: RKLLMRun) -> None:
        current = self._current
        if current is None or current[0] is not run:
            return
        steps = current[1]
        if run.stop_requested and not run.cancelled:
            steps.stop_requested = True
        else:  # a cancel, or the watchdog
            steps.cancel_s = run.cancel_s or time.perf_counter()
        self._control.submit(self.native.abort, steps)

    def stuck(self, run: RKLLMRun, why: str) -> None:
        if run.fault is None:  # a cancel the runtime ignored, not a stall
            self._health.hangs += 1
        reason = ("the RKLLM runtime hangs inside the server process (rkllm.isolation = "
                  "\"thread\"), so this instance serves nothing until it returns; restart "
                  "the server, or set isolation = \"process\" to have it restarted for you")
        engine_log.error("instance %d: %s; %s", self.index, why, reason)
        self._health.last_fault = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} hang: {why}"
        record_fault(fault_log_path(self.settings.fault_log), kind="hang", instance=self.index,
                     model=self.model_path, exit="still hanging in the server process",
                     pid=os.getpid(), output=())
        self._stuck_run = run
        run.fail_now("runtime_hung", f"{why}; {reason}")
        self.set_status("failed", reason)

    def _returned(self, run: RKLLMRun) -> None:
        """The hung rkllm_run returned after all: serve again, from an empty cache."""
        if self._stuck_run is not run or self.closed:
            return
        self._stuck_run = None
        engine_log.warning("instance %d: the hung run returned; serving again", self.index)
        self.kv.held = None  # unknown: the next run clears it
        self.set_status("ok")

    async def close(self) -> None:
        """Abort any run, destroy the handle on its owner thread, end the thread."""
        if self.closed:
            return
        self.closed = True
        if self.active is not None:
            self.active.cancel()
        if self._stuck_run is not None:
            engine_log.warning("instance %d: its runtime still hangs; the handle is left to "
                               "the end of the process", self.index)
            return
        await self._owner.stop(self.native.destroy)
