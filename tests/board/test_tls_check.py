"""The doctor's server.tls check: off, a good pair, a broken pair, the days left."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rkstream.board.checks_tls import check_tls
from rkstream.config import ServerSettings, Settings

from helpers import self_signed


def with_tls(cert: Path, key: Path) -> Settings:
    return replace(Settings(), server=replace(ServerSettings(), tls_cert=str(cert),
                                              tls_key=str(key)))


def test_off_says_what_the_camera_needs() -> None:
    check = check_tls(Settings())
    assert check.status == "OK" and "plain http" in check.detail and "camera" in check.detail


def test_a_good_pair_says_until_when(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, days=90)
    check = check_tls(with_tls(cert, key))
    assert check.status == "OK" and check.detail.startswith(f"https and wss with {cert}")
    assert "(90 days)" in check.detail or "(89 days)" in check.detail


def test_a_certificate_about_to_expire_warns(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, days=5)
    check = check_tls(with_tls(cert, key))
    assert check.status == "WARN" and "renew" in check.fix


def test_a_key_that_does_not_match_fails(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "one")
    _, other = self_signed(tmp_path, "two")
    check = check_tls(with_tls(cert, other))
    assert check.status == "FAIL" and "is not the private key" in check.detail
    assert "README" in check.fix


def test_a_missing_file_fails(tmp_path: Path) -> None:
    check = check_tls(with_tls(tmp_path / "none.pem", tmp_path / "none-key.pem"))
    assert check.status == "FAIL" and "server.tls_cert" in check.detail


def test_an_expired_certificate_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # openssl 3.0 cannot date a certificate in the past; the handshake's verdict is faked.
    import ssl

    from rkstream.board import checks_tls

    def expired(context: ssl.SSLContext, cert: str) -> float:
        error = ssl.SSLCertVerificationError("certificate verify failed")
        error.verify_code, error.verify_message = 10, "certificate has expired"
        raise error

    monkeypatch.setattr(checks_tls, "not_after_s", expired)
    cert, key = self_signed(tmp_path)
    check = check_tls(with_tls(cert, key))
    assert check.status == "FAIL" and "has expired" in check.detail
