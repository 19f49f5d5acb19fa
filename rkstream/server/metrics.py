"""Prometheus metrics at /metrics, in the text exposition format (no dependency).

Counters and histograms are updated where things happen (the scheduler, the
vision service, connections); gauges are read when /metrics is scraped.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

from ..engines.base import Outcome

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0)
NPU_LOAD = Path("/sys/kernel/debug/rknpu/load")


class Histogram:
    """Cumulative buckets plus sum and count, as Prometheus wants them."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    """Everything /metrics reports that is not read from live state."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.queue_wait = Histogram()
        self.ttft = Histogram()
        self.inter_token = Histogram()
        self.vision_encode = Histogram()
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.frames_received = 0
        self.frames_superseded = 0
        self.busy_s = 0.0
        self.started_s = time.perf_counter()

    def frame(self, superseded: bool) -> None:
        self.frames_received += 1
        self.frames_superseded += int(superseded)

    def text_gap(self, seconds: float) -> None:
        self.inter_token.observe(seconds)

    def request_done(self, outcome: Outcome, queued_ms: float, ttft_s: float | None,
                     busy_s: float) -> None:
        status = {"stop": "completed", "length": "incomplete", "cancelled": "cancelled",
                  "error": "failed"}[outcome.finish_reason]
        self.requests[status] += 1
        self.queue_wait.observe(queued_ms / 1000.0)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        self.prompt_tokens += outcome.prompt_tokens
        self.generated_tokens += outcome.output_tokens
        self.busy_s += busy_s


def _npu_load() -> list[str]:
    """``NPU load:  Core0: 12%, Core1:  0%, Core2:  0%,`` → one gauge per core."""
    try:
        text = NPU_LOAD.read_text()
    except OSError:
        return []
    out = []
    for part in text.split(":", 1)[-1].split(","):
        name, _, value = part.strip().partition(":")
        if name.startswith("Core") and value.strip().endswith("%"):
            out.append(f'rkstream_npu_load_ratio{{core="{name[4:]}"}} '
                       f"{float(value.strip()[:-1]) / 100:.2f}")
    return out


def render(request: web.Request) -> str:
    from .state import STATE  # state.py holds a Metrics: import it late

    state = request.app[STATE]
    m = state.metrics
    lines = ["# HELP rkstream_requests_total Requests by how they ended.",
             "# TYPE rkstream_requests_total counter"]
    for status in ("completed", "incomplete", "cancelled", "failed"):
        lines.append(f'rkstream_requests_total{{status="{status}"}} {m.requests[status]}')
    scheduler = state.scheduler
    depth = scheduler.queue_depth if scheduler is not None else 0
    running = scheduler.running if scheduler is not None else 0
    instances = scheduler.instance_count if scheduler is not None else 0
    elapsed = max(time.perf_counter() - m.started_s, 1e-9)
    busy = m.busy_s + (scheduler.busy_now_s() if scheduler is not None else 0.0)
    lines += [
        "# TYPE rkstream_queue_depth gauge", f"rkstream_queue_depth {depth}",
        "# TYPE rkstream_running_requests gauge", f"rkstream_running_requests {running}",
        "# HELP rkstream_model_busy_ratio Share of time the model instances were generating.",
        "# TYPE rkstream_model_busy_ratio gauge",
        f"rkstream_model_busy_ratio {busy / (elapsed * max(instances, 1)):.4f}",
        "# TYPE rkstream_websocket_connections gauge",
        f"rkstream_websocket_connections {len(state.sockets)}",
        "# TYPE rkstream_prompt_tokens_total counter",
        f"rkstream_prompt_tokens_total {m.prompt_tokens}",
        "# TYPE rkstream_generated_tokens_total counter",
        f"rkstream_generated_tokens_total {m.generated_tokens}",
        "# TYPE rkstream_frames_received_total counter",
        f"rkstream_frames_received_total {m.frames_received}",
        "# TYPE rkstream_frames_superseded_total counter",
        f"rkstream_frames_superseded_total {m.frames_superseded}",
    ]
    for name, hist, help_text in (
            ("rkstream_queue_wait_seconds", m.queue_wait, "Time from arrival to a model."),
            ("rkstream_time_to_first_token_seconds", m.ttft, "Arrival to first text."),
            ("rkstream_inter_token_seconds", m.inter_token, "Gap between text pieces."),
            ("rkstream_vision_encode_seconds", m.vision_encode, "Decode + encode of one image.")):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        lines += hist.lines(name)
    load = _npu_load()
    if load:
        lines += ["# TYPE rkstream_npu_load_ratio gauge", *load]
    return "\n".join(lines) + "\n"


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(text=render(request), content_type="text/plain",
                        charset="utf-8", headers={"Cache-Control": "no-cache"})
