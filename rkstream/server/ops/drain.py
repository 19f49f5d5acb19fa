"""Graceful drain: a server leaves a load balancer's rotation without losing a request.

It begins on SIGTERM or SIGINT (``rkstream serve``), or on ``POST /admin/drain``:

1. **draining**, for ``server.drain_s``: /health answers 503 ``draining``, so the
   balancer's health checks take the server out of rotation, while every
   request (new ones too) is still served as before;
2. **stopping**: new work is refused with ``shutting_down`` (503 with
   Retry-After; a balancer may retry it on another server), each WebSocket is
   closed with 1001 as soon as its own requests are done and their events are
   written, and the open requests have ``server.shutdown_timeout_s`` to finish;
3. what is still open then is cancelled with ``shutting_down`` (a
   ``response.done`` on /ws, the API's error on an HTTP stream), the sockets
   are closed with 1001, and the app's :data:`ON_STOPPED` hook runs
   (``rkstream serve`` exits).

A second signal exits at once. With no API key configured, ``POST
/admin/drain`` is taken from the loopback only, since it stops the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable

from aiohttp import web

from rkstream.errors import SHUTTING_DOWN, RequestError
from rkstream.log import server_log
from rkstream.server.http.errors import error_middleware
from rkstream.server.http.openai.dialect import json_error
from rkstream.server.ops.client_address import client_address, described, ip_of
from rkstream.server.state import STATE, AppState, Closable

POLL_S = 0.02  # how often the stop looks for sockets it can close and requests still open
FINAL_WRITE_S = 1.0  # cancelled HTTP streams get this long to write their error
SHUTDOWN_REASON = ("shutting_down", SHUTTING_DOWN)

# Run once the drain has ended every request; ``rkstream serve`` exits there.
ON_STOPPED: web.AppKey[Callable[[], None]] = web.AppKey("rkstream_on_stopped")


def start_drain(app: web.Application, why: str) -> bool:
    """Begin the drain; False when it had begun already (nothing changes)."""
    state = app[STATE]
    if state.drain is not None or state.closing:
        return False
    state.enter("draining")
    state.drain = asyncio.create_task(_drain(app, why))
    return True


async def _drain(app: web.Application, why: str) -> None:
    state = app[STATE]
    server = state.settings.server
    server_log.info("%s: draining for %g s (server.drain_s): /health is 503 draining, "
                    "requests are still served", why, server.drain_s)
    await asyncio.sleep(server.drain_s)
    try:
        await stop(state)
    except Exception:  # a bug: the process must still stop
        server_log.exception("the drain failed; stopping anyway")
    on_stopped = app.get(ON_STOPPED)
    if on_stopped is not None:
        on_stopped()


async def stop(state: AppState) -> None:
    """Refuse new work, let open requests finish (up to ``server.shutdown_timeout_s``),
    cancel what is left with ``shutting_down``, and close every WebSocket with 1001."""
    timeout_s = state.settings.server.shutdown_timeout_s
    state.enter("stopping")
    server_log.info("stopping: new requests are refused (shutting_down); %d open ones have "
                    "%g s to finish (server.shutdown_timeout_s)", state.open_requests,
                    timeout_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # Closes run as tasks, each bounded (connection.go_away): one slow or
    # half-dead peer holds up neither the others nor the deadline.
    leaving: dict[Closable, asyncio.Task[None]] = {}

    def send_away(connections: list[Closable], until: float) -> None:
        for c in connections:
            if c not in leaving:
                leaving[c] = asyncio.create_task(c.go_away(until))

    while True:
        # A socket whose requests are done goes now (once its last events are
        # written): its client reconnects elsewhere.
        send_away([c for c in list(state.connections) if c.idle], deadline)
        if not state.busy or loop.time() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    if state.busy:
        server_log.warning("%d requests still open after %g s: cancelled (shutting_down)",
                           state.open_requests, timeout_s)
        for resident in state.residents:
            resident.scheduler.cancel_all(SHUTDOWN_REASON)
        end = loop.time() + FINAL_WRITE_S
        # An aborted generation may take a while to end: its response.done is
        # written if it ends in time, else the socket closes without it.
        ending = [asyncio.create_task(c.shutdown()) for c in list(state.connections)
                  if c not in leaving]
        if ending:
            await asyncio.wait(ending, timeout=FINAL_WRITE_S)
        while state.http_inflight and loop.time() < end:
            await asyncio.sleep(POLL_S)
    send_away(list(state.connections), max(deadline, loop.time()))
    if leaving:
        await asyncio.wait(leaving.values())
        for task in leaving.values():
            if not task.cancelled() and task.exception() is not None:
                server_log.warning("closing a socket failed: %r", task.exception())
    server_log.info("drained: every request has ended")


def _loopback(address: str | None) -> bool:
    # ip_of: a dual-stack socket reports 127.0.0.1 as ::ffff:127.0.0.1, not loopback
    # to ipaddress. None: a Unix socket's peer, or no address.
    ip = ip_of(address) if address is not None else None
    return ip is not None and ip.is_loopback


async def admin_drain(request: web.Request) -> web.Response:
    """``POST /admin/drain``: drain and stop, as SIGTERM does; 202 with the phase.

    Raises:
        RequestError: ``admin_forbidden`` (no API key configured and not from
            the loopback, or a percent-encoded path), ``invalid_encoding`` or
            ``unknown_field`` (a body other than none or ``{}``).
    """
    state = request.app[STATE]
    if request.rel_url.raw_path != request.path:
        # Nobody needs to encode this path; a balancer's deny rule that matches
        # the raw path would not see /%61dmin/drain as /admin/.
        raise RequestError("admin_forbidden", "POST /admin/drain was sent with a "
                           "percent-encoded path; send the path as it is, on the board")
    # The real peer must be the loopback: X-Forwarded-For, which anyone can send,
    # grants nothing. And a proxy of ours on the board itself (a trusted peer on
    # the loopback) forwarding someone else's call is refused too.
    if not state.settings.server.api_keys and not (
            _loopback(request.remote) and _loopback(client_address(request))):
        raise RequestError("admin_forbidden", f"POST /admin/drain stops the server, so with "
                           f"no server.api_keys set it is taken from the loopback only (this "
                           f"came from {described(request)}); call it on the board itself, "
                           "or set a key and send it")
    raw = (await request.read()).strip()
    if raw:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RequestError("invalid_encoding", "the body of POST /admin/drain is not "
                               "JSON; send none, or {}") from None
        if body != {}:
            raise RequestError("unknown_field", "POST /admin/drain takes no fields; send no "
                               "body, or {}")
    started = start_drain(request.app, f"POST /admin/drain from {described(request)}")
    server = state.settings.server
    return web.json_response(
        {"status": state.phase, "started": started, "server": state.server_id,
         "drain_s": server.drain_s, "shutdown_timeout_s": server.shutdown_timeout_s},
        status=202)


def _render(exc: RequestError, status: int | None) -> web.Response:
    response = json_error(exc)
    if status is not None:
        response.set_status(status)
    return response


def add_admin_routes(app: web.Application) -> None:
    """``POST /admin/drain``, with its errors in OpenAI's shape."""
    app.middlewares.append(error_middleware(lambda path: path.startswith("/admin/"),
                                            _render, "POST /admin/drain"))
    app.router.add_post("/admin/drain", admin_drain)


def exit_when_drained(app: web.Application) -> None:
    """For ``rkstream serve``: SIGTERM and SIGINT start the drain, a second
    signal exits at once, and the process exits once the drain is over."""

    def graceful_exit() -> None:
        # run_app catches GracefulExit and runs its cleanup (unload, free the NPU).
        def leave() -> None:
            raise web.GracefulExit()

        asyncio.get_running_loop().call_soon(leave)

    async def on_startup(app: web.Application) -> None:
        signals = 0

        def on_signal(name: str) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                server_log.warning("second signal: exiting without waiting")
                os._exit(130)
            if not start_drain(app, name):
                server_log.info("%s: the drain is under way already", name)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)

    app[ON_STOPPED] = graceful_exit
    app.on_startup.append(on_startup)
