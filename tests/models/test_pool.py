"""The model pool on fake engines: load on demand, keep_alive, the unload order,
the count limit and memory budget, NPU domains, shared encoders, failures."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from rkstream.config import Settings
from rkstream.config.settings import ModelEntry, PoolSettings
from rkstream.core.keep_alive import FOREVER
from rkstream.engines.base import ModelInfo
from rkstream.errors import EngineInitError, RequestError
from rkstream.models.pool import ModelPool
from rkstream.vision.service import VisionService

from fakes import Calls, FakeEngine
from helpers import MS


class NpuFake(FakeEngine):
    """A fake that says it runs on the RKLLM runtime (so it shares the NPU)."""

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(id="npu", engine="rkllm", context_length=1024)


class Models:
    """Engines built per model file, with what each was given."""

    def __init__(self, fail: set[str] | None = None, delay_s: float = 0.0) -> None:
        self.calls: dict[str, Calls] = {}
        self.settings: dict[str, Settings] = {}
        self.fail = fail or set()
        self.delay_s = delay_s

    def __call__(self, settings: Settings) -> FakeEngine:
        path = settings.rkllm.model if settings.engine == "rkllm" else settings.llamacpp.model
        name = Path(path).stem
        if name in self.fail:
            raise EngineInitError(f"{path}: injected load failure")
        self.settings[name] = settings
        calls = self.calls.setdefault(name, Calls())
        kind = NpuFake if settings.engine == "rkllm" else FakeEngine
        return kind(settings, self.delay_s, calls)

    def loads(self, name: str) -> int:
        return self.calls[name].loads if name in self.calls else 0

    def closes(self, name: str) -> int:
        return self.calls[name].closes if name in self.calls else 0


class Encoder:
    """Stands in for a VisionService: counts closes."""

    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


def model_files(tmp_path: Path, **sizes: int) -> dict[str, str]:
    """Model files of the given sizes in bytes, by name (``a=10`` → a.gguf,
    ``x_rkllm=10`` → x.rkllm)."""
    out = {}
    for name, size in sizes.items():
        path = tmp_path / (name.replace("_", ".") if "_" in name else f"{name}.gguf")
        path.write_bytes(b"\0" * size)
        out[name] = str(path)
    return out


def settings_with(files: dict[str, str], **pool: Any) -> Settings:
    """The files as [models.<name>] entries; the first is the default."""
    entries = {name: ModelEntry(model=path) for name, path in files.items()}
    first = next(iter(files))
    return replace(Settings(), models=entries,
                   pool=replace(PoolSettings(), default_model=first, **pool))


def make_pool(settings: Settings, models: Models, encoders: list[Encoder] | None = None
              ) -> ModelPool:
    made = encoders if encoders is not None else []

    def vision(settings: Settings) -> VisionService:
        made.append(Encoder())
        return cast(VisionService, made[-1])

    return ModelPool(settings, models, vision, memory=lambda: None)


async def settle() -> None:
    """Let spawned unloads run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_model_loads_on_its_first_request_and_stays(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), models)
    assert pool.lease_now("b") is None and pool.status("b") == "unloaded"
    lease = await pool.acquire("b")
    assert lease.model.name == "b" and lease.load_ms > 0 and models.loads("b") == 1
    again = await pool.acquire("b")
    assert again.load_ms == 0 or again.load_ms < lease.load_ms
    assert models.loads("b") == 1 and pool.status("b") == "loaded"
    lease.release()
    again.release()
    await pool.close()
    assert models.closes("b") == 1


async def test_unknown_names_are_refused_and_the_default_answers_no_name(
        tmp_path: Path) -> None:
    pool = make_pool(settings_with(model_files(tmp_path, a=10)), Models())
    with pytest.raises(RequestError) as refused:
        await pool.acquire("gpt-4")
    assert refused.value.code == "model_not_found" and "'a'" in refused.value.message
    lease = await pool.acquire(None)
    assert lease.model.name == "a"
    assert (await pool.acquire("A:latest")).model.name == "a"  # Ollama's spelling
    await pool.close()


async def test_keep_alive_zero_unloads_after_the_last_lease(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), models)
    first = await pool.acquire("b")
    second = await pool.acquire("b", keep_alive_s=0)  # the latest request decides
    first.release()
    await settle()
    assert pool.status("b") == "loaded"  # still in use
    second.release()
    await settle()
    assert pool.status("b") == "unloaded" and models.closes("b") == 1
    await pool.close()


async def test_a_request_without_keep_alive_restores_the_default(tmp_path: Path) -> None:
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), Models())
    first = await pool.acquire("b", keep_alive_s=0)
    second = await pool.acquire("b")
    assert pool.keep_alive_s("b") == 300
    first.release()
    second.release()
    await settle()
    assert pool.status("b") == "loaded"
    await pool.close()


