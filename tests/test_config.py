"""Settings: defaults, the file, RKSTREAM_* variables, overrides, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkstream.config import Settings, describe_settings, load_settings
from rkstream.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


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
