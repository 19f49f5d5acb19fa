"""An RKLLM instance whose handle lives in a worker process, restarted when it dies.

When the worker ends unasked (a crash) or is killed (the runtime hung past
the watchdog's grace), the run it had ends at once with ``runtime_crashed``
or ``runtime_hung``, the instance reports ``restarting`` (the scheduler
keeps waiting jobs queued), a new worker loads the model, and the instance
serves again. A fault right after a restart waits ``restart_backoff_s``
before the next one, doubling up to ``restart_backoff_max_s``; a run that
ends normally resets that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.embeddings import ImageTags
from rkstream.engines.rkllm.faults import fault_log_path, record_fault
from rkstream.engines.rkllm.instance import RKLLMInstance, RKLLMRun
from rkstream.engines.rkllm.loader import RuntimeLibrary
from rkstream.engines.rkllm.native import EmbedEnd, NativeEnd
from rkstream.engines.rkllm.prompt_cache import SystemBlock
from rkstream.engines.rkllm.worker.process import WorkerProcess, describe_exit
from rkstream.engines.rkllm.worker.wire import WorkerInit
from rkstream.engines.run import RunFacts
from rkstream.errors import RequestError
from rkstream.log import engine_log

CLOSE_S = 10.0  # a clean close (rkllm_destroy) may take this long before a kill


class WorkerInstance(RKLLMInstance):
    """One RKLLM handle in a worker process. Arguments: see :class:`RKLLMInstance`."""

    def __init__(self, runtime: RuntimeLibrary, settings: RKLLMSettings,
                 defaults: SamplingDefaults, model_path: str, index: int,
                 image_tags: ImageTags | None = None, *, raw_prompts: bool = False,
                 keep_rewritten: bool = True, system_cache: SystemBlock | None = None) -> None:
        super().__init__(runtime, settings, defaults, model_path, index, image_tags,
                         raw_prompts=raw_prompts, keep_rewritten=keep_rewritten,
                         system_cache=system_cache)
        self.process: WorkerProcess | None = None
        self._restarting: asyncio.Task[None] | None = None
        self.faults_in_a_row = 0
        # embeddings sent to the worker, oldest first: its vector frames come in order
        self._embeds: collections.deque[asyncio.Future[EmbedEnd]] = collections.deque()

    def _init(self) -> WorkerInit:
        return WorkerInit(library=str(self.runtime.path), line=self.runtime.line,
                          settings=self.settings, defaults=self.defaults,
                          model_path=self.model_path, index=self.index,
                          image_tags=self.image_tags, raw_prompts=self.raw_prompts,
                          system_block=self.system_block)

    # -- loading -------------------------------------------------------------------
    async def load(self) -> None:
        """Start the worker and load the model in it; raises EngineInitError."""
        await self._spawn()

    async def _spawn(self) -> None:
        process = WorkerProcess(self.index, self._on_items)
        try:
            self.prompt_cache = await process.start(self._init())
        except asyncio.CancelledError:  # closed while loading: leave no worker behind
            await process.abandon()
            raise
        self.kv.clear()
        self.process = process
        process.exited.add_done_callback(lambda done: self._exited(process, done.result()))
        engine_log.info("instance %d: worker process %s ready", self.index, process.pid)

    # -- runs ------------------------------------------------------------------------
    def launch(self, run: RKLLMRun) -> None:
        if self.process is None or not self.process.send(("run", run.order)):
            run.fail_now("runtime_crashed", "the worker process had ended before the run "
                         "could start; the model is reloading")

    async def embed_native(self, text: str) -> EmbedEnd:
        future: asyncio.Future[EmbedEnd] = asyncio.get_running_loop().create_future()
        if self.process is None or not self.process.send(("embed", text)):
            raise RequestError("runtime_crashed", "the worker process had ended before the "
                               "embedding could start; the model is reloading")
        self._embeds.append(future)
        return await future

    def _on_items(self, items: list[str | NativeEnd | EmbedEnd]) -> None:
        run = self.active
        out: list[str | RunFacts] = []
        for item in items:
            if isinstance(item, EmbedEnd):
                if self._embeds:
                    future = self._embeds.popleft()
                    if not future.done():
                        future.set_result(item)
                continue
            if run is None:
                continue  # the end of a run already ended by the watchdog
            if isinstance(item, str):
                if run.first_text_s is None:
                    run.first_text_s = time.perf_counter()
                out.append(item)
            else:
                out.append(run.facts(item))
                if run.fault is None and not item.failed:
                    self.faults_in_a_row = 0
        if run is not None and out:
            run.deliver(out)

    def abort(self, run: RKLLMRun) -> None:
        if self.active is run and self.process is not None:
            self.process.send(("stop",) if run.stop_requested and not run.cancelled
                              else ("cancel",))

    def stuck(self, run: RKLLMRun, why: str) -> None:
        if run.fault is None:  # a cancel the runtime ignored, not a stall
            self._health.hangs += 1
        message = f"{why}; the worker was killed and the model is reloading"
        engine_log.error("instance %d: %s", self.index, message)
        # Out of service first, so the scheduler hands the next job to no dying worker.
        self.set_status("restarting", f"its runtime hung and the worker is being killed: {why}")
        run.fail_now("runtime_hung", message)
        if self.process is not None:
            self.process.kill()

    # -- faults and restarts -------------------------------------------------------
    def _exited(self, process: WorkerProcess, returncode: int) -> None:
        if process is not self.process:
            return
        self.process = None
        self.kv.clear()
        self.prompt_cache = None
        while self._embeds:
            future = self._embeds.popleft()
            if not future.done():
                future.set_exception(RequestError(
                    "runtime_crashed", f"the RKLLM worker process ended "
                    f"({describe_exit(returncode)}) during the embedding"))
        if self.closed:
            return
        how = describe_exit(returncode)
        kind = "hang" if process.killed else "crash"
        if kind == "crash":
            self._health.crashes += 1
        lines = tuple(process.output)
        self._health.last_fault = (f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {kind}: worker "
                                   f"{process.pid} {how}")
        self._health.last_output = lines
        engine_log.error("instance %d: worker process %s %s%s", self.index, process.pid, how,
                         "; its last output:\n  " + "\n  ".join(lines[-10:]) if lines else "")
        record_fault(fault_log_path(self.settings.fault_log), kind=kind, instance=self.index,
                     model=self.model_path, exit=how, pid=process.pid, output=lines)
        self.faults_in_a_row += 1
        self._announce_restart()  # before the run's end, so its client sees the state
        run = self.active
        if run is not None and not run.ended:
            run.fail_now("runtime_crashed", f"the RKLLM runtime crashed ({how}) during this "
                         "request; the model is reloading")
        self._restarting = asyncio.create_task(self._restart())

    def _backoff(self) -> float:
        if self.faults_in_a_row <= 1:
            return 0.0
        delay = self.settings.restart_backoff_s * 2 ** (self.faults_in_a_row - 2)
        return float(min(self.settings.restart_backoff_max_s, delay))

    def _announce_restart(self) -> float:
        delay = self._backoff()
        reason = (f"the worker process ended ({self._health.last_fault}); fault "
                  f"{self.faults_in_a_row} in a row, "
                  + (f"restarting in {delay:g} s" if delay else "restarting now"))
        self.set_status("restarting", reason)
        if delay:
            engine_log.warning("instance %d: %s", self.index, reason)
        return delay

    async def _restart(self) -> None:
        delay = self._backoff()
        while not self.closed:
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._spawn()
            except Exception as exc:
                self.faults_in_a_row += 1
                self._health.last_fault = (f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} restart "
                                           f"failed: {exc}")
                engine_log.error("instance %d: restarting the worker failed: %s", self.index,
                                 exc)
                delay = self._announce_restart()
                continue
            if self.closed:  # closed while it loaded
                await self._stop_process()
                return
            self._health.restarts += 1
            self.set_status("ok")
            return

    # -- the end -------------------------------------------------------------------
    async def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            await process.stop(CLOSE_S)

    async def close(self) -> None:
        """End any run, then the worker (rkllm_destroy in it, a kill if it hangs)."""
        if self.closed:
            return
        self.closed = True
        if self._restarting is not None:
            self._restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarting
        if self.active is not None:
            self.active.cancel()
        await self._stop_process()
