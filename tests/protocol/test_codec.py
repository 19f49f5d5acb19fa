"""Decoding and encoding of both wire encodings."""

from __future__ import annotations

import json

import msgpack
import pytest

from rkstream.errors import ProtocolError
from rkstream.protocol.codec import decode_binary, decode_text, encode


def test_round_trip_msgpack() -> None:
    event = {"type": "x", "data": b"\x00\x01", "n": 3}
    assert decode_binary(msgpack.packb(event, use_bin_type=True)) == event
    assert msgpack.unpackb(encode(event, "msgpack"), raw=False) == event


def test_json_encodes_bytes_as_base64() -> None:
    text = encode({"type": "x", "data": b"\x00\x01", "t": "é"}, "json")
    assert isinstance(text, str)
    assert json.loads(text) == {"type": "x", "data": "AAE=", "t": "é"}


@pytest.mark.parametrize("data", [
    b"\xc1",                      # never-used msgpack byte
    b"\x92\x01",                  # truncated array
    msgpack.packb({1: 2}),        # non-string key
    msgpack.packb(msgpack.ExtType(5, b"x")),
    msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
])
def test_bad_binary(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_binary(data)
    assert info.value.code == "invalid_encoding"


def test_bad_text() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_text("{nope")
    assert info.value.code == "invalid_encoding"
