"""server.tls_cert / server.tls_key: both or neither, and files that load, each
problem named by its key."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from rkstream.config import ServerSettings, load_settings
from rkstream.errors import ConfigError
from rkstream.server.tls import not_after_s, tls_context

from helpers import OPENSSL, self_signed


def server(cert: Path | str, key: Path | str) -> ServerSettings:
    return replace(ServerSettings(), tls_cert=str(cert), tls_key=str(key))


def refusal(cert: Path | str, key: Path | str) -> str:
    with pytest.raises(ConfigError) as info:
        tls_context(server(cert, key))
    return str(info.value)


def test_neither_is_plain_http() -> None:
    assert tls_context(ServerSettings()) is None


@pytest.mark.parametrize("given, empty", [("server.tls_cert=/c.pem", "server.tls_key"),
                                          ("server.tls_key=/k.pem", "server.tls_cert")])
def test_one_without_the_other_is_refused_at_load(given: str, empty: str) -> None:
    key, _, value = given.partition("=")
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={key: value}, environ={})
    assert f"{empty} is empty" in str(info.value) and "both" in str(info.value)


def test_a_matching_pair_loads_a_server_context(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = tls_context(server(cert, key))
    assert isinstance(context, ssl.SSLContext) and context.protocol == ssl.PROTOCOL_TLS_SERVER
    settings = load_settings(overrides={"server.tls_cert": str(cert),
                                        "server.tls_key": str(key)}, environ={})
    assert settings.server.tls_cert == str(cert)


def test_missing_files_are_named(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert refusal(tmp_path / "nope.pem", key) == \
        f"config: server.tls_cert = '{tmp_path / 'nope.pem'}': no such file"
    assert refusal(cert, tmp_path / "nope.pem").startswith("config: server.tls_key = ")


def test_files_that_are_not_pem_are_named(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem file\n")
    assert "server.tls_cert" in refusal(key, key) and "no PEM certificate" in refusal(key, key)
    assert "server.tls_cert" in refusal(garbage, key)
    message = refusal(cert, garbage)
    assert message.startswith("config: server.tls_key = ") and "PEM private key" in message


def test_a_key_of_another_certificate_is_named(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "one")
    _, other_key = self_signed(tmp_path, "two")
    assert refusal(cert, other_key) == (f"config: server.tls_key = '{other_key}' is not the "
                                        f"private key of server.tls_cert = '{cert}'")


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    import subprocess

    cert, key = self_signed(tmp_path)
    locked = tmp_path / "locked.pem"
    subprocess.run([OPENSSL, "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret",
                    "-out", str(locked)], check=True, capture_output=True, timeout=30)
    message = refusal(cert, locked)
    assert "server.tls_key" in message and "encrypted with a passphrase" in message


def test_the_expiry_is_read_through_a_handshake(tmp_path: Path) -> None:
    import time

    cert, key = self_signed(tmp_path, days=30)
    context = tls_context(server(cert, key))
    assert context is not None
    days = (not_after_s(context, str(cert)) - time.time()) / 86400
    assert 29 < days <= 30
