"""Models loaded on demand, kept while used, unloaded when idle: Ollama's lifecycle.

- A request takes a :class:`Lease` on its model (:meth:`ModelPool.acquire`);
  if the model is not loaded it waits while it loads. Loads happen one at a
  time, in the order they were asked for.
- While a lease is held (the request is queued or running) the model is never
  unloaded. When the last lease ends, the model's keep-alive starts: 0 unloads
  it at once, a negative value keeps it, anything else unloads it that long
  after (Ollama's ``keep_alive``; a request's own value replaces the model's).
- A load that does not fit (``pool.max_loaded`` models, or the
  ``pool.memory_budget`` against the models' file sizes) first unloads idle
  models, the one that expires first going first (kept ones last, then by
  name). While every other model is busy the load waits: the busy model with
  the shortest keep-alive takes no new requests (they wait behind the load)
  and unloads when its last one ends, so steady traffic to one model cannot
  starve a load.
- Each resident RKLLM model gets its own NPU memory domain when more than
  one is configured; RKLLM models take turns on the NPU
  (:mod:`rkstream.core.npu_gate`); vision encoders are loaded once per file
  and shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from rkstream.config import Settings, parsed
from rkstream.core.keep_alive import FOREVER
from rkstream.core.npu_gate import NpuGate
from rkstream.engines.base import Engine
from rkstream.errors import SHUTTING_DOWN, RequestError, RkstreamError
from rkstream.log import server_log
from rkstream.models.encoders import SharedEncoders, VisionFactory
from rkstream.models.table import ModelSpec, ModelTable
from rkstream.scheduler import Observer, Scheduler
from rkstream.vision.service import VisionService

T = TypeVar("T")
EngineFactory = Callable[[Settings], Engine]


@dataclass
class Resident:
    """A loaded model: its engine, its own queue, and its (shared) vision encoder."""

    spec: ModelSpec
    engine: Engine
    scheduler: Scheduler
    vision: VisionService | None
    size: int
    domain: int | None  # the NPU memory domain it was given (RKLLM)
    loaded_at: float = field(default_factory=time.time)
    load_ms: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class _Slot:
    spec: ModelSpec
    keep_alive_s: float
    resident: Resident | None = None
    loading: asyncio.Task[Resident] | None = None
    unloading: asyncio.Task[None] | None = None
    users: int = 0
    expires_at: float | None = None  # time.time(); inf = kept; None while in use
    timer: asyncio.TimerHandle | None = None
    last_error: str | None = None
    # Chosen to make room while busy: it takes no new requests, unloads when its
    # last one ends, and ``gone`` is set then (new requests wait for it).
    draining: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class Lease:
    """A request's hold on a loaded model; :meth:`release` once it has ended."""

    def __init__(self, pool: ModelPool, slot: _Slot, waited_ms: float) -> None:
        assert slot.resident is not None
        self._pool = pool
        self._slot = slot
        self.model = slot.resident
        self.load_ms = waited_ms  # how long the request waited for the model (0: loaded)
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._slot)


