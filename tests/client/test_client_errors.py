"""The client's error classes follow the server's error table, and the client
imports nothing of the server."""

from __future__ import annotations

import subprocess
import sys

from rkstream.client import (
    AuthError,
    BusyError,
    ImageError,
    InvalidRequestError,
    RkstreamClientError,
    ServerSideError,
)
from rkstream.client.errors import AUTH_CODES, from_body, from_handshake
from rkstream.errors import ERRORS


def test_every_server_code_gets_its_class_and_retry() -> None:
    for code, spec in ERRORS.items():
        error = from_body({"code": code, "message": "m", "type": spec.error_type,
                           "param": "p"}, "r1")
        assert isinstance(error, RkstreamClientError)
        assert (error.code, error.message, error.param, error.request_id) == (code, "m", "p",
                                                                              "r1")
        assert error.retry_after_s == spec.retry_after_s, code
        if spec.retry_after_s and spec.status in (429, 503):
            assert isinstance(error, BusyError), code
        elif code in AUTH_CODES:
            assert spec.status in (401, 403) and isinstance(error, AuthError), code
        elif spec.server_side:
            assert isinstance(error, ServerSideError), code
        else:
            assert isinstance(error, InvalidRequestError), code
    assert {"invalid_api_key", "origin_not_allowed"} <= AUTH_CODES
    assert isinstance(from_body({"code": "unknown_image", "message": "",
                                 "type": "invalid_request_error"}), ImageError)


def test_refused_upgrades() -> None:
    assert isinstance(from_handshake(401, "ws://x/ws"), AuthError)
    busy = from_handshake(503, "ws://x/ws")
    assert isinstance(busy, BusyError) and busy.code == "model_loading"


def test_the_client_imports_nothing_of_the_server() -> None:
    script = ("import sys, rkstream.client; "
              "print(sorted(m for m in sys.modules if m.startswith('rkstream')))")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True).stdout
    loaded = eval(out)  # a printed list of names
    assert all(m == "rkstream" or m.startswith("rkstream.client") for m in loaded), loaded