async def test_a_keep_alive_in_seconds_unloads_when_it_runs_out(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), models)
    lease = await pool.acquire("b", keep_alive_s=30 * MS)
    lease.release()
    expires = pool.expires_at("b")
    assert expires is not None and expires != FOREVER
    await asyncio.sleep(10 * MS)
    assert pool.status("b") == "loaded"
    await asyncio.sleep(60 * MS)
    assert pool.status("b") == "unloaded" and pool.expires_at("b") is None
    await pool.close()


async def test_a_new_request_cancels_the_pending_unload(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), models)
    (await pool.acquire("b", keep_alive_s=30 * MS)).release()
    held = await pool.acquire("b", keep_alive_s=FOREVER)
    await asyncio.sleep(60 * MS)
    assert pool.status("b") == "loaded" and models.loads("b") == 1
    held.release()
    assert pool.expires_at("b") == math.inf
    await pool.close()


async def test_the_default_model_is_kept(tmp_path: Path) -> None:
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), Models())
    await pool.preload()
    assert pool.expires_at("a") == FOREVER and pool.keep_alive_s("b") == 5 * 60
    await pool.close()


async def test_at_the_count_limit_the_idle_model_that_expires_first_goes(
        tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10, c=10, d=10),
                                   max_loaded=3), models)
    await pool.preload()  # a: kept
    (await pool.acquire("b", keep_alive_s=600)).release()
    (await pool.acquire("c", keep_alive_s=60)).release()  # expires first
    (await pool.acquire("d")).release()
    assert [r.name for r in pool.residents] == ["a", "b", "d"]
    assert models.closes("c") == 1 and models.closes("b") == 0
    await pool.close()


async def test_a_busy_model_is_never_unloaded_the_load_waits(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10), max_loaded=1), models)
    busy = await pool.acquire("a")
    waiting = asyncio.ensure_future(pool.acquire("b"))
    await asyncio.sleep(20 * MS)
    assert not waiting.done() and pool.status("a") == "loaded" and pool.status("b") == "loading"
    busy.release()  # a is idle now (kept, but the only one that can make room)
    lease = await asyncio.wait_for(waiting, 1000 * MS)
    assert lease.model.name == "b" and models.closes("a") == 1
    await pool.close()


async def test_steady_traffic_to_a_busy_model_cannot_starve_a_load(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10), max_loaded=1), models)
    busy = await pool.acquire("a")
    b_wait = asyncio.ensure_future(pool.acquire("b"))
    await asyncio.sleep(20 * MS)
    assert pool.lease_now("a") is None  # a drains: new requests wait behind b's load
    places: list[int] = []
    a_wait = asyncio.ensure_future(pool.acquire("a", on_wait=places.append))
    await asyncio.sleep(20 * MS)
    assert not a_wait.done() and places == [1]
    busy.release()
    b = await asyncio.wait_for(b_wait, 1000 * MS)
    assert b.model.name == "b" and models.closes("a") == 1
    b.release()  # idle: a's load makes room by unloading it
    a = await asyncio.wait_for(a_wait, 1000 * MS)
    assert a.model.name == "a" and models.loads("a") == 2 and models.closes("b") == 1
    a.release()
    await pool.close()


async def test_the_memory_budget_counts_file_sizes(tmp_path: Path) -> None:
    models = Models()
    files = model_files(tmp_path, a=1000, b=1500, c=3000)
    pool = make_pool(settings_with(files, memory_budget="2600", max_loaded=0), models)
    assert pool.memory_budget == 2600
    (await pool.acquire("a")).release()
    (await pool.acquire("b")).release()
    assert pool.used_bytes() == 2500
    with pytest.raises(RequestError) as refused:
        await pool.acquire("c")  # larger than the whole budget
    assert refused.value.code == "insufficient_memory" and refused.value.spec.status == 507
    assert [r.name for r in pool.residents] == ["a", "b"]  # nothing unloaded for it
    await pool.close()


async def test_the_budget_makes_room_by_unloading(tmp_path: Path) -> None:
    models = Models()
    files = model_files(tmp_path, a=1000, b=1500, c=1200)
    pool = make_pool(settings_with(files, memory_budget="2600", max_loaded=0), models)
    await pool.preload()
    (await pool.acquire("b", keep_alive_s=600)).release()
    (await pool.acquire("c")).release()
    assert sorted(r.name for r in pool.residents) == ["a", "c"]  # b went; a is kept
    await pool.close()


async def test_an_automatic_budget_is_most_of_the_memory_available(tmp_path: Path) -> None:
    settings = settings_with(model_files(tmp_path, a=10))
    pool = ModelPool(settings, Models(), lambda s: cast(VisionService, Encoder()),
                     memory=lambda: 1000)
    assert pool.memory_budget == 900


async def test_a_failed_load_is_reported_and_tried_again(tmp_path: Path) -> None:
    models = Models(fail={"b"})
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), models)
    with pytest.raises(RequestError) as failed:
        await pool.acquire("b")
    assert failed.value.code == "model_load_failed"
    assert "injected load failure" in failed.value.message
    assert pool.status("b") == "failed" and "injected" in (pool.last_error("b") or "")
    assert (await pool.acquire("a")).model.name == "a"  # the others still serve
    models.fail.clear()
    assert (await pool.acquire("b")).model.name == "b"  # the next request tries again
    assert pool.status("b") == "loaded" and pool.last_error("b") is None
    await pool.close()


