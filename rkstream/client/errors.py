"""The client's exceptions: one tree, rooted in :class:`RkstreamClientError`.

- RkstreamClientError: every error carries ``code``, ``message``, ``param``
  - AuthError: the server refused the key or the page's origin (401, 403)
  - BusyError: try again soon (queue full, too many requests, model loading,
    shutting down); ``retry_after_s`` says when
  - InvalidRequestError: input the caller can fix (a bad param, unknown model...)
    - ImageError: an image or camera frame the server cannot take
  - ServerSideError: the server or its runtime failed (runtime_error, encoder_error...)
  - ConnectionLostError: the socket closed while a request was open, or there
    is no connection (codes ``connection_lost``, ``not_connected``, ``closed``)

The codes are the server's (docs/protocol.md, "Errors"); this module only sorts
them into classes, so it imports nothing from the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AUTH_CODES = frozenset({"invalid_api_key", "origin_not_allowed"})
BUSY_CODES = frozenset({"queue_full", "too_many_requests", "too_many_connections",
                        "model_loading", "shutting_down"})
IMAGE_CODES = frozenset({"vision_unavailable", "invalid_image", "unsupported_image_format",
                         "image_size_mismatch", "image_too_large", "too_many_images",
                         "unknown_image", "unknown_stream", "too_many_streams",
                         "remote_image_url"})
CONNECTION_CODES = frozenset({"connection_lost", "not_connected", "closed"})
# Codes the server answers with Retry-After: 1 (the busy ones, and a runtime that
# crashed or hung and is reloading).
RETRY_CODES = BUSY_CODES | {"runtime_crashed", "runtime_hung"}


class RkstreamClientError(Exception):
    """An error from the server (its ``code``) or from the client itself.

    Attributes:
        code: the server's error code (``queue_full``, ``invalid_param``...) or a
            client code (``connection_lost``, ``not_connected``, ``closed``,
            ``timeout``, ``invalid_event``: a request's end the client could not read).
        message: what happened, for a person.
        param: the field the error is about, when the server names one.
        type: ``invalid_request_error``, ``server_error`` or ``client_error``.
        request_id: the request it ended, if any.
        done: the request's :class:`~rkstream.client.Done`, when one arrived.
    """

    def __init__(self, code: str, message: str, *, param: str | None = None,
                 kind: str = "client_error", request_id: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.param = param
        self.type = kind
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.done: Any = None


class AuthError(RkstreamClientError, PermissionError):
    """The server refused the API key (``invalid_api_key``) or the origin."""


class BusyError(RkstreamClientError):
    """The server cannot take this now; retry after ``retry_after_s`` seconds."""


class InvalidRequestError(RkstreamClientError, ValueError):
    """Input the caller can fix; ``param`` names the field when the server says."""


class ImageError(InvalidRequestError):
    """An image or camera frame was refused (no encoder, bad bytes, unknown id...)."""


class ServerSideError(RkstreamClientError):
    """The server or its runtime failed (``runtime_error``, ``encoder_error``...)."""


class ConnectionLostError(RkstreamClientError, ConnectionError):
    """No connection: it dropped while the request was open, or is not up (yet)."""


def error_class(code: str, kind: str | None = None) -> type[RkstreamClientError]:
    """The class for a server or client error code."""
    if code in AUTH_CODES:
        return AuthError
    if code in BUSY_CODES:
        return BusyError
    if code in CONNECTION_CODES:
        return ConnectionLostError
    if code in IMAGE_CODES:
        return ImageError
    if kind == "server_error":
        return ServerSideError
    if kind == "invalid_request_error":
        return InvalidRequestError
    return RkstreamClientError


def from_body(body: Mapping[str, Any], request_id: str | None = None
              ) -> RkstreamClientError:
    """The typed exception for a protocol ``error`` object."""
    code = str(body.get("code", "unknown"))
    kind = str(body.get("type", "client_error"))
    retry = 1.0 if code in RETRY_CODES else None
    param = body.get("param")
    return error_class(code, kind)(code, str(body.get("message", "")),
                                   param=str(param) if param is not None else None,
                                   kind=kind, request_id=request_id, retry_after_s=retry)


# HTTP refusals of the WebSocket upgrade (docs/protocol.md, "Connecting").
HANDSHAKE_CODES = {401: "invalid_api_key", 403: "origin_not_allowed",
                   429: "too_many_connections", 503: "model_loading"}


def from_handshake(status: int, url: str) -> RkstreamClientError:
    """The typed exception for an upgrade the server refused with ``status``."""
    code = HANDSHAKE_CODES.get(status, "connection_lost")
    hints = {401: "the server wants an API key: pass api_key= (a wrong or missing key)",
             403: "the server refuses this Origin (server.allowed_origins)",
             429: "this address has too many sockets open",
             503: "the model is still loading"}
    message = f"{url}: HTTP {status}; {hints.get(status, 'the upgrade was refused')}"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return error_class(code, kind)(code, message, kind=kind,
                                   retry_after_s=1.0 if code in BUSY_CODES else None)
