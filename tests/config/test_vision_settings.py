"""The [vision] encode-ahead keys: the new policy values, and the old true/false refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkstream.config import load_settings
from rkstream.errors import ConfigError
from rkstream.server.media import ahead_policy
from rkstream.vision.policy import AheadPolicy


def test_defaults_are_a_budget() -> None:
    policy = ahead_policy(load_settings(environ={}).vision)
    assert policy == AheadPolicy("rate", 1.0, True, 2.0)
    assert policy.as_dict() == {"encode_ahead": "rate", "encode_ahead_fps": 1.0,
                                "pause_while_generating": True, "frame_change_threshold": 2.0}


def test_the_keys_load(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[vision]\nencode_ahead = "on_request"\nencode_ahead_fps = 0.5\n'
                    'encode_ahead_pause_while_generating = false\n'
                    'frame_change_threshold = 0\ndecode_cpus = "0-3"\n')
    vision = load_settings(path, environ={}).vision
    assert ahead_policy(vision) == AheadPolicy("on_request", 0.5, False, 0.0)
    assert vision.decode_cpus == "0-3"


@pytest.mark.parametrize("old", ["true", "false"])
def test_an_old_boolean_names_the_new_values(tmp_path: Path, old: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[vision]\nencode_ahead = {old}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert "vision.encode_ahead" in message
    assert all(word in message for word in ('"off"', '"on_request"', '"rate"',
                                            'true is now "rate"', 'false is "off"'))
    with pytest.raises(ConfigError) as flag:  # --set vision.encode_ahead=true too
        load_settings(environ={}, overrides={"vision.encode_ahead": old})
    assert 'true is now "rate"' in str(flag.value)


@pytest.mark.parametrize("key, value, words", [
    ("decode_cpus", "3-1", ["vision.decode_cpus", "'3-1' is not a range"]),
    ("decode_cpus", "a76", ["vision.decode_cpus", "is not a CPU number"]),
    ("encode_ahead_fps", "0", ["vision.encode_ahead_fps", "out of range"]),
    ("frame_change_threshold", "300", ["vision.frame_change_threshold", "out of range"]),
])
def test_bad_values(key: str, value: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides={f"vision.{key}": value})
    assert all(word in str(info.value) for word in words), str(info.value)
