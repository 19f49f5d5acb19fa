"""Prometheus metrics at /metrics, through prometheus_client.

Each application has its own registry, so several apps in one process (the
tests) do not share counters. Counters and histograms are updated where things
happen (the scheduler, the vision service, connections). The live gauges are
read at scrape time from a ``LiveSource`` (the app state) bound by the app, so
this module needs nothing from ``rkstream.server.state``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rkstream import __version__
from rkstream.engines.base import STATUS_OF, Outcome
from rkstream.models.pool import Resident

# The front ends, as the ``api`` label of rkstream_requests_total (each dialect's ``api``).
APIS = ("ws", "openai_chat", "openai_completions", "openai_responses", "openai_embeddings",
        "anthropic_messages", "ollama_chat", "ollama_generate", "ollama_embed", "rkllm_chat")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0)
# A thumbnail decodes in about a millisecond, a 1080p frame for the encoder in ~10.
DECODE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
NPU_LOAD = Path("/sys/kernel/debug/rknpu/load")


class LiveSource(Protocol):
    """What the live gauges are read from at each scrape; the app state is one."""

    @property
    def residents(self) -> list[Resident]: ...

    @property
    def sockets(self) -> Sized: ...

    @property
    def phase(self) -> str: ...

    @property
    def server_id(self) -> str: ...


# The server's phases (rkstream.server.state.PHASES), as rkstream_server_state's labels.
SERVER_PHASES = ("serving", "draining", "stopping")


def read_npu_load(path: Path = NPU_LOAD) -> dict[str, float]:
    """``NPU load:  Core0: 12%, Core1:  0%, Core2:  0%,`` → ``{"0": 0.12, ...}``.

    Empty when the file cannot be read (not a board, or debugfs is root-only).
    """
    try:
        text = path.read_text()
    except OSError:
        return {}
    cores = {}
    for part in text.split(":", 1)[-1].split(","):
        name, _, value = part.strip().partition(":")
        value = value.strip()
        if name.startswith("Core") and value.endswith("%"):
            cores[name[4:]] = float(value[:-1]) / 100
    return cores


class Metrics:
    """The application's registry and the metrics updated as requests run."""

    def __init__(self, npu_load: Path = NPU_LOAD) -> None:
        self.registry = CollectorRegistry()
        # Passing the registry matters: the default would be the process-wide one.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter("rkstream_requests_total",
                                "Requests by the API that asked and how they ended.",
                                ["api", "status"], registry=self.registry)
        for api in APIS:
            for status in STATUS_OF.values():
                self.requests.labels(api, status)  # every one shows, at 0, from the start
        self.prompt_tokens = Counter("rkstream_prompt_tokens_total", "Prompt tokens prefilled.",
                                     registry=self.registry)
        self.cached_prompt_tokens = Counter(
            "rkstream_cached_prompt_tokens_total",
            "Prompt tokens found in the KV cache, not processed again.",
            registry=self.registry)
        self.generated_tokens = Counter("rkstream_generated_tokens_total",
                                        "Tokens generated.", registry=self.registry)
        self.frames_received = Counter("rkstream_frames_received_total",
                                       "Video frames received.", registry=self.registry)
        self.frames_superseded = Counter(
            "rkstream_frames_superseded_total",
            "Video frames replaced by a newer one before they were used.",
            registry=self.registry)
        self.queue_wait = self._histogram("rkstream_queue_wait_seconds",
                                          "Time from arrival to a model.")
        self.ttft = self._histogram("rkstream_time_to_first_token_seconds",
                                    "Arrival to first text.")
        self.inter_token = self._histogram("rkstream_inter_token_seconds",
                                           "Gap between text pieces.")
        self.vision_encode = self._histogram("rkstream_vision_encode_seconds",
                                             "Decode + encode of one image.")
        # What camera frames cost: rate() of the counters gives encodes per second
        # and the encoder's busy share.
        self.vision_encodes = Counter(
            "rkstream_vision_encodes_total",
            "Images encoded: ahead (camera frames before a request asked) or for a request.",
            ["reason"], registry=self.registry)
        for reason in ("ahead", "request"):
            self.vision_encodes.labels(reason)
        self.vision_encoder_busy = Counter(
            "rkstream_vision_encoder_busy_seconds_total",
            "Seconds the vision encoder spent encoding; rate() is its busy ratio.",
            registry=self.registry)
        self.frames_unchanged = Counter(
            "rkstream_frames_unchanged_total",
            "Camera frames judged unchanged from the last encoded one, whose embedding "
            "they reused.", registry=self.registry)
        self.vision_decode = Histogram(
            "rkstream_vision_decode_seconds",
            "Image decoding in the decode pool: prepare (the encoder's input) or thumbnail "
            "(a frame's change check).", ["step"], buckets=DECODE_BUCKETS_S,
            registry=self.registry)
        for step in ("prepare", "thumbnail"):
            self.vision_decode.labels(step)
        self.npu_load = npu_load
        self.busy_s = 0.0
        self.started_s = time.perf_counter()

    def _histogram(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, buckets=LATENCY_BUCKETS_S,
                         registry=self.registry)

    def watch(self, live: LiveSource) -> None:
        """Read the live gauges from ``live`` at each scrape (call once per app)."""
        self.registry.register(_LiveGauges(self, live))

    def frame(self, superseded: bool) -> None:
        self.frames_received.inc()
        if superseded:
            self.frames_superseded.inc()

    # -- the vision service's observer (rkstream.vision.service.VisionObserver) --------
    def vision_encoded(self, seconds: float, encoder_s: float, ahead: bool) -> None:
        self.vision_encode.observe(seconds)
        self.vision_encodes.labels("ahead" if ahead else "request").inc()
        self.vision_encoder_busy.inc(encoder_s)

    def vision_decoded(self, seconds: float, step: str) -> None:
        self.vision_decode.labels(step).observe(seconds)

    def frame_unchanged(self) -> None:
        self.frames_unchanged.inc()

    def text_gaps(self, seconds: list[float]) -> None:
        observe = self.inter_token.observe
        for gap in seconds:
            observe(gap)

    def request_done(self, outcome: Outcome, queued_ms: float, ttft_s: float | None,
                     busy_s: float, api: str = "") -> None:
        self.requests.labels(api or "other", STATUS_OF[outcome.finish_reason]).inc()
        self.queue_wait.observe(queued_ms / 1000.0)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        self.prompt_tokens.inc(outcome.prompt_tokens)
        self.cached_prompt_tokens.inc(outcome.cached_tokens)
        self.generated_tokens.inc(outcome.output_tokens)
        self.busy_s += busy_s

    def busy_ratio(self, residents: list[Resident]) -> float:
        """Share of the time since start that the loaded models' instances were
        generating (over the instances loaded now)."""
        elapsed = max(time.perf_counter() - self.started_s, 1e-9)
        busy = self.busy_s + sum(r.scheduler.busy_now_s() for r in residents)
        instances = sum(r.scheduler.instance_count for r in residents)
        return busy / (elapsed * max(instances, 1))


