"""https and wss: the ``server.tls_cert`` / ``server.tls_key`` pair, checked at start.

Browsers give the camera (getUserMedia) and the clipboard only to secure pages:
https, or http on localhost. A board reached at its LAN address needs TLS for
the page's live camera.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from rkstream.config import ServerSettings
from rkstream.errors import ConfigError

CERT_KEY = "server.tls_cert"
KEY_KEY = "server.tls_key"

# What the openssl error says when the key is not the certificate's
# (ssl.SSLError.reason); the others are only "PEM lib".
_MISMATCH = "KEY_VALUES_MISMATCH"


def tls_context(server: ServerSettings) -> ssl.SSLContext | None:
    """The server's TLS context, or None when both keys are empty (plain http).

    Raises:
        ConfigError: naming the key: a file is missing or is not PEM, the
            key is encrypted, or it is not the certificate's key.
    """
    if not server.tls_cert and not server.tls_key:
        return None  # (load_settings refuses one without the other)
    cert, key = _readable(CERT_KEY, server.tls_cert), _readable(KEY_KEY, server.tls_key)
    try:  # the certificate alone first, so a failure names the right file
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except ssl.SSLError:
        raise ConfigError(f"config: {CERT_KEY} = {server.tls_cert!r} holds no PEM "
                          "certificate (-----BEGIN CERTIFICATE-----)") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A callable, so an encrypted key is refused instead of prompting on stdin.
        context.load_cert_chain(str(cert), str(key), password=lambda: _encrypted(key))
    except ssl.SSLError as exc:
        if exc.reason == _MISMATCH:
            raise ConfigError(f"config: {KEY_KEY} = {server.tls_key!r} is not the private "
                              f"key of {CERT_KEY} = {server.tls_cert!r}") from None
        raise ConfigError(f"config: {KEY_KEY} = {server.tls_key!r} cannot be loaded as the "
                          f"PEM private key of {CERT_KEY}: {exc}") from None
    return context


def _readable(key: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"config: {key} = {value!r}: no such file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"config: {key} = {value!r} cannot be read: {exc.strerror}") from None
    return path


def _encrypted(key: Path) -> str:
    raise ConfigError(f"config: {KEY_KEY} = {str(key)!r} is encrypted with a passphrase, which "
                      "rkstream cannot ask for; write it unencrypted (openssl pkey -in KEY "
                      "-out PLAIN) and make it readable only by the server's user")


def not_after_s(context: ssl.SSLContext, cert: str) -> float:
    """When ``cert`` expires (seconds since the epoch), read through public APIs
    only: ``context`` shows it in an in-memory handshake to a client that trusts
    it, and the client's ``getpeercert()`` has ``notAfter``.

    Raises:
        ssl.SSLCertVerificationError: the handshake refused it (``verify_code``
            10: it has expired; 9: not valid yet).
        ssl.SSLError: the handshake failed otherwise.
    """
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # any name: only the dates matter here
    client.load_verify_locations(cafile=cert)
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is trusted
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    near = client.wrap_bio(pipes[0], pipes[1])
    far = context.wrap_bio(pipes[2], pipes[3], server_side=True)
    for _ in range(8):  # TLS 1.3 needs two round trips; more means something is wrong
        finished = 0
        for end in (near, far):
            try:
                end.do_handshake()
                finished += 1
            except ssl.SSLWantReadError:
                pass
        pipes[2].write(pipes[1].read())
        pipes[0].write(pipes[3].read())
        if finished == 2:
            peer = near.getpeercert()
            if peer and "notAfter" in peer:
                return float(ssl.cert_time_to_seconds(str(peer["notAfter"])))
            break
    raise ssl.SSLError("the handshake did not show the certificate's dates")
