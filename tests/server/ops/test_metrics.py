"""/metrics through prometheus_client, read back with the library's own parser."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rkstream.config import Settings
from rkstream.core.messages import Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Engine, Job, Outcome
from rkstream.models.pool import Resident
from rkstream.models.table import ModelSpec
from rkstream.scheduler import Scheduler
from rkstream.server.app import make_app
from rkstream.server.ops.metrics import (
    APIS,
    LATENCY_BUCKETS_S,
    METRICS,
    Metrics,
    metrics_handler,
    read_npu_load,
)

from fakes import FakeEngine
from helpers import MS, Sink, WSClient, create

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HAS_PROC = Path("/proc/self/stat").exists()


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family types by name, and every sample by (name, sorted labels)."""
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return types, samples


def scrape(metrics: Metrics) -> tuple[dict[str, str], Samples]:
    return parse(generate_latest(metrics.registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def requests(samples: Samples, status: str) -> float:
    """rkstream_requests_total of ``status``, over every API."""
    return sum(v for (name, labels), v in samples.items()
               if name == "rkstream_requests_total" and ("status", status) in labels)


@dataclass
class Live:
    residents: list[Resident] = field(default_factory=list)
    sockets: list[object] = field(default_factory=list)
    phase: str = "serving"
    server_id: str = "board-1"


def loaded(engine: Engine, scheduler: Scheduler | None = None, name: str = "m") -> Resident:
    """``engine`` as a loaded model called ``name``, with its own queue."""
    spec = ModelSpec(name, Settings(), "fake", math.inf, default=True)
    return Resident(spec, engine, scheduler or Scheduler(engine.instances, max_queue=5),
                    None, 0, None)


def job(rid: str, text: str) -> Job:
    sampling = SamplingSettings(max_tokens=100, temperature=0.0, top_p=1.0, top_k=1,
                                repeat_penalty=1.0, frequency_penalty=0.0,
                                presence_penalty=0.0)
    return Job(request_id=rid, messages=(Message("user", (TextPart(text),)),),
               instructions=None, sampling=sampling)


def test_counters_follow_the_observer_calls() -> None:
    metrics = Metrics()
    metrics.watch(Live(sockets=[object(), object()]))
    types, before = scrape(metrics)
    for status in ("completed", "incomplete", "cancelled", "failed"):
        assert requests(before, status=status) == 0
    metrics.request_done(Outcome("stop", prompt_tokens=5, output_tokens=7, cached_tokens=40),
                         20.0, 0.3, 1.0, "openai_chat")
    metrics.request_done(Outcome("cancelled", prompt_tokens=2), 10.0, None, 0.0)
    metrics.request_done(Outcome("error"), 0.0, None, 0.0)
    metrics.frame(superseded=False)
    metrics.frame(superseded=True)
    metrics.text_gaps([0.02])
    metrics.vision_encode.observe(0.15)
    types, after = scrape(metrics)
    assert types["rkstream_requests"] == "counter"
    assert requests(after, status="completed") == 1
    assert requests(after, status="cancelled") == 1
    assert requests(after, status="failed") == 1
    assert requests(after, status="incomplete") == 0
    assert value(after, "rkstream_prompt_tokens_total") == 7
    assert value(after, "rkstream_cached_prompt_tokens_total") == 40
    assert value(after, "rkstream_generated_tokens_total") == 7
    assert value(after, "rkstream_frames_received_total") == 2
    assert value(after, "rkstream_frames_superseded_total") == 1
    assert value(after, "rkstream_queue_wait_seconds_count") == 3
    assert value(after, "rkstream_queue_wait_seconds_sum") == pytest.approx(0.03)
    assert value(after, "rkstream_time_to_first_token_seconds_count") == 1
    assert value(after, "rkstream_inter_token_seconds_count") == 1
    assert value(after, "rkstream_vision_encode_seconds_count") == 1
    assert value(after, "rkstream_websocket_connections") == 2
    assert value(after, "rkstream_queue_depth") == 0
    assert value(after, "rkstream_running_requests") == 0
    assert 0 < value(after, "rkstream_model_busy_ratio")


def test_histogram_buckets_are_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.02, 0.02, 0.7, 100.0):
        metrics.ttft.observe(seconds)
    types, samples = scrape(metrics)
    assert types["rkstream_time_to_first_token_seconds"] == "histogram"
    buckets = {float(labels[0][1]): v for (name, labels), v in samples.items()
               if name == "rkstream_time_to_first_token_seconds_bucket"}
    assert sorted(buckets) == [*LATENCY_BUCKETS_S, float("inf")]
    counts = [buckets[le] for le in sorted(buckets)]
    assert counts == sorted(counts)  # cumulative: never goes down
    assert buckets[0.001] == 1
    assert buckets[0.025] == 3
    assert buckets[1.0] == 4
    assert buckets[60.0] == 4
    assert buckets[float("inf")] == 5
    assert value(samples, "rkstream_time_to_first_token_seconds_count") == 5
    assert value(samples, "rkstream_time_to_first_token_seconds_sum") == pytest.approx(100.7405)


@pytest.mark.skipif(not HAS_PROC, reason="the process collector reads /proc")
def test_process_metrics_come_with_the_registry() -> None:
    types, samples = scrape(Metrics())
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0
    assert "process_cpu_seconds_total" in {name for name, _ in samples}
    assert types["python_info"] == "gauge"


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.frame(superseded=False)
    assert value(scrape(first)[1], "rkstream_frames_received_total") == 1
    assert value(scrape(second)[1], "rkstream_frames_received_total") == 0
    first.watch(Live())
    with pytest.raises(ValueError):
        first.watch(Live())  # the registry refuses the same gauges twice


def test_npu_load_is_read_per_core(tmp_path: Path) -> None:
    load = tmp_path / "load"
    load.write_text("NPU load:  Core0: 12%, Core1:  0%, Core2: 100%,\n")
    assert read_npu_load(load) == {"0": 0.12, "1": 0.0, "2": 1.0}
    metrics = Metrics(npu_load=load)
    metrics.watch(Live())
    types, samples = scrape(metrics)
    assert types["rkstream_npu_load_ratio"] == "gauge"
    assert value(samples, "rkstream_npu_load_ratio", core="0") == pytest.approx(0.12)
    assert value(samples, "rkstream_npu_load_ratio", core="2") == 1.0


def test_npu_load_is_left_out_when_unreadable(tmp_path: Path) -> None:
    assert read_npu_load(tmp_path / "missing") == {}
    metrics = Metrics(npu_load=tmp_path / "missing")
    metrics.watch(Live())
    types, _ = scrape(metrics)
    assert "rkstream_npu_load_ratio" not in types


async def test_live_gauges_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    fake = FakeEngine(Settings(), delay_s=20 * MS)
    scheduler = Scheduler(fake.instances, max_queue=5, observer=metrics)
    metrics.watch(Live(residents=[loaded(fake, scheduler)]))
    tickets = [scheduler.submit(job(f"r{i}", "a b c"), Sink()) for i in range(3)]
    await asyncio.sleep(30 * MS)
    _, during = scrape(metrics)
    assert value(during, "rkstream_running_requests") == 1
    assert value(during, "rkstream_queue_depth") == 2
    assert 0 < value(during, "rkstream_model_busy_ratio") <= 1
    await asyncio.gather(*(t.outcome for t in tickets))
    _, after = scrape(metrics)
    assert value(after, "rkstream_running_requests") == 0
    assert value(after, "rkstream_queue_depth") == 0
    assert requests(after, status="completed") == 3
    assert value(after, "rkstream_generated_tokens_total") == 9
    assert value(after, "rkstream_inter_token_seconds_count") == 6
    await scheduler.close()


async def test_handler_serves_the_app_registry(aiohttp_client: Any) -> None:
    metrics = Metrics()
    metrics.watch(Live(sockets=[object()]))
    app = web.Application()
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    client = await aiohttp_client(app)
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    _, samples = parse(await response.text())
    assert value(samples, "rkstream_websocket_connections") == 1


async def test_metrics_follow_traffic(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(Settings(), lambda s: FakeEngine(s, 2 * MS)))
    _, before = parse(await (await client.get("/metrics")).text())
    assert requests(before, status="completed") == 0
    conn = WSClient(await client.ws_connect("/ws"))
    await conn.recv()
    await conn.send(create("a", "one two three"))
    await conn.send(create("b", "w " * 100))
    await conn.recv_type("response.output_text.delta")
    await conn.send({"type": "response.cancel", "request_id": "b"})
    await conn.until_done({"a", "b"})
    response = await client.get("/metrics")
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    types, after = parse(await response.text())
    assert requests(after, status="completed") == 1
    assert requests(after, status="cancelled") == 1
    assert value(after, "rkstream_generated_tokens_total") >= 3
    assert value(after, "rkstream_websocket_connections") == 1
    assert value(after, "rkstream_queue_depth") == 0
    assert value(after, "rkstream_running_requests") == 0
    assert value(after, "rkstream_models_loaded") == 1  # the default model
    assert value(after, "rkstream_time_to_first_token_seconds_count") == 1  # b never ran
    assert value(after, "rkstream_inter_token_seconds_count") >= 2
    assert 0 < value(after, "rkstream_model_busy_ratio") <= 1
    assert types["rkstream_vision_encode_seconds"] == "histogram"
    if HAS_PROC:
        assert value(after, "process_resident_memory_bytes") > 0


async def test_two_apps_keep_separate_counts(aiohttp_client: Any) -> None:
    first = await aiohttp_client(make_app(Settings(), FakeEngine))
    second = await aiohttp_client(make_app(Settings(), FakeEngine))
    conn = WSClient(await first.ws_connect("/ws"))
    await conn.recv()
    await conn.send(create("a", "one"))
    await conn.until_done({"a"})
    _, one = parse(await (await first.get("/metrics")).text())
    _, two = parse(await (await second.get("/metrics")).text())
    assert requests(one, status="completed") == 1
    assert requests(two, status="completed") == 0


def test_instance_health_is_read_at_scrape_time() -> None:
    engine = FakeEngine(replace(Settings(), instances=2))
    metrics = Metrics()
    live = Live(residents=[loaded(engine, name="chat")])
    metrics.watch(live)
    engine._instances[1].state.crashes = 3
    engine._instances[1].state.restarts = 3
    engine._instances[1].set_status("restarting")
    _, samples = scrape(metrics)
    assert value(samples, "rkstream_instance_up", model="chat", instance="0") == 1
    assert value(samples, "rkstream_instance_up", model="chat", instance="1") == 0
    assert value(samples, "rkstream_runtime_crashes_total", model="chat", instance="1") == 3
    assert value(samples, "rkstream_worker_restarts_total", model="chat", instance="1") == 3
    assert value(samples, "rkstream_runtime_hangs_total", model="chat", instance="0") == 0
    assert value(samples, "rkstream_models_loaded") == 1
    # Each loaded model's instances are labelled with its name; none when none is loaded.
    live.residents.append(loaded(FakeEngine(Settings()), name="vision"))
    _, samples = scrape(metrics)
    assert value(samples, "rkstream_instance_up", model="vision", instance="0") == 1
    assert value(samples, "rkstream_models_loaded") == 2
    live.residents.clear()
    _, samples = scrape(metrics)
    assert value(samples, "rkstream_models_loaded") == 0
    assert not any(name == "rkstream_instance_up" for name, _ in samples)


def test_requests_are_counted_by_api() -> None:
    metrics = Metrics()
    metrics.request_done(Outcome("stop"), 1.0, 0.1, 0.1, "openai_chat")
    metrics.request_done(Outcome("stop"), 1.0, 0.1, 0.1, "ws")
    metrics.request_done(Outcome("stop"), 1.0, 0.1, 0.1, "ws")
    _, samples = scrape(metrics)
    assert value(samples, "rkstream_requests_total", api="ws", status="completed") == 2
    assert value(samples, "rkstream_requests_total", api="openai_chat", status="completed") == 1
    assert value(samples, "rkstream_requests_total", api="rkllm_chat", status="failed") == 0


def test_every_front_end_has_its_api_label() -> None:
    from rkstream.server.http.ollama.routes import OllamaDialect
    from rkstream.server.http.openai.dialect import OpenAIDialect
    from rkstream.server.http.rkllm_demo import DemoDialect
    labels = {OpenAIDialect(True).api, OpenAIDialect(False).api, OllamaDialect(True).api,
              OllamaDialect(False).api, DemoDialect().api, "ws"}
    assert labels <= set(APIS)