def available_memory() -> int | None:
    """MemAvailable in bytes, or None where /proc/meminfo is unreadable."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class ModelPool:
    """Every configured model, loaded when asked for.

    Args:
        settings: the effective settings (the ``[pool]`` section and the table).
        engine_factory: builds (not loads) an engine from a model's settings.
        vision_factory: loads a vision encoder from a model's settings (blocking).
        observer: told about every request (the metrics).
        memory: MemAvailable now, for an automatic ``pool.memory_budget``.
    """

    def __init__(self, settings: Settings, engine_factory: EngineFactory,
                 vision_factory: VisionFactory, observer: Observer | None = None,
                 memory: Callable[[], int | None] = available_memory) -> None:
        self.settings = settings
        self.table = ModelTable(settings)
        self.gate = NpuGate(settings.pool.npu_models_at_once)
        self._engine_factory = engine_factory
        self._observer = observer
        budget = parsed("pool.memory_budget", settings.pool.memory_budget)
        if budget is None:
            available = memory()
            budget = int(available * 0.9) if available else None
        self.memory_budget: int | None = budget
        self._slots = {spec.name: _Slot(spec, spec.keep_alive_s) for spec in self.table}
        self._encoders = SharedEncoders(vision_factory)
        self._loads: list[_Slot] = []  # loads asked for, in order; the first is running
        self._lock = asyncio.Lock()  # one load (with its unloads) at a time
        self._changed = asyncio.Event()  # a lease ended or a model unloaded
        self._tasks: set[asyncio.Task[Any]] = set()
        self._npu_models = sum(spec.on_npu for spec in self.table)
        self.closing = False

    # -- what is where --------------------------------------------------------------
    def resident(self, name: str | None) -> Resident | None:
        spec = self.table.lookup(name)
        return self._slots[spec.name].resident if spec is not None else None

    @property
    def residents(self) -> list[Resident]:
        return [slot.resident for slot in self._slots.values() if slot.resident is not None]

    def status(self, name: str) -> str:
        """``loaded``, ``loading``, ``failed`` (the last load) or ``unloaded``."""
        slot = self._slots[name]
        if slot.resident is not None:
            return "loaded"
        if slot.loading is not None:
            return "loading"
        return "failed" if slot.last_error is not None else "unloaded"

    def last_error(self, name: str) -> str | None:
        return self._slots[name].last_error

    def expires_at(self, name: str) -> float | None:
        """When the model unloads (time.time(); inf = kept; None = in use now)."""
        return self._slots[name].expires_at

    def keep_alive_s(self, name: str) -> float:
        """How long the model stays loaded after its last request now."""
        return self._slots[name].keep_alive_s

    def used_bytes(self) -> int:
        return sum(r.size for r in self.residents) + self._encoders.used_bytes()

    # -- leases ---------------------------------------------------------------------
    def lease_now(self, name: str | None, keep_alive_s: float | None = None) -> Lease | None:
        """A lease on ``name`` if it is loaded (no waiting), else None.

        Raises:
            RequestError: ``model_not_found``, ``shutting_down``.
        """
        slot = self._slot(name)
        if slot.resident is None or slot.unloading is not None or slot.draining:
            return None
        self._use(slot, keep_alive_s)
        return Lease(self, slot, 0.0)

    async def acquire(self, name: str | None, keep_alive_s: float | None = None,
                      on_wait: Callable[[int], None] | None = None) -> Lease:
        """A lease on ``name``, loading it first if needed.

        Args:
            keep_alive_s: the request's keep_alive (None: the model's default); the
                latest request's decides how long the model stays after it.
            on_wait: called once if the request has to wait for a load, with the
                number of loads ahead of it (0 = its model is loading now).

        Raises:
            RequestError: ``model_not_found``, ``model_load_failed``,
                ``insufficient_memory``, ``shutting_down``.
        """
        slot = self._slot(name)
        started = time.perf_counter()
        told = False
        while slot.draining:  # it makes room for an earlier load: after that, again
            if on_wait is not None and not told:
                told = True
                on_wait(len(self._loads))
            await slot.gone.wait()
            if self.closing:
                raise RequestError("shutting_down", SHUTTING_DOWN)
        self._use(slot, keep_alive_s)
        if slot.resident is not None and slot.unloading is None and not told:
            return Lease(self, slot, 0.0)  # loaded: no wait
        try:
            while slot.resident is None or slot.unloading is not None:
                if self.closing:
                    raise RequestError("shutting_down", SHUTTING_DOWN)
                if slot.loading is None:
                    slot.loading = self._spawn(self._load(slot))
                    self._loads.append(slot)
                if on_wait is not None and not told:
                    told = True
                    on_wait(self._loads.index(slot))
                await asyncio.shield(slot.loading)
        except BaseException:
            self._release(slot)
            raise
        return Lease(self, slot, (time.perf_counter() - started) * 1000.0)

    async def preload(self, name: str | None = None) -> Resident:
        """Load ``name`` (the default model) without a request, as at start."""
        lease = await self.acquire(name)
        lease.release()
        return lease.model

    def unload_when_idle(self, name: str | None) -> None:
        """Ollama's empty request with ``keep_alive: 0``: unload now, or as soon
        as the requests using it have ended.

        Raises:
            RequestError: ``model_not_found``.
        """
        slot = self._slot(name, closing_ok=True)
        slot.keep_alive_s = 0.0
        if slot.resident is not None and slot.users == 0:
            self._unload_later(slot, "asked to unload")

    def _slot(self, name: str | None, *, closing_ok: bool = False) -> _Slot:
        if self.closing and not closing_ok:
            raise RequestError("shutting_down", SHUTTING_DOWN)
        return self._slots[self.table.find(name).name]

    def _use(self, slot: _Slot, keep_alive_s: float | None) -> None:
        # As Ollama: each request sets the keep-alive, its own or the model's default.
        slot.keep_alive_s = keep_alive_s if keep_alive_s is not None else slot.spec.keep_alive_s
        slot.users += 1
        slot.expires_at = None
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def _release(self, slot: _Slot) -> None:
        slot.users -= 1
        self._changed.set()
        if slot.users > 0 or slot.resident is None:
            return
        keep = slot.keep_alive_s
        if slot.draining:
            slot.expires_at = time.time()
            self._unload_later(slot, "to make room for a waiting load")
        elif keep == 0:
            slot.expires_at = time.time()
            self._unload_later(slot, "keep_alive 0")
        elif keep == FOREVER:
            slot.expires_at = FOREVER
        else:
            slot.expires_at = time.time() + keep
            slot.timer = asyncio.get_running_loop().call_later(
                keep, self._unload_later, slot, f"idle for {keep:g} s")

    # -- loading ----------------------------------------------------------------------
    async def _load(self, slot: _Slot) -> Resident:
        spec = slot.spec
        try:
            async with self._lock:
                if slot.unloading is not None:
                    await slot.unloading
                await self._make_room(slot)
                started = time.perf_counter()
                server_log.info("loading model %s (%s)", spec.name, spec.model_file or "?")
                resident = await self._bring_up(spec)
                resident.load_ms = (time.perf_counter() - started) * 1000.0
                slot.resident, slot.last_error = resident, None
                server_log.info("model %s ready on %d instance(s) in %.0f ms", spec.name,
                                len(resident.engine.instances), resident.load_ms)
                return resident
        except RequestError as exc:
            slot.last_error = exc.message
            raise
        except RkstreamError as exc:
            slot.last_error = f"loading the model {spec.name!r} failed: {exc}"
            server_log.error("%s", slot.last_error)
            raise RequestError("model_load_failed", slot.last_error) from exc
        except Exception as exc:
            slot.last_error = f"loading the model {spec.name!r} failed: {type(exc).__name__}: {exc}"
            server_log.exception("loading model %s failed", spec.name)
            raise RequestError("model_load_failed", slot.last_error) from exc
        finally:
            slot.loading = None
            self._loads.remove(slot)

    async def _bring_up(self, spec: ModelSpec) -> Resident:
        loop = asyncio.get_running_loop()
        settings, domain = self._with_domain(spec)
        # The factory may load a library to decide which engine fits: off the loop.
        engine = await loop.run_in_executor(None, self._engine_factory, settings)
        try:
            await engine.load()
            vision = await self._encoders.take(spec, settings) if spec.encoder_file else None
        except BaseException:
            await engine.close()
            raise
        limits = settings.limits
        gate = (self.gate, spec.name) if engine.info.engine == "rkllm" else None
        scheduler = Scheduler(engine.instances, limits.max_queue, self._observer,
                              limits.request_timeout_s, gate=gate)
        return Resident(spec, engine, scheduler, vision, spec.size_bytes(),
                        domain if engine.info.engine == "rkllm" else None)

    def _with_domain(self, spec: ModelSpec) -> tuple[Settings, int | None]:
        """Settings with an NPU memory domain of its own, when several RKLLM models
        may be resident: the lowest one free, from 1 (0 is left to RKNN vision
        encoders, which cannot choose theirs)."""
        settings = spec.settings
        if not spec.on_npu:
            return settings, None
        if self._npu_models < 2:
            return settings, settings.rkllm.base_domain_id
        taken = {r.domain for r in self.residents if r.domain is not None}
        domain = next(d for d in range(1, 17) if d not in taken) if len(taken) < 15 else 15
        return replace(settings, rkllm=replace(settings.rkllm, base_domain_id=domain)), domain

    def _fits(self, slot: _Slot) -> tuple[bool, int]:
        spec = slot.spec
        need = spec.size_bytes() + self._encoders.extra_bytes(spec)
        limit = self.settings.pool.max_loaded
        count_ok = not limit or len(self.residents) < limit
        budget_ok = self.memory_budget is None or self.used_bytes() + need <= self.memory_budget
        return count_ok and budget_ok, need

    async def _make_room(self, slot: _Slot) -> None:
        """Unload idle models until ``slot`` fits; wait while the others are busy."""
        fits, need = self._fits(slot)
        if self.memory_budget is not None and need > self.memory_budget:
            raise RequestError(
                "insufficient_memory",
                f"the model {slot.spec.name!r} needs about {need / 2**20:.0f} MiB (its files) "
                f"and pool.memory_budget is {self.memory_budget / 2**20:.0f} MiB; raise the "
                "budget or use a smaller model")
        while not fits:
            victim = self.victim()
            if victim is not None:
                await self._unload(victim, "to make room for " + slot.spec.name)
            else:
                # Every loaded model is busy: the one that would expire first takes
                # no new requests and unloads when its last one ends, so a busy
                # model cannot keep this load waiting for ever.
                busy = self.victim(busy=True)
                if busy is not None and not busy.draining:
                    busy.draining, busy.gone = True, asyncio.Event()
                    server_log.info("model %s waits for %s to finish its requests",
                                    slot.spec.name, busy.spec.name)
                self._changed.clear()
                await self._changed.wait()
            if self.closing:
                raise RequestError("shutting_down", SHUTTING_DOWN)
            fits, need = self._fits(slot)

    def victim(self, *, busy: bool = False) -> _Slot | None:
        """The idle model to unload first: the one that expires first, kept ones
        last, then by name (what Ollama does). With ``busy``, among the models in
        use, by their keep-alive."""
        found = [s for s in self._slots.values()
                 if s.resident is not None and (s.users > 0) == busy and s.unloading is None]
        if not found:
            return None
        if busy:
            return min(found, key=lambda s: (s.keep_alive_s, s.spec.name))
        return min(found, key=lambda s: (s.expires_at if s.expires_at is not None else math.inf,
                                         s.spec.name))

    # -- unloading --------------------------------------------------------------------
    def _unload_later(self, slot: _Slot, why: str) -> None:
        slot.timer = None
        if slot.resident is None or slot.users > 0 or slot.unloading is not None:
            return
        self._spawn(self._unload(slot, why))

    async def _unload(self, slot: _Slot, why: str) -> None:
        resident = slot.resident
        if resident is None or slot.unloading is not None:
            return
        slot.unloading = asyncio.current_task()
        try:
            await resident.scheduler.close()
            if resident.vision is not None:
                await self._encoders.drop(resident.vision)
            await resident.engine.close()
            server_log.info("model %s unloaded (%s)", resident.name, why)
        finally:
            slot.resident, slot.unloading, slot.expires_at = None, None, None
            slot.draining = False
            slot.gone.set()
            self._changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)
        return task

    async def close(self) -> None:
        """Stop loading, end every model's requests and free every model."""
        self.closing = True
        self._changed.set()
        for slot in self._slots.values():
            slot.gone.set()
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.loading is not None:
                slot.loading.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self._slots.values():
            if slot.resident is not None:
                with contextlib.suppress(Exception):
                    await self._unload(slot, "shutdown")


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Load failures reach the requests that wait; an unwatched one is logged already.
    if not task.cancelled():
        task.exception()
