"""GET /ws: the WebSocket endpoint. It moves bytes; connection.py decides.

Per socket there is one reader (this handler's task) and one writer (the
outbox task). Closing the socket, for whatever reason, cancels the
connection's requests before the handler returns.
"""

from __future__ import annotations

import asyncio
from typing import cast

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from rkstream.errors import RequestError
from rkstream.log import ws_log
from rkstream.protocol.codec import Encoding
from rkstream.protocol.events import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from rkstream.server.ops.affinity import conversation_of
from rkstream.server.ops.client_address import client_address
from rkstream.server.state import STATE, AppState, ready
from rkstream.server.ws.connection import Connection
from rkstream.server.ws.outbox import Outbox, Sender

# After a 1009, how long the client may go on sending its message before the
# connection is closed anyway, and how often lingering checks whether it closed.
OVERSIZE_LINGER_S = 5.0
LINGER_POLL_S = 0.05


def too_big(exc: BaseException | None) -> bool:
    """Whether ``exc`` is aiohttp's reader refusing a message over ``max_msg_size``."""
    return isinstance(exc, WebSocketError) and exc.code == WSCloseCode.MESSAGE_TOO_BIG


class LingeringWebSocket(web.WebSocketResponse):
    """A WebSocketResponse that leaves the TCP connection open after a 1009.

    aiohttp's reader refuses an oversize frame from its header, before buffering
    any of it. receive() then sends the 1009 close frame and closes the transport
    at once, while the client is usually still writing the message: a socket
    closed with unread input makes the kernel answer with RST, and the client's
    write fails ("connection lost") before it reads the close frame. So the
    transport stays open here and the handler lingers instead (see linger()).
    """

    def _close_transport(self) -> None:
        # aiohttp's one place that closes the transport (3.10 to 3.14); close()
        # records the reader's error in exception() just before calling it.
        if not too_big(self.exception()):
            super()._close_transport()


async def linger(transport: asyncio.BaseTransport | None, state: AppState) -> None:
    """Let the client finish sending and close, then close the connection.

    Whatever arrives after the reader's error is dropped by aiohttp's protocol
    as it is read (the protocol is already marked closing), so this costs no
    memory. The client's own close frame is dropped with the rest, so the wait
    ends when the client closes the TCP connection (an aiohttp client does so
    right after answering the close frame) or after OVERSIZE_LINGER_S for a
    client that waits for the server to close first, as RFC 6455 allows.
    """
    if transport is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OVERSIZE_LINGER_S
    try:
        while not transport.is_closing() and not state.closing and loop.time() < deadline:
            await asyncio.sleep(LINGER_POLL_S)
    finally:
        transport.close()


def refusal(exc: RequestError) -> web.Response:
    """An upgrade refused before the handshake: the table's status, ``code: message``."""
    retry = exc.spec.retry_after_s
    return web.Response(status=exc.spec.status, text=f"{exc.code}: {exc.message}",
                        headers={"Retry-After": str(retry)} if retry is not None else None)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    settings = state.settings
    address = client_address(request) or "?"  # through server.trusted_proxies
    limit = settings.limits.max_connections_per_address
    try:
        conversation = conversation_of(request)
        pool = ready(state)
        default = pool.table.default.name
        status = pool.status(default)
        if status == "failed" or (status == "loading" and not pool.residents):
            # As /health: 503 while the default model loads at start, or failed to.
            raise RequestError("model_loading", pool.last_error(default)
                               or "the model is loading; retry shortly")
        if state.per_address[address] >= limit:
            raise RequestError(
                "too_many_connections", f"{address} already has {limit} open WebSocket "
                "connections (limits.max_connections_per_address); close one first")
    except RequestError as exc:
        return refusal(exc)
    ws = LingeringWebSocket(
        protocols=(SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON),
        heartbeat=settings.server.heartbeat_s or None,
        compress=False,  # tokens are tiny and images are already compressed
        # aiohttp refuses sizes >= max_msg_size; the limit is the largest one accepted.
        max_msg_size=settings.limits.max_message_bytes + 1,
    )
    await ws.prepare(request)
    encoding: Encoding = "json" if ws.ws_protocol == SUBPROTOCOL_JSON else "msgpack"

    # Every message of a connection has its encoding's type: no dispatch per send.
    send = cast(Sender, ws.send_str if encoding == "json" else ws.send_bytes)
    outbox = Outbox(send, encoding, max_bytes=settings.server.max_outbound_bytes,
                    slow_timeout_s=settings.server.slow_client_timeout_s)
    conn = Connection(settings, pool, outbox, state.metrics.frame, server_id=state.server_id,
                      conversation=conversation)
    conn.accepting = lambda: not state.closing  # a drain's stop: new requests are refused
    conn.closer = lambda: ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
    ws_log.info("%s connected (%s, %s)", address, conn.session_id, encoding)
    state.sockets.add(ws)
    state.per_address[address] += 1
    state.connections.add(conn)
    reader = asyncio.current_task()
    writer = asyncio.create_task(outbox.run())
    ending = False
    oversize = False

    def on_writer_done(task: asyncio.Task[bool]) -> None:
        if ending or task.cancelled() or task.result():
            return
        # The client stopped reading (or the send failed): drop it.
        ws_log.warning("%s dropped: not reading what is sent (%s)", address, conn.session_id)
        if request.transport is not None:
            request.transport.abort()
        if reader is not None:
            reader.cancel()

    writer.add_done_callback(on_writer_done)
    conn.open()
    idle_s = settings.limits.idle_timeout_s or None
    try:
        while True:
            try:
                msg = await ws.receive(timeout=idle_s)
            except asyncio.TimeoutError:
                if conn.requests:
                    continue  # waiting for an answer is not idle
                ws_log.info("%s idle for %.0f s: closing", address, idle_s)
                await ws.close(code=WSCloseCode.OK, message=b"idle timeout")
                break
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                conn.receive(msg.data)
            elif msg.type == WSMsgType.ERROR:
                ws_log.info("%s: %s", address, ws.exception())
                oversize = too_big(ws.exception())
                break
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
    except asyncio.CancelledError:
        if not writer.done():
            raise
    finally:
        # Bookkeeping first, before any await: the handler may be cancelled
        # again while it cleans up (the address's TCP close), which would skip it.
        ending = True
        state.sockets.discard(ws)
        state.per_address[address] -= 1
        if state.per_address[address] <= 0:
            del state.per_address[address]
        closing = asyncio.ensure_future(conn.close())  # runs to the end even if we are cancelled
        try:
            await asyncio.shield(closing)
            outbox.close()
            if not writer.done():
                await asyncio.wait_for(writer, 1.0)
            if not ws.closed:
                await ws.close(code=WSCloseCode.GOING_AWAY if state.closing else WSCloseCode.OK)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        finally:
            outbox.close()
            if not writer.done():
                writer.cancel()
        # aiohttp records 1006 for the socket it would have dropped; 1009 was sent.
        ws_log.info("%s disconnected (%s, close code %s)", address, conn.session_id,
                    WSCloseCode.MESSAGE_TOO_BIG if oversize else ws.close_code)
    if oversize:
        await linger(request.transport, state)
    return ws