INSTANCE_COUNTERS = {
    "rkstream_runtime_crashes": "Worker processes that died by themselves (a runtime crash).",
    "rkstream_runtime_hangs": "Runs the watchdog found hung, or whose cancel the runtime ignored.",
    "rkstream_worker_restarts": "Worker processes started again after a fault (model reloaded).",
}


class _LiveGauges(Collector):
    """Gauges computed at scrape time, so nothing has to poll them."""

    def __init__(self, metrics: Metrics, live: LiveSource) -> None:
        self._metrics = metrics
        self._live = live

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry can refuse a second collector with the same ones.
        yield GaugeMetricFamily("rkstream_queue_depth", "")
        yield GaugeMetricFamily("rkstream_running_requests", "")
        yield GaugeMetricFamily("rkstream_model_busy_ratio", "")
        yield GaugeMetricFamily("rkstream_websocket_connections", "")
        yield GaugeMetricFamily("rkstream_npu_load_ratio", "")
        yield GaugeMetricFamily("rkstream_models_loaded", "")
        yield GaugeMetricFamily("rkstream_instance_up", "")
        yield GaugeMetricFamily("rkstream_server_state", "")
        yield GaugeMetricFamily("rkstream_server_info", "")
        for name in INSTANCE_COUNTERS:
            yield CounterMetricFamily(name, "")

    def collect(self) -> Iterator[Metric]:
        residents = self._live.residents
        yield GaugeMetricFamily("rkstream_queue_depth", "Requests waiting for a model instance.",
                                value=sum(r.scheduler.queue_depth for r in residents))
        yield GaugeMetricFamily("rkstream_running_requests", "Requests being generated.",
                                value=sum(r.scheduler.running for r in residents))
        yield GaugeMetricFamily("rkstream_model_busy_ratio",
                                "Share of time the model instances were generating.",
                                value=self._metrics.busy_ratio(residents))
        yield GaugeMetricFamily("rkstream_models_loaded", "Models loaded now.",
                                value=len(residents))
        yield GaugeMetricFamily("rkstream_websocket_connections", "Open WebSockets.",
                                value=len(self._live.sockets))
        phase = GaugeMetricFamily("rkstream_server_state", "1 for the phase the server is "
                                  "in: serving, draining (/health 503, still serving) or "
                                  "stopping (new work refused).", labels=["state"])
        for name in SERVER_PHASES:
            phase.add_metric([name], 1.0 if self._live.phase == name else 0.0)
        yield phase
        info = GaugeMetricFamily("rkstream_server_info", "This server's id (server.id) and "
                                 "version; always 1.", labels=["id", "version"])
        info.add_metric([self._live.server_id, __version__], 1.0)
        yield info
        cores = read_npu_load(self._metrics.npu_load)
        if cores:
            load = GaugeMetricFamily("rkstream_npu_load_ratio", "NPU load per core, 0 to 1.",
                                     labels=["core"])
            for core, ratio in cores.items():
                load.add_metric([core], ratio)
            yield load
        yield from self._instances()

    def _instances(self) -> Iterator[Metric]:
        residents = self._live.residents
        if not residents:
            return
        up = GaugeMetricFamily("rkstream_instance_up", "1 while the model instance can serve; "
                               "0 while its worker restarts, or after it failed.",
                               labels=["model", "instance"])
        counters = {name: CounterMetricFamily(name, text, labels=["model", "instance"])
                    for name, text in INSTANCE_COUNTERS.items()}
        for resident, instance in ((r, i) for r in residents for i in r.engine.instances):
            health, label = instance.health(), [resident.name, str(instance.index)]
            up.add_metric(label, 1.0 if health.status == "ok" else 0.0)
            counters["rkstream_runtime_crashes"].add_metric(label, health.crashes)
            counters["rkstream_runtime_hangs"].add_metric(label, health.hangs)
            counters["rkstream_worker_restarts"].add_metric(label, health.restarts)
        yield up
        yield from counters.values()


METRICS = web.AppKey("rkstream_metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                            "Cache-Control": "no-cache"})
