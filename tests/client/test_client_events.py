"""Parsing server events in the client, without a server: the queue and start
events, the frame's age, and events of other protocol versions (unknown types
are skipped; missing fields have defaults)."""

from __future__ import annotations

from typing import Any

from rkstream.client import (
    AsyncClient,
    Created,
    Done,
    FrameInfo,
    ModelLoading,
    Queued,
    Started,
    TextDelta,
)
from rkstream.client.events import SessionInfo, parse_event

DONE: dict[str, Any] = {"type": "response.done", "request_id": "r1", "status": "completed",
                        "finish_reason": "stop", "usage": {"output_tokens": 2},
                        "timings": {"total_ms": 12.5, "cache_n": 7}}


def test_queued_and_started() -> None:
    assert parse_event({"type": "response.queued", "request_id": "r1",
                        "queue_position": 3}) == Queued("r1", 3)
    assert parse_event({"type": "response.started", "request_id": "r1"}) == Started("r1")
    assert parse_event({"type": "response.created", "request_id": "r1",
                        "queue_position": 2}) == Created("r1", 2)


def test_the_frames_age() -> None:
    frame = {"stream": "cam0", "seq": 4, "ts_ns": 10, "encoded_seq": 3, "age_ms": 41.5,
             "taken_age_ms": 2.25, "new_field": 1}
    done = parse_event({**DONE, "frame": frame})
    assert isinstance(done, Done) and done.frame is not None
    assert done.frame.age_ms == 41.5 and done.frame.encoded_seq == 3
    assert done.frame.taken_age_ms == 2.25
    unstamped = parse_event({**DONE, "frame": {"stream": "c", "seq": 1, "age_ms": None}})
    assert isinstance(unstamped, Done) and unstamped.frame is not None
    assert unstamped.frame.age_ms is None
    older = parse_event({**DONE, "frame": {"stream": "cam0", "seq": 4}})  # before age_ms
    assert isinstance(older, Done) and older.frame == FrameInfo("cam0", 4)
    assert older.frame.age_ms is None
    integral = parse_event({**DONE, "frame": {"stream": "c", "seq": 1, "age_ms": 12}})
    assert isinstance(integral, Done) and integral.frame is not None
    assert isinstance(integral.frame.age_ms, float)


def test_done_names_the_server() -> None:
    done = parse_event(DONE, "board2")
    assert isinstance(done, Done) and done.server_id == "board2"
    assert done.timings.cache_n == 7
    plain = parse_event(DONE)
    assert isinstance(plain, Done) and plain.server_id is None


def test_unknown_events_are_skipped() -> None:
    assert parse_event({"type": "response.something_new", "request_id": "r1"}) is None
    assert parse_event({"request_id": "r1"}) is None


def test_session_facts_old_and_new() -> None:
    new = SessionInfo.of({"type": "session.created", "session_id": "s",
                          "server": {"id": "b1", "name": "rkstream"}, "conversation": "k"})
    assert new.server_id == "b1" and new.conversation == "k"
    old = SessionInfo.of({"type": "session.created", "session_id": "s",
                          "server": {"name": "rkstream"}})
    assert old.server_id is None and old.conversation is None


def test_a_stream_follows_its_queue_and_skips_what_it_does_not_know() -> None:
    client = AsyncClient("127.0.0.1:9")
    client.session = SessionInfo.of({"session_id": "s", "server": {"id": "b3"}})
    stream = client.stream("hi")
    client._requests[stream.request_id] = stream
    rid = stream.request_id
    seen = []
    for event in ({"type": "response.created", "request_id": rid, "queue_position": 2},
                  {"type": "response.queued", "request_id": rid, "queue_position": 1},
                  {"type": "response.from_the_future", "request_id": rid, "x": 1},
                  {"type": "model.loading", "request_id": rid, "model": "m",
                   "queue_position": 0},
                  {"type": "response.queued", "request_id": rid, "queue_position": 0}):
        client._dispatch(event)
        seen.append(stream.queue_position)
    assert seen == [2, 1, 1, 1, 0] and not stream.started  # a model's load is not the queue
    client._dispatch({"type": "response.started", "request_id": rid})
    assert stream.started
    client._dispatch({"type": "response.output_text.delta", "request_id": rid, "seq": 0,
                      "delta": "hey"})
    client._dispatch({**DONE, "request_id": rid})
    events = []
    while not stream._queue.empty():
        events.append(stream._queue.get_nowait())
    assert [type(e) for e in events] == [Created, Queued, ModelLoading, Queued, Started,
                                         TextDelta, Done]
    assert isinstance(events[-1], Done) and events[-1].server_id == "b3"
    assert stream.finished and stream.text == "hey"


def test_the_first_output_counts_as_started() -> None:  # a server without response.started
    client = AsyncClient("127.0.0.1:9")
    stream = client.stream("hi")
    client._requests[stream.request_id] = stream
    client._dispatch({"type": "response.output_text.delta", "request_id": stream.request_id,
                      "seq": 0, "delta": "a"})
    assert stream.started
