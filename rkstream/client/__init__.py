"""A Python client of rkstream's WebSocket protocol v1, for scripts, robots and
editor plugins: :class:`AsyncClient` for asyncio code, :class:`Client` for
synchronous code (its own event loop on a background thread), and camera
helpers that stream the newest frame and ask about it.

    from rkstream.client import Client

    with Client("127.0.0.1:8080") as client:
        print(client.complete("Hello", max_tokens=50).text)
        camera = client.camera("front")
        camera.send(frame)                      # bytes or a numpy image; never blocks
        print(camera.ask("What is in front of me?").text)

Behind a load balancer, ``Client(url, conversation=new_conversation_key())`` keeps
a conversation's turns on the board whose KV cache holds it, and
``client.server_id`` (or ``answer.server_id``) says which board answered.

It needs only aiohttp and msgpack (numpy frames are JPEG-encoded with OpenCV
when it is installed, else Pillow) and imports nothing from the server.
"""

from rkstream.client.aio import AsyncClient
from rkstream.client.camera import Camera
from rkstream.client.connection import DEFAULT_URL
from rkstream.client.conversation import check_conversation_key, new_conversation_key
from rkstream.client.errors import (
    AuthError,
    BusyError,
    ConnectionLostError,
    ImageError,
    InvalidRequestError,
    RkstreamClientError,
    ServerSideError,
)
from rkstream.client.events import (
    Answer,
    Created,
    Done,
    Event,
    FrameAnswer,
    FrameInfo,
    ModelInfo,
    ModelLoaded,
    ModelLoading,
    Queued,
    ReasoningDelta,
    SessionInfo,
    Started,
    TextDelta,
    Timings,
    ToolCall,
    Usage,
    frame_part,
    image_part,
)
from rkstream.client.stream import Stream
from rkstream.client.sync import Client, SyncCamera, SyncStream

__all__ = [
    "DEFAULT_URL", "Answer", "AsyncClient", "AuthError", "BusyError", "Camera", "Client",
    "ConnectionLostError", "Created", "Done", "Event", "FrameAnswer", "FrameInfo",
    "ImageError", "InvalidRequestError", "ModelInfo", "ModelLoaded", "ModelLoading", "Queued",
    "ReasoningDelta", "RkstreamClientError", "ServerSideError", "SessionInfo", "Started",
    "Stream", "SyncCamera", "SyncStream", "TextDelta", "Timings", "ToolCall", "Usage",
    "check_conversation_key", "frame_part", "image_part", "new_conversation_key",
]
