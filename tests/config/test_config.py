"""Settings: defaults, the file, RKSTREAM_* variables, overrides, refusals."""

from __future__ import annotations

from dataclasses import fields, replace
from ipaddress import ip_network
from pathlib import Path

import pytest

from rkstream.config import (
    Settings,
    VisionSettings,
    describe_settings,
    load_settings,
    parsed,
    vision_preset,
    with_overrides,
)
from rkstream.errors import ConfigError
from rkstream.vision.presets import PRESETS

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_is_the_defaults() -> None:
    assert load_settings(REPO / "config.toml", environ={}) == Settings()


def test_every_setting_is_documented_in_config_toml() -> None:
    text = (REPO / "config.toml").read_text()
    for key, _, help_text in describe_settings():
        assert key.rpartition(".")[2] + " =" in text, key
        assert help_text


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\nhost = "127.0.0.1"\n[rkllm]\nruntime = "1.2"\n')
    settings = load_settings(path, environ={"RKSTREAM_PORT": "9100"},
                             overrides={"server.port": "9200", "limits.max_queue": "3",
                                        "rkllm.embed_flash": "no"})
    assert settings.server.port == 9200
    assert settings.server.host == "127.0.0.1"
    assert settings.rkllm.runtime == "1.2"
    assert settings.limits.max_queue == 3
    assert settings.rkllm.embed_flash is False
    env_only = load_settings(path, environ={"RKSTREAM_PORT": "9100"})
    assert env_only.server.port == 9100


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("instances = 2\n")
    assert load_settings(environ={"RKSTREAM_CONFIG": str(path)}).instances == 2


