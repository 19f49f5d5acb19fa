"""Doctor check of https: the server.tls_cert / server.tls_key pair and its expiry."""

from __future__ import annotations

import ssl
import time

from rkstream.board.report import Check
from rkstream.config import Settings
from rkstream.errors import ConfigError
from rkstream.server.tls import not_after_s, tls_context

NAME = "server.tls"
SOON_DAYS = 14  # long enough to renew a certificate before browsers refuse it
_EXPIRED, _NOT_YET = 10, 9  # X509_V_ERR_CERT_HAS_EXPIRED, X509_V_ERR_CERT_NOT_YET_VALID
_HOW = ("see README, \"https on the board\": a self-signed certificate (openssl), an SSH "
        "tunnel to localhost, or a reverse proxy with TLS")


def check_tls(settings: Settings, now_s: float | None = None) -> Check:
    """Whether the pair loads as the server would load it, and how long it lasts.

    Args:
        now_s: the time to count the days left from (tests); default now.
    """
    server = settings.server
    if not server.tls_cert and not server.tls_key:
        return Check(NAME, "OK", "off: plain http and ws (a browser gives the page's camera "
                                 "and clipboard only to https pages or to localhost)")
    try:
        context = tls_context(server)
    except ConfigError as exc:
        return Check(NAME, "FAIL", str(exc).removeprefix("config: "), _HOW)
    assert context is not None
    try:
        expires = not_after_s(context, server.tls_cert)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code == _EXPIRED:
            return Check(NAME, "FAIL", f"{server.tls_cert} has expired: browsers refuse it",
                         "make a new certificate; " + _HOW)
        if exc.verify_code == _NOT_YET:
            return Check(NAME, "WARN", f"{server.tls_cert} is not valid yet (is the "
                                       "board's clock right?)", "set the clock (NTP)")
        return _unread(server.tls_cert, exc.verify_message)
    except ssl.SSLError as exc:
        return _unread(server.tls_cert, str(exc))
    days = (expires - (time.time() if now_s is None else now_s)) / 86400.0
    until = time.strftime("%Y-%m-%d", time.gmtime(expires))
    detail = f"https and wss with {server.tls_cert}, valid until {until} ({days:.0f} days)"
    if days < SOON_DAYS:
        return Check(NAME, "WARN", detail, "renew the certificate before it expires")
    return Check(NAME, "OK", detail)


def _unread(cert: str, why: str) -> Check:
    return Check(NAME, "OK", f"https and wss with {cert} (its expiry could not be read: {why})")
