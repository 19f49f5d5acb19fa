"""The one field reader: the same checks and the same sentence on every API."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pytest

from rkstream.core.fields import Fields, kind_of
from rkstream.core.params import MAX_STOP_SEQUENCES, PARAM_RULES
from rkstream.errors import ProtocolError


def refusal(obj: Mapping[str, Any], read: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        read(Fields(obj, "params"))
    return caught.value


@pytest.mark.parametrize("value, words", [
    (None, "null"), (True, "a boolean"), (1, "an integer"), (1.5, "a number"),
    ("x", "a string"), ([1], "a list"), ({}, "an object"), (b"x", "binary"),
])
def test_kind_of(value: Any, words: str) -> None:
    assert kind_of(value) == words


def test_one_wording() -> None:
    assert refusal({}, lambda f: f.string("x", required=True)).message == "params.x is required"
    wrong = refusal({"x": 3}, lambda f: f.string("x"))
    assert (wrong.code, wrong.message, wrong.param) == (
        "invalid_field", "params.x must be a string, not an integer", "params.x")
    out = refusal({"top_p": 2}, lambda f: f.param("top_p"))
    assert (out.code, out.message) == ("invalid_param", "params.top_p = 2 is out of range [0, 1]")
    choice = refusal({"role": "bot"}, lambda f: f.choice("role", ("user", "assistant")))
    assert choice.message == "params.role = 'bot' is not one of user, assistant"
    unknown = refusal({"temprature": 1}, lambda f: (f.params({"temperature": "temperature"}),
                                                    f.finish("unknown_param")))
    assert unknown.code == "unknown_param" and "params.temprature" in unknown.message


def test_every_rule_is_checked_at_both_ends() -> None:
    for name, rule in PARAM_RULES.items():
        if rule.kind == "stop":
            continue
        low = int(rule.low) if rule.kind == "int" else rule.low
        high = int(rule.high) if rule.kind == "int" else rule.high
        assert Fields({name: low}).param(name) == low
        assert Fields({name: high}).param(name) == high
        below = low - 1
        assert refusal({name: below}, lambda f, n=name: f.param(n)).code == "invalid_param"
        assert refusal({name: "x"}, lambda f, n=name: f.param(n)).code == "invalid_field"


def test_integers_take_integral_floats_only() -> None:
    assert Fields({"top_k": 40.0}).param("top_k") == 40
    assert refusal({"top_k": 1.5}, lambda f: f.param("top_k")).code == "invalid_field"
    assert refusal({"top_k": True}, lambda f: f.param("top_k")).code == "invalid_field"


def test_stop_sequences() -> None:
    assert Fields({"stop": "END"}).param("stop") == ("END",)
    assert Fields({"stop": ["", "a"]}).param("stop") == ("a",)
    many = refusal({"stop": ["a"] * (MAX_STOP_SEQUENCES + 1)}, lambda f: f.param("stop"))
    assert many.code == "invalid_param"


def test_renamed_parameters_keep_the_client_name() -> None:
    f = Fields({"num_ctx": 1, "max_completion_tokens": 0})
    error = refusal(f.obj, lambda g: g.param("max_completion_tokens", "max_tokens"))
    assert error.param == "params.max_completion_tokens"


def test_bytes_and_base64() -> None:
    text = base64.b64encode(b"\x89PNG").decode()
    assert Fields({"data": text}).blob("data") == b"\x89PNG"
    assert Fields({"data": b"raw"}, binary=True).blob("data") == b"raw"
    assert refusal({"data": "not base64!"}, lambda f: f.blob("data")).code == "invalid_field"
    assert refusal({"data": 5}, lambda f: f.blob("data")).message.startswith(
        "params.data must be a base64 string")


def test_refusals_carry_the_request() -> None:
    f = Fields({"x": 1}, request_id="r1", event_id="e1")
    with pytest.raises(ProtocolError) as caught:
        f.child(f.get("x"), "x")
    assert (caught.value.request_id, caught.value.event_id) == ("r1", "e1")