@pytest.mark.parametrize("toml, words", [
    ('[rkllm]\nruntime = "1.1"\n', ["rkllm.runtime", "'1.1'", "'auto', '1.3', '1.2'"]),
    ("[server]\nport = 70000\n", ["server.port", "0 to 65535"]),
    ('[server]\nport = "80"\n', ["server.port", "an integer"]),
    ("[server]\nprot = 1\n", ["unknown key server.prot", "port"]),
    ("[limits]\nmax_queue = -1\n", ["limits.max_queue", "at least 0"]),
    ("instances = 1.5\n", ["instances", "an integer"]),
    ("server = 1\n", ["server must be a table"]),
    ("[rkllm\n", ["not valid TOML"]),
])
def test_bad_values_name_the_key(tmp_path: Path, toml: str, words: list[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    for word in words:
        assert word in str(info.value)


def test_bad_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.port = 'x'"):
        load_settings(environ={}, overrides={"server.port": "x"})
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(environ={"RKSTREAM_LOG_LEVEL": "loud"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", environ={})
    assert load_settings(environ={}, overrides={"rkllm.enabled_cpus_mask": "0x0F"}
                         ).rkllm.enabled_cpus_mask == 15


# Values whose check used to wait for the code that uses them (the vision
# load, the middlewares); each is refused by load_settings, naming its key.
@pytest.mark.parametrize("key, text, words", [
    ("vision.mean", "1,2", ["vision.mean", "2 values, not 3", "from 0 to 255"]),
    ("vision.mean", "1,x,3", ["vision.mean", "'x' is not a number"]),
    ("vision.mean", "0,0,256", ["vision.mean", "out of range"]),
    ("vision.mean", "nan,1,1", ["vision.mean", "out of range"]),
    ("vision.std", "1,0,1", ["vision.std", "above 0"]),
    ("vision.std", "4,5", ["vision.std", "2 values"]),
    ("vision.preset", "llava", ["vision.preset", "'qwen2-vl'", "'deepseekocr'"]),
    ("server.cors_origins", "app.example", ["server.cors_origins", "not an origin",
                                            "scheme://host[:port]"]),
    ("server.cors_origins", "https://app.example/chat", ["server.cors_origins", "no path"]),
    ("server.allowed_origins", "robot.local", ["server.allowed_origins", "not an origin"]),
    ("server.api_keys", ",", ["server.api_keys", "lists nothing"]),
    ("server.api_keys", "k1,my key", ["server.api_keys", "visible ASCII"]),
    ("server.trusted_proxies", "10.0.0.1,haproxy.lan",
     ["server.trusted_proxies", "'haproxy.lan' is not an IP address or network",
      "10.0.0.0/8"]),
    ("server.trusted_proxies", "10.0.0.5/8", ["server.trusted_proxies", "host bits set",
                                              "the network is 10.0.0.0/8"]),
    ("server.trusted_proxies", "10.0.0.1/33", ["server.trusted_proxies", "not an IP"]),
    ("server.trusted_proxies", ", ", ["server.trusted_proxies", "lists nothing"]),
    ("server.host", "http://0.0.0.0", ["server.host", "without scheme or port"]),
    ("server.host", "localhost:8080", ["server.host", "not a host name or IP address"]),
    ("rkllm.runtime", "1.4", ["rkllm.runtime", "'auto', '1.3', '1.2'"]),
])
def test_values_checked_at_load_name_the_key(key: str, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides={key: text})
    assert str(info.value).startswith(f"config: {key} = {text!r}")
    for word in words:
        assert word in str(info.value)
    with pytest.raises(ConfigError, match=key):  # and any layer on top of loaded settings
        with_overrides(Settings(), {key: text})


def test_toml_values_pass_the_same_hooks(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[vision]\nmean = "1,2"\n')
    with pytest.raises(ConfigError, match="vision.mean = '1,2'"):
        load_settings(path, environ={})
    path.write_text("[vision]\nmean = [1, 2, 3]\n")  # the text form only, as documented
    with pytest.raises(ConfigError, match="vision.mean"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match="server.api_keys"):
        load_settings(environ={"RKSTREAM_API_KEYS": "a key"})
    path.write_text('[server]\ntrusted_proxies = ["10.0.0.2"]\n')  # a list: the text form
    with pytest.raises(ConfigError, match="server.trusted_proxies = .*comma-separated"):
        load_settings(path, environ={})
    path.write_text('[server]\ntrusted_proxies = "10.0.0.2, 10.1.0.0/16"\n')
    assert load_settings(path, environ={}).server.trusted_proxies == "10.0.0.2, 10.1.0.0/16"


def test_good_values_load_and_parse() -> None:
    settings = load_settings(environ={}, overrides={
        "vision.mean": "0, 127.5,255", "vision.std": "58.4,57.1,57.4",
        "server.cors_origins": "https://app.example, http://localhost:3000/",
        "server.allowed_origins": "*", "server.api_keys": "k1, k2",
        "server.host": "::1", "vision.preset": "internvl3"})
    assert parsed("vision.mean", settings.vision.mean) == (0.0, 127.5, 255.0)
    assert parsed("vision.std", settings.vision.std) == (58.4, 57.1, 57.4)
    assert parsed("vision.mean", "") is None  # the preset's own
    assert parsed("server.cors_origins", settings.server.cors_origins) == (
        "https://app.example", "http://localhost:3000")
    assert parsed("server.api_keys", settings.server.api_keys) == ("k1", "k2")
    assert parsed("server.api_keys", "") == ()
    assert parsed("server.trusted_proxies", settings.server.trusted_proxies) == ()
    proxies = load_settings(environ={}, overrides={
        "server.trusted_proxies": " 10.0.0.2, 192.168.1.0/24,fd00::/8 ,::1"}).server
    assert parsed("server.trusted_proxies", proxies.trusted_proxies) == (
        ip_network("10.0.0.2/32"), ip_network("192.168.1.0/24"), ip_network("fd00::/8"),
        ip_network("::1/128"))
    for host in ("127.0.0.1", "::", "localhost", "board-1.lan", ""):
        assert load_settings(environ={}, overrides={"server.host": host}).server.host == host


def test_preset_choices_are_the_preset_table() -> None:
    choices = next(f for f in fields(VisionSettings) if f.name == "preset").metadata["choices"]
    assert choices == tuple(PRESETS)


def test_default_max_tokens_must_fit_the_cap(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides={"limits.max_tokens": "100"})
    assert "sampling.max_tokens = 512 is above limits.max_tokens = 100" in str(info.value)
    # Checked once every layer is applied: the file raises the default, the CLI the cap.
    path = tmp_path / "c.toml"
    path.write_text("[sampling]\nmax_tokens = 8000\n")
    settings = load_settings(path, environ={}, overrides={"limits.max_tokens": "8000"})
    assert settings.sampling.max_tokens == 8000


def test_preset_overrides_from_config() -> None:
    preset = vision_preset(replace(VisionSettings(), preset="internvl3", image_start="<i>",
                                 background=0, mean="1,2,3", std="4,5,6", size=224))
    assert preset.image_start == "<i>" and preset.image_end == "</img>"
    assert preset.background == 0 and preset.size == 224
    assert preset.mean == (1.0, 2.0, 3.0) and preset.std == (4.0, 5.0, 6.0)
    with pytest.raises(ConfigError, match="vision.mean"):
        vision_preset(replace(VisionSettings(), mean="1,x,3"))
    with pytest.raises(ConfigError):
        vision_preset(replace(VisionSettings(), std="1,2"))
    assert preset.tags.start == "<i>"
