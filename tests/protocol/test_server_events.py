"""The shapes of the waiting events: what clients (the page, rkstream.client) read."""

from __future__ import annotations

from rkstream.protocol import server_events as ev
from rkstream.protocol.codec import encode


def test_queued_and_started_carry_exactly_their_fields() -> None:
    assert ev.response_queued("r", 2) == {"type": "response.queued", "request_id": "r",
                                          "queue_position": 2}
    assert ev.response_started("r") == {"type": "response.started", "request_id": "r"}
    assert ev.response_created("r", 0) == {"type": "response.created", "request_id": "r",
                                           "queue_position": 0}


def test_they_encode_in_both_encodings() -> None:
    for event in (ev.response_queued("r", 1), ev.response_started("r")):
        assert isinstance(encode(event, "msgpack"), bytes)
        assert '"type":"response.' in str(encode(event, "json")).replace(" ", "")
