"""The one exception tree of rkstream.

- RkstreamError
  - ConfigError: a setting is refused at start
  - RuntimeLibraryError: librkllmrt.so cannot be found, loaded or bound
  - RuntimeVersionError: the runtime line is unknown or unsupported
  - ModelFileError: a model path is missing or is the wrong kind of file
  - EngineError: the native engine failed
    - EngineInitError: loading the model failed
  - RequestError: a client request is refused; carries a protocol error code
    - ProtocolError: an event is malformed
    - QueueFullError: the scheduler queue is full
    - InflightLimitError: a connection has too many open requests
    - VisionError: an image cannot be taken (bad bytes, too big, no encoder)

Each class also inherits the built-in exception that fits, so callers can
catch the general Python error.
"""

from __future__ import annotations


class RkstreamError(Exception):
    """Base class of every error rkstream raises on purpose."""


class ConfigError(RkstreamError, ValueError):
    """Raised at start when config.toml, a CLI flag or an RKSTREAM_* variable
    has a value that is not allowed. The message names the key and what is
    allowed."""


class RuntimeLibraryError(RkstreamError, OSError):
    """Raised when librkllmrt.so cannot be found or loaded, or lacks a symbol
    that the selected ABI needs. The message names every path tried."""


class RuntimeVersionError(RkstreamError, RuntimeError):
    """Raised when the runtime line of a library cannot be detected, or is a
    line rkstream has no ABI module for (anything but 1.2.1-1.2.3 and 1.3.x)."""


class ModelFileError(RkstreamError, ValueError):
    """Raised before rkllm_init when the model path does not exist, cannot be
    read, or holds another kind of model (an .rknn vision model given as the
    language model)."""


class EngineError(RkstreamError, RuntimeError):
    """Raised when the native engine fails as a whole. A single failed
    generation is not an exception: it ends as an Outcome with finish_reason
    "error" and code ``runtime_error``, and the engine keeps serving."""


class EngineInitError(EngineError):
    """Raised when rkllm_init (or an engine's model load) returns an error."""


class RequestError(RkstreamError):
    """Raised when a client request cannot be taken.

    Attributes:
        code: the machine-readable protocol error code (see docs/protocol.md).
        message: a sentence a person can act on.
        param: the offending field, when there is one.
    """

    error_type = "invalid_request_error"

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class ProtocolError(RequestError, ValueError):
    """Raised by the protocol parser when an event is not valid protocol v1:
    undecodable bytes, not a map, unknown type, a missing, unknown or
    ill-typed field.

    ``request_id`` and ``event_id`` hold what could be read of the event
    before it was refused, so the reply can name the request.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        request_id: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(code, message, param=param)
        self.request_id = request_id
        self.event_id = event_id


class QueueFullError(RequestError):
    """Raised by the scheduler when ``max_queue`` requests are already
    waiting; the request fails at once with code ``queue_full``."""

    error_type = "server_error"

    def __init__(self, max_queue: int) -> None:
        super().__init__(
            "queue_full",
            f"the server queue is full ({max_queue} requests waiting); retry later",
        )


class InflightLimitError(RequestError):
    """Raised when a connection opens more requests than
    ``max_inflight_per_connection`` allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "too_many_requests",
            f"this connection already has {limit} open requests, the most allowed;"
            " wait for a response.done or cancel one",
        )


class VisionError(RequestError):
    """Raised by the vision pipeline when an image or frame cannot be used.

    Codes: ``invalid_image`` (corrupt, truncated or undecodable bytes),
    ``unsupported_image_format`` (not JPEG/PNG/WebP, or an unknown format
    name), ``image_size_mismatch`` (raw pixels whose length is not
    width*height*3), ``image_too_large`` (more pixels than the limit),
    ``too_many_images``, ``unknown_image`` (an image_id not in the cache),
    ``unknown_stream`` (a frame part for a stream with no frame yet),
    ``too_many_streams`` (more camera streams than one connection may send),
    ``vision_unavailable`` (no encoder configured) and ``encoder_error`` (the
    encoder failed; this one is a server error).
    """

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(code, message, param=param)
        if code == "encoder_error":
            self.error_type = "server_error"
