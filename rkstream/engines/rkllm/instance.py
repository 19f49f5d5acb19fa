"""One RKLLM instance as the scheduler sees it, wherever its handle lives.

This is the loop side, shared by both isolation modes: it plans each run
against what the instance's KV cache holds (:mod:`~rkstream.engines.kv`),
turns a job into an :class:`~rkstream.engines.rkllm.native.Order`, watches
the run (:mod:`~rkstream.engines.watchdog`) and keeps the instance's
health. Where the handle lives is the subclass's business:
:class:`~rkstream.engines.rkllm.in_thread.ThreadInstance` (an owner thread
in this process) or :class:`~rkstream.engines.rkllm.worker.instance.WorkerInstance`
(a worker process).
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import Callable

from rkstream.chat.format import tool_schema
from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.embeddings import ImageTags
from rkstream.engines.base import (
    EngineInstance,
    InstanceHealth,
    InstanceStatus,
    Job,
    Outcome,
    TextSink,
)
from rkstream.engines.kv import KVPlan, KVText, kv_mode
from rkstream.engines.prompt import render_prompt
from rkstream.engines.rkllm.loader import RuntimeLibrary
from rkstream.engines.rkllm.native import EmbedEnd, NativeEnd, Order
from rkstream.engines.rkllm.prompt_cache import LoadedCache, SystemBlock, cached_tokens
from rkstream.engines.run import BridgedRun, RunFacts
from rkstream.engines.text import estimate_tokens
from rkstream.engines.watchdog import Watchdog, WatchdogLimits
from rkstream.errors import RequestError
from rkstream.log import engine_log


class RKLLMRun(BridgedRun):
    """A run on one RKLLM instance.

    Attributes:
        order: what the native side runs.
        plan: the KV plan, when rkstream renders the prompt itself.
        fault: (code, message) once the watchdog or a dead worker decided how
            the run fails, whatever the native side reports later.
    """

    def __init__(self, instance: RKLLMInstance, job: Job, sink: TextSink,
                 loop: asyncio.AbstractEventLoop, order: Order,
                 plan: KVPlan | None) -> None:
        super().__init__(job, sink, loop, order.max_tokens)
        self._instance = instance
        self.order = order
        self.plan = plan
        self.prompt_cached = 0  # tokens the system prompt cache covers
        self.fault: tuple[str, str] | None = None
        self.watchdog: Watchdog | None = None

    def facts(self, end: NativeEnd) -> RunFacts:
        """The run's facts from what the native side reported."""
        facts = RunFacts(tokens=end.tokens, prompt_tokens=0, prompt_ms=None,
                         predicted_ms=None, first_text_s=self.first_text_s,
                         start_s=self.start_s, end_s=time.perf_counter(),
                         cached_tokens=max(end.cached_tokens, self.prompt_cached))
        if end.perf is not None:
            facts.prompt_ms, facts.prompt_tokens, facts.predicted_ms, _ = end.perf
        if end.failed:
            facts.error_code = "runtime_error"
            facts.error_message = end.exception or (
                f"the RKLLM runtime reported an error during generation (rkllm_run "
                f"returned {end.ret}); see the server log")
        return facts

    def fail_now(self, code: str, message: str) -> None:
        """End the run at once with ``code``: its runtime died or cannot be stopped."""
        self.fault = (code, message)
        self.end_now(self.facts(NativeEnd(ret=0, tokens=len(self.generated))))

    def _outcome(self, facts: RunFacts) -> Outcome:
        if self.fault is not None:
            facts.error_code, facts.error_message = self.fault
        return super()._outcome(facts)

    def _settle(self, facts: RunFacts, outcome: Outcome) -> None:
        self._instance.run_ended(self, facts)

    def _abort(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stopping("the run was told to stop (a cancel or a stop sequence)")
        self._instance.abort(self)


class RKLLMInstance(EngineInstance, abc.ABC):
    """The loop side of one RKLLM handle.

    Args:
        runtime: the loaded library and its ABI module.
        settings: the [rkllm] settings.
        defaults: sampling defaults for the init-time RKLLMParam.
        model_path: a checked model path.
        index: which instance this is (for logs, thread and worker names).
        image_tags: the vision encoder's image tags, or None without one.
        raw_prompts: rkstream renders prompts itself (a chat format).
        keep_rewritten: see :class:`~rkstream.engines.kv.KVText`.
        system_cache: the system block to keep as a prompt cache, or None.
    """

    def __init__(self, runtime: RuntimeLibrary, settings: RKLLMSettings,
                 defaults: SamplingDefaults, model_path: str, index: int,
                 image_tags: ImageTags | None = None, *, raw_prompts: bool = False,
                 keep_rewritten: bool = True, system_cache: SystemBlock | None = None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.defaults = defaults
        self.model_path = model_path
        self.image_tags = image_tags
        self.index = index
        self.raw_prompts = raw_prompts
        self.system_block = system_cache if raw_prompts else None
        self.kv = KVText(kv_mode(settings.kv_reuse),
                         end_of_turn_kept=settings.kv_end_of_turn == "kept",
                         keep_rewritten=keep_rewritten)
        self.prompt_cache: LoadedCache | None = None  # loaded into the handle
        self.limits = WatchdogLimits(settings.watchdog_prefill_s,
                                     settings.watchdog_prefill_per_1k_tokens_s,
                                     settings.watchdog_token_s, settings.watchdog_grace_s)
        self.active: RKLLMRun | None = None
        self._health = InstanceHealth()
        self._listeners: list[Callable[[], None]] = []
        self.closed = False

    # -- health --------------------------------------------------------------------
    def health(self) -> InstanceHealth:
        return self._health

    def watch_health(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def set_status(self, status: InstanceStatus, reason: str = "") -> None:
        changed = status != self._health.status
        self._health.status, self._health.reason = status, reason
        if changed:
            for listener in list(self._listeners):
                listener()

    # -- runs ------------------------------------------------------------------------
    def affinity(self, job: Job) -> int:
        if job.prompt is None or not self.raw_prompts:
            return 0
        return self.kv.match(job.prompt)

    def _order(self, job: Job) -> tuple[Order, KVPlan | None]:
        max_tokens = job.sampling.max_tokens
        if not self.runtime.caps.per_run_max_new_tokens:  # the init value is a hard cap
            max_tokens = min(max_tokens, self.settings.max_new_tokens)
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
        share = 0.0
        if plan is not None and not plan.clear and plan.reused:
            # history: the whole cache is the prompt's prefix; runtime: the share
            # of it that matches, an estimate (the runtime does not say).
            share = 1.0 if plan.keep_history else plan.reused / max(1, plan.prompt_chars)
        own_template = job.prompt is None  # the runtime applies the model's template
        tools_json = (json.dumps([tool_schema(t) for t in job.tools], ensure_ascii=False)
                      if own_template and job.tools else None)
        order = Order(prompt=prompt, role=role, sampling=job.sampling, max_tokens=max_tokens,
                      images=images, image_tags=job.image_tags,
                      keep_history=plan is not None and plan.keep_history,
                      clear=plan is not None and plan.clear, count_share=share,
                      enable_thinking=own_template and bool(job.enable_thinking),
                      tools_json=tools_json)
        return order, plan

    def start(self, job: Job, sink: TextSink) -> RKLLMRun:
        order, plan = self._order(job)
        loop = asyncio.get_running_loop()
        run = RKLLMRun(self, job, sink, loop, order, plan)
        if plan is not None:
            # a run that starts the cache afresh with the system block skips it
            run.prompt_cached = cached_tokens(self.prompt_cache, plan)
        prompt_tokens = estimate_tokens(order.prompt) + sum(
            image.embedding.shape[0] for image in order.images)
        run.watchdog = Watchdog(loop, self.limits, prompt_tokens, lambda: run.last_text_s,
                                lambda why: self._stalled(run, why),
                                lambda why: self.stuck(run, why))
        self.active = run
        run.start_s = time.perf_counter()
        self.launch(run)
        return run

    def run_ended(self, run: RKLLMRun, facts: RunFacts) -> None:
        """On the loop, once the run's end is known: the KV cache's contents."""
        if run.watchdog is not None:
            run.watchdog.done()
        if self.active is run:
            self.active = None
        if run.plan is not None:
            # Cut short by us (stop, max_tokens, cancel) or by the runtime's own limit?
            cut = run.stop_requested or run.cancelled or facts.tokens >= run.max_tokens
            end_of_turn = run.job.prompt.end_of_turn if run.job.prompt is not None else ""
            self.kv.settle(run.plan, "".join(run.generated), natural_end=not cut,
                           failed=facts.error_code is not None, end_of_turn=end_of_turn)

    def _stalled(self, run: RKLLMRun, why: str) -> None:
        self._health.hangs += 1
        self._health.last_fault = f"{_now()} hang: {why}"
        engine_log.error("instance %d: %s; aborting the run", self.index, why)
        run.fault = ("runtime_hung", f"{why}; the run was stopped")
        self.abort(run)

    # -- embeddings ------------------------------------------------------------------
    async def embed(self, text: str) -> tuple[list[float], int]:
        """One L2-normalised embedding of ``text`` and the tokens it read.

        The native side runs it in turn with this instance's generations (its
        owner thread or worker takes one at a time), never alongside one. The
        run clears the KV cache and leaves ``text`` in it, so the cache is
        marked unknown when the order is given (a generation planned after it
        runs after it) and again when it ends (a generation before it has
        settled by then): the next generation starts from a cleared cache.

        Raises:
            RequestError: ``runtime_error`` (the runtime gave no hidden states) or
                ``runtime_crashed`` (the worker died).
        """
        self.kv.held = None
        try:
            end = await self.embed_native(text)
        finally:
            self.kv.held = None
        if end.vector is None:
            raise RequestError("runtime_error", end.error or "the embedding failed")
        return end.vector, end.tokens

    @abc.abstractmethod
    async def embed_native(self, text: str) -> EmbedEnd:
        """Run :meth:`NativeModel.embed` where the handle lives, after what is queued."""

    # -- for the isolation modes ---------------------------------------------------
    @abc.abstractmethod
    def launch(self, run: RKLLMRun) -> None:
        """Hand ``run.order`` to the native side; never raises (a failure ends the run)."""

    @abc.abstractmethod
    def abort(self, run: RKLLMRun) -> None:
        """Tell the native side to stop ``run`` if it is still running (on the loop)."""

    @abc.abstractmethod
    def stuck(self, run: RKLLMRun, why: str) -> None:
        """The runtime ignored an abort for the grace period: end ``run`` at once."""

    @abc.abstractmethod
    async def load(self) -> None:
        """Load the model (rkllm_init); raises EngineInitError."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
