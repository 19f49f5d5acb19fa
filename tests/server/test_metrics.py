"""/metrics in Prometheus text format, updated by real traffic."""

from __future__ import annotations

from typing import Any

from rkstream.config import Settings
from rkstream.server.app import make_app
from rkstream.server.metrics import Histogram

from fakes import FakeEngine
from helpers import MS, WSClient, create


def value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_follow_traffic(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(Settings(), lambda s: FakeEngine(s, 2 * MS)))
    before = await (await client.get("/metrics")).text()
    assert value(before, 'rkstream_requests_total{status="completed"}') == 0
    conn = WSClient(await client.ws_connect("/ws"))
    await conn.recv()
    await conn.send(create("a", "one two three"))
    await conn.send(create("b", "w " * 100))
    await conn.recv_type("response.output_text.delta")
    await conn.send({"type": "response.cancel", "request_id": "b"})
    await conn.until_done({"a", "b"})
    response = await client.get("/metrics")
    assert response.content_type == "text/plain"
    text = await response.text()
    assert value(text, 'rkstream_requests_total{status="completed"}') == 1
    assert value(text, 'rkstream_requests_total{status="cancelled"}') == 1
    assert value(text, "rkstream_generated_tokens_total") >= 3
    assert value(text, "rkstream_websocket_connections") == 1
    assert value(text, "rkstream_queue_depth") == 0
    assert value(text, "rkstream_time_to_first_token_seconds_count") == 1  # b never ran
    assert value(text, "rkstream_inter_token_seconds_count") >= 2
    assert 0 < value(text, "rkstream_model_busy_ratio") <= 1
    assert "# TYPE rkstream_vision_encode_seconds histogram" in text


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 5.0):
        hist.observe(v)
    assert hist.lines("x") == ['x_bucket{le="0.1"} 1', 'x_bucket{le="1.0"} 3',
                               'x_bucket{le="+Inf"} 4', "x_sum 6.050000", "x_count 4"]
