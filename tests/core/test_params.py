"""Effective sampling: server defaults, then each layer of params; the cap."""

from __future__ import annotations

from dataclasses import fields

import pytest

from rkstream.config import SamplingSettings as Defaults
from rkstream.core.params import PARAM_RULES, Params, SamplingSettings, effective_sampling
from rkstream.errors import ProtocolError


def test_every_parameter_has_a_rule_a_field_and_a_default() -> None:
    names = set(PARAM_RULES)
    assert {f.name for f in fields(Params)} == names
    assert {f.name for f in fields(SamplingSettings)} == names
    assert {f.name for f in fields(Defaults)} | {"stop"} == names


def test_layers_over_defaults() -> None:
    defaults = Defaults()
    out = effective_sampling(defaults, 1000, Params(temperature=0.1, stop=("a",)),
                             Params(top_k=5))
    assert out.temperature == 0.1 and out.top_k == 5 and out.stop == ("a",)
    assert out.top_p == defaults.top_p and out.max_tokens == defaults.max_tokens
    assert effective_sampling(defaults, 1000).stop == ()


def test_the_cap_names_the_clients_field() -> None:
    with pytest.raises(ProtocolError) as caught:
        effective_sampling(Defaults(), 10, Params(max_tokens=11), path="options.num_predict",
                           request_id="r")
    assert caught.value.param == "options.num_predict" and caught.value.request_id == "r"
    assert "limits.max_tokens" in caught.value.message
