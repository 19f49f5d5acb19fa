"""The one exception tree of rkstream.

- RkstreamError
  - ConfigError: a setting is refused at start
  - ChatTemplateError: a chat template refused a conversation, or failed rendering it
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

:data:`ERRORS` is the one table of error codes: for each, the HTTP status,
the Retry-After seconds, whether it is the server's side (``server_error``)
or the client's (``invalid_request_error``), and what it means. /ws, OpenAI,
Ollama and /rkllm_chat all answer from it, and docs/protocol.md lists it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorSpec:
    """How one error code is answered, whatever the API."""

    status: int
    meaning: str
    retry_after_s: int | None = None
    server_side: bool = False

    @property
    def error_type(self) -> str:
        return "server_error" if self.server_side else "invalid_request_error"


RETRY_AFTER_S = 1

ERRORS: dict[str, ErrorSpec] = {
    # the message itself
    "invalid_encoding": ErrorSpec(400, "a binary message that is not one msgpack value, a "
                                  "text message or HTTP body that is not JSON (also: msgpack "
                                  "ext types, non-string map keys, trailing bytes)"),
    "invalid_event": ErrorSpec(400, "the event or body is not an object, or an event has "
                               "no string type"),
    "unknown_event": ErrorSpec(400, "type is not a client event"),
    "request_too_large": ErrorSpec(413, "an HTTP body larger than limits.max_message_bytes"),
    # its fields
    "missing_field": ErrorSpec(400, "a required field is absent (also width/height for raw "
                               "pixels)"),
    "invalid_field": ErrorSpec(400, "a field has the wrong type or an out-of-range value"),
    "unknown_field": ErrorSpec(400, "a field the event does not have"),
    "unknown_param": ErrorSpec(400, "a name in params that is not a parameter"),
    "invalid_param": ErrorSpec(400, "a param value out of its range, or max_tokens above "
                               "the server's cap"),
    "duplicate_request_id": ErrorSpec(400, "response.create reused the id of a request that "
                                      "is still open"),
    "unknown_request": ErrorSpec(400, "response.cancel for an id that is not open (never "
                                 "existed, or already done)"),
    # images
    "vision_unavailable": ErrorSpec(400, "an image, upload or frame, and no vision encoder "
                                    "is configured"),
    "invalid_image": ErrorSpec(400, "truncated or corrupt image bytes, bad base64, a named "
                               "format that does not match the bytes, raw pixels without "
                               "width/height"),
    "unsupported_image_format": ErrorSpec(400, "bytes that are not JPEG, PNG or WebP (GIF, "
                                          "BMP, ...)"),
    "image_size_mismatch": ErrorSpec(400, "raw rgb/bgr whose length is not width*height*3"),
    "image_too_large": ErrorSpec(400, "more pixels than vision.max_image_pixels"),
    "too_many_images": ErrorSpec(400, "more images and frames than "
                                 "limits.max_images_per_request"),
    "unknown_image": ErrorSpec(400, "an image_id never uploaded on this connection, or "
                               "evicted from the cache"),
    "unknown_stream": ErrorSpec(400, "a frame part for a stream that has no frame yet"),
    "too_many_streams": ErrorSpec(400, "a 17th camera stream on one connection"),
    "remote_image_url": ErrorSpec(400, "an http(s) image URL: the server never fetches "
                                  "them; send a data: URL"),
    "context_overflow": ErrorSpec(400, "text, image rows and max_tokens do not fit the "
                                  "model's context"),
    "fim_unsupported": ErrorSpec(400, "a suffix (fill-in-the-middle) for a model without "
                                 "FIM tokens"),
    "embeddings_unsupported": ErrorSpec(400, "the model cannot give embeddings (or not the "
                                        "requested dimensions); the message says which can"),
    "chat_format_error": ErrorSpec(400, "the model's chat format refused the conversation (its "
                                   "template raised an error, e.g. roles that do not "
                                   "alternate); the message says why"),
    # the model and the server
    "model_not_found": ErrorSpec(404, "a model name this server does not serve"),
    "not_found": ErrorSpec(404, "no such endpoint"),
    "method_not_allowed": ErrorSpec(405, "the endpoint exists, with another method"),
    "invalid_api_key": ErrorSpec(401, "server.api_keys is set and the request has no "
                                 "valid key"),
    "origin_not_allowed": ErrorSpec(403, "a browser page from an origin not in "
                                    "server.allowed_origins opened /ws"),
    "admin_forbidden": ErrorSpec(403, "POST /admin/drain with no server.api_keys set, from "
                                 "an address other than the loopback (or forwarded by a "
                                 "trusted proxy for another address), or by a "
                                 "percent-encoded path"),
    "too_many_connections": ErrorSpec(429, "the address already has "
                                      "limits.max_connections_per_address sockets open",
                                      retry_after_s=RETRY_AFTER_S),
    "too_many_requests": ErrorSpec(429, "the connection already has "
                                   "max_inflight_per_connection open requests",
                                   retry_after_s=RETRY_AFTER_S),
    "queue_full": ErrorSpec(429, "max_queue requests are already waiting for the model",
                            RETRY_AFTER_S, True),
    "model_loading": ErrorSpec(503, "the model is still loading", RETRY_AFTER_S, True),
    "model_load_failed": ErrorSpec(500, "the named model could not be loaded (a missing file, "
                                   "a runtime error); the message says why, and the next "
                                   "request tries again", server_side=True),
    "insufficient_memory": ErrorSpec(507, "the model does not fit pool.memory_budget even "
                                     "with every other model unloaded", server_side=True),
    "shutting_down": ErrorSpec(503, "the server is stopping", RETRY_AFTER_S, True),
    "request_timeout": ErrorSpec(504, "the request ran longer than limits.request_timeout_s; "
                                 "the text produced so far was delivered", server_side=True),
    "encoder_error": ErrorSpec(500, "the vision encoder failed", server_side=True),
    "runtime_error": ErrorSpec(500, "the runtime reported an error during generation "
                               "(RKLLM_RUN_ERROR, or rkllm_run failed)", server_side=True),
    "runtime_crashed": ErrorSpec(502, "the runtime's worker process died during the request "
                                 "(a crash in librkllmrt.so); the model is reloading and "
                                 "waiting requests are served after it", RETRY_AFTER_S, True),
    "runtime_hung": ErrorSpec(504, "the runtime made no progress within the watchdog's limits "
                              "(rkllm.watchdog_*) and the run was stopped; if it ignored the "
                              "stop, its worker was killed and the model is reloading",
                              RETRY_AFTER_S, True),
    "internal_error": ErrorSpec(500, "a bug in rkstream; the message says what failed",
                                server_side=True),
}
UNKNOWN_CODE = ErrorSpec(400, "")


# The one sentence for work refused or ended by a shutdown.
SHUTTING_DOWN = "the server is shutting down; retry in a moment"


def error_spec(code: str) -> ErrorSpec:
    """The table's entry for ``code``; an unknown code is a plain 400."""
    return ERRORS.get(code, UNKNOWN_CODE)


class RkstreamError(Exception):
    """Base class of every error rkstream raises on purpose."""


class ConfigError(RkstreamError, ValueError):
    """Raised at start when config.toml, a CLI flag or an RKSTREAM_* variable
    has a value that is not allowed. The message names the key and what is
    allowed."""


class ChatTemplateError(RkstreamError, ValueError):
    """Raised when a chat template cannot render a conversation: the template
    called ``raise_exception`` (a role it does not allow, roles out of order),
    or it failed while rendering (a sandbox refusal, a type error). The message
    is the template's own, or names the Jinja error."""


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

    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    @property
    def spec(self) -> ErrorSpec:
        return error_spec(self.code)

    @property
    def error_type(self) -> str:
        return self.spec.error_type


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