async def test_waiting_requests_are_told_their_place_among_the_loads(tmp_path: Path) -> None:
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10, c=10)), Models())
    places: dict[str, int] = {}

    def told(name: str) -> Callable[[int], None]:
        return lambda n: places.__setitem__(name, n)

    both = await asyncio.gather(pool.acquire("b", on_wait=told("b")),
                                pool.acquire("c", on_wait=told("c")))
    assert places == {"b": 0, "c": 1}
    assert [lease.model.name for lease in both] == ["b", "c"]
    assert pool.lease_now("b") is not None  # loaded: no waiting, no on_wait
    await pool.close()


async def test_a_cancelled_waiter_does_not_stop_the_load(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), models)
    waiter = asyncio.ensure_future(pool.acquire("b"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lease = await pool.acquire("b")
    assert models.loads("b") == 1
    lease.release()
    await pool.close()


async def test_each_npu_model_gets_its_own_domain(tmp_path: Path) -> None:
    models = Models()
    files = model_files(tmp_path, a=10, x_rkllm=10, y_rkllm=10)
    entries = {"a": ModelEntry(model=files["a"]), "x": ModelEntry(model=files["x_rkllm"]),
               "y": ModelEntry(model=files["y_rkllm"])}
    settings = replace(Settings(), models=entries,
                       pool=replace(PoolSettings(), default_model="a"))
    pool = make_pool(settings, models)
    x = await pool.acquire("x")
    y = await pool.acquire("y")
    domains = {name: models.settings[name].rkllm.base_domain_id for name in ("x", "y")}
    assert domains == {"x": 1, "y": 2} and (x.model.domain, y.model.domain) == (1, 2)
    (await pool.acquire("a")).release()
    assert models.settings["a"].rkllm.base_domain_id == -1  # a CPU model: untouched
    x.release()
    pool.unload_when_idle("x")
    await settle()
    (await pool.acquire("x")).release()
    assert models.settings["x"].rkllm.base_domain_id == 1  # freed, taken again
    y.release()
    await pool.close()


async def test_one_npu_model_keeps_its_configured_domain(tmp_path: Path) -> None:
    models = Models()
    files = model_files(tmp_path, a=10, x_rkllm=10)
    settings = replace(Settings(), models={"a": ModelEntry(model=files["a"]),
                                           "x": ModelEntry(model=files["x_rkllm"])},
                       pool=replace(PoolSettings(), default_model="a"))
    pool = make_pool(settings, models)
    (await pool.acquire("x")).release()
    assert models.settings["x"].rkllm.base_domain_id == -1  # auto, as with one model
    await pool.close()


async def test_vision_encoders_are_shared_by_file(tmp_path: Path) -> None:
    models = Models()
    files = model_files(tmp_path, a=10, b=10, c=10)
    encoder = tmp_path / "enc.onnx"
    encoder.write_bytes(b"\0" * 100)
    other = tmp_path / "other.onnx"
    other.write_bytes(b"\0" * 100)
    entries = {"a": ModelEntry(model=files["a"], vision_encoder=str(encoder)),
               "b": ModelEntry(model=files["b"], vision_encoder=str(encoder)),
               "c": ModelEntry(model=files["c"], vision_encoder=str(other))}
    settings = replace(Settings(), models=entries,
                       pool=replace(PoolSettings(), default_model="a", max_loaded=0))
    made: list[Encoder] = []
    pool = make_pool(settings, models, made)
    a, b, c = [await pool.acquire(name) for name in "abc"]
    assert len(made) == 2 and a.model.vision is b.model.vision is not c.model.vision
    assert pool.used_bytes() == 30 + 200  # each encoder counted once
    b.release()
    pool.unload_when_idle("b")
    await settle()
    assert made[0].closed == 0  # a still uses it
    a.release()
    c.release()
    await pool.close()
    assert [e.closed for e in made] == [1, 1]


async def test_unload_when_idle_waits_for_the_requests(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), models)
    lease = await pool.acquire("b")
    pool.unload_when_idle("b")
    await settle()
    assert pool.status("b") == "loaded"
    lease.release()
    await settle()
    assert pool.status("b") == "unloaded"
    with pytest.raises(RequestError):
        pool.unload_when_idle("nope")
    await pool.close()


async def test_close_unloads_everything_and_refuses_new_leases(tmp_path: Path) -> None:
    models = Models()
    pool = make_pool(settings_with(model_files(tmp_path, a=10, b=10)), models)
    await pool.preload()
    (await pool.acquire("b")).release()
    await pool.close()
    assert models.closes("a") == 1 and models.closes("b") == 1 and not pool.residents
    with pytest.raises(RequestError) as refused:
        await pool.acquire("a")
    assert refused.value.code == "shutting_down"
