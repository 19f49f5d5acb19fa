"""Protocol v1 validation, fed events directly (no socket)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from rkstream.core.messages import FramePart, ImagePart, TextPart
from rkstream.core.params import Params
from rkstream.errors import ProtocolError
from rkstream.protocol.events import (
    FrameAppend,
    ImageUpload,
    Ping,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
)
from rkstream.protocol.parse import parse_event


def create(**extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.create", "request_id": "r1",
                             "input": [{"role": "user", "content": "hi"}]}
    event.update(extra)
    return event


def refused(obj: Any, *, binary: bool = True) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_event(obj, binary=binary)
    return info.value


def test_response_create_minimal() -> None:
    event = parse_event(create())
    assert isinstance(event, ResponseCreate)
    assert event.request_id == "r1" and event.request.stream is True
    (message,) = event.request.messages
    assert message.role == "user" and message.parts == (TextPart("hi"),)
    assert event.request.params == Params()


def test_response_create_full() -> None:
    event = parse_event(create(
        event_id="e1", stream=False,
        params={"max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3,
                "repeat_penalty": 1.0, "frequency_penalty": -1, "presence_penalty": 2,
                "stop": ["\n", "END"]},
        input=[{"role": "system", "content": "be brief"},
               {"role": "user", "content": [
                   {"type": "text", "text": "what is "},
                   {"type": "image", "data": b"\xff\xd8", "format": "jpeg"},
                   {"type": "image", "image_id": "img1"},
                   {"type": "frame", "stream": "cam"}]}]))
    assert isinstance(event, ResponseCreate)
    assert event.event_id == "e1" and event.request.stream is False
    assert event.request.params == Params(max_tokens=5, temperature=0.0, top_p=0.5, top_k=3,
                                  repeat_penalty=1.0, frequency_penalty=-1.0,
                                  presence_penalty=2.0, stop=("\n", "END"))
    parts = event.request.messages[1].parts
    assert parts[1] == ImagePart(data=b"\xff\xd8", format="jpeg")
    assert parts[2] == ImagePart(image_id="img1")
    assert parts[3] == FramePart("cam")
    assert event.request.has_media


def test_json_bytes_are_base64() -> None:
    data = base64.b64encode(b"\x89PNG").decode()
    event = parse_event({"type": "image.upload", "data": data}, binary=False)
    assert event == ImageUpload(data=b"\x89PNG")
    assert refused({"type": "image.upload", "data": "%%%"}, binary=False).code == "invalid_field"


@pytest.mark.parametrize("obj, code, param", [
    ([1, 2], "invalid_event", None),
    ("text", "invalid_event", None),
    ({"request_id": "x"}, "invalid_event", "type"),
    ({"type": 3}, "invalid_event", "type"),
    ({"type": "response.explode"}, "unknown_event", "type"),
    (create(request_id=None), "missing_field", "request_id"),
    ({"type": "response.create", "input": []}, "missing_field", "request_id"),
    (create(request_id=7), "invalid_field", "request_id"),
    (create(request_id=""), "invalid_field", "request_id"),
    (create(request_id="x" * 129), "invalid_field", "request_id"),
    (create(input=[]), "invalid_field", "input"),
    (create(input="hi"), "invalid_field", "input"),
    (create(input=[{"role": "robot", "content": "x"}]), "invalid_field", "input[0].role"),
    (create(input=[{"role": "user"}]), "missing_field", "input[0].content"),
    (create(input=[{"role": "user", "content": 5}]), "invalid_field", "input[0].content"),
    (create(input=[{"role": "user", "content": [{"type": "audio"}]}]), "invalid_field",
     "input[0].content[0].type"),
    (create(input=[{"role": "user", "content": [{"type": "image"}]}]), "missing_field",
     "input[0].content[0].data"),
    (create(input=[{"role": "user", "content": [{"type": "image", "data": b"x",
                                                  "format": "gif"}]}]),
     "invalid_field", "input[0].content[0].format"),
    (create(input=[{"role": "user", "content": [{"type": "image", "data": b"x",
                                                  "format": "rgb"}]}]),
     "missing_field", "input[0].content[0].width"),
    (create(input=[{"role": "user", "content": "x", "name": "bob"}]), "unknown_field",
     "input[0].name"),
    (create(stream="yes"), "invalid_field", "stream"),
    (create(params=[1]), "invalid_field", "params"),
    (create(params={"temprature": 1}), "unknown_param", "params.temprature"),
    (create(params={"max_tokens": 1.5}), "invalid_field", "params.max_tokens"),
    (create(params={"max_tokens": True}), "invalid_field", "params.max_tokens"),
    (create(params={"max_tokens": 0}), "invalid_param", "params.max_tokens"),
    (create(params={"temperature": "hot"}), "invalid_field", "params.temperature"),
    (create(params={"top_p": 1.5}), "invalid_param", "params.top_p"),
    (create(params={"temperature": float("nan")}), "invalid_param", "params.temperature"),
    (create(params={"stop": 5}), "invalid_field", "params.stop"),
    (create(params={"stop": ["a", 1]}), "invalid_field", "params.stop"),
    (create(params={"stop": ["a"] * 9}), "invalid_param", "params.stop"),
    (create(extra_field=1), "unknown_field", "extra_field"),
    (create(event_id=5), "invalid_field", "event_id"),
    ({"type": "response.cancel"}, "missing_field", "request_id"),
    ({"type": "session.update"}, "missing_field", "session"),
    ({"type": "session.update", "session": {"params": {"x": 1}}}, "unknown_param",
     "session.params.x"),
    ({"type": "session.update", "session": {"voice": "x"}}, "unknown_field", "session.voice"),
    ({"type": "frame.append", "stream": "c", "data": b"x"}, "missing_field", "seq"),
    ({"type": "frame.append", "stream": "c", "seq": -1, "data": b"x"}, "invalid_field", "seq"),
    ({"type": "image.upload", "data": 5}, "invalid_field", "data"),
    ({"type": "ping", "extra": 1}, "unknown_field", "extra"),
])
def test_refusals(obj: Any, code: str, param: str | None) -> None:
    error = refused(obj)
    assert error.code == code, error.message
    assert error.param == param
    assert error.message  # a sentence, not empty


def test_refusal_keeps_request_and_event_id() -> None:
    error = refused(create(event_id="e9", params={"bogus": 1}))
    assert error.request_id == "r1" and error.event_id == "e9"
    assert "bogus" in error.message and "temperature" in error.message


def test_other_events() -> None:
    assert parse_event({"type": "ping", "event_id": "p"}) == Ping(event_id="p")
    assert parse_event({"type": "response.cancel", "request_id": "r"}) == ResponseCancel("r")
    update = parse_event({"type": "session.update",
                          "session": {"instructions": "hi", "params": {"top_k": 2}}})
    assert update == SessionUpdate(instructions="hi", params=Params(top_k=2))
    clear = parse_event({"type": "session.update", "session": {"instructions": None}})
    assert isinstance(clear, SessionUpdate) and clear.clear_instructions
    frame = parse_event({"type": "frame.append", "stream": "cam", "seq": 3,
                         "ts_ns": 1.5e9, "data": b"j"})
    assert frame == FrameAppend(stream="cam", seq=3, ts_ns=1500000000, data=b"j")


def test_params_merge() -> None:
    base = Params(max_tokens=10, temperature=0.5, stop=("x",))
    assert Params(temperature=0.0).over(base) == Params(max_tokens=10, temperature=0.0,
                                                        stop=("x",))


def test_stop_takes_one_string_and_drops_empty_ones() -> None:
    """The same rule as every HTTP API: "" means no stop sequence."""
    one = parse_event(create(params={"stop": "END"}))
    assert isinstance(one, ResponseCreate) and one.request.params.stop == ("END",)
    empty = parse_event(create(params={"stop": ["", "x"]}))
    assert isinstance(empty, ResponseCreate) and empty.request.params.stop == ("x",)
