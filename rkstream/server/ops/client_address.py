"""The client's address of a request, through trusted load balancers.

Behind HAProxy or nginx every connection comes from the balancer. When the
direct peer is in ``server.trusted_proxies``, the client is read from
X-Forwarded-For, which each proxy extends on the right with the address it
was connected from: walked from the right, trusted proxies are skipped and
the first other address is the client (the leftmost when every hop is
trusted). Entries left of it were written by the client itself and are
never read. An entry reached that is not an IP address gives the peer's
address; the request is still served. With no trusted proxies (the default)
the header is ignored.

The address counts for ``limits.max_connections_per_address`` and names the
client in the access log and log lines. It grants nothing: the admin drain's
loopback check reads the real peer (``request.remote``), which this module
never changes (aiohttp's ``request.clone(remote=...)`` would).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from rkstream.config.values import Network

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# Set by the middleware; the access logger is given the same request object.
CLIENT_ADDRESS: web.RequestKey[str] = web.RequestKey("rkstream_client_address", str)


def ip_of(text: str) -> IP | None:
    """The address in ``text``, IPv4 for an IPv4-mapped one; None if it is not one."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip: IP, trusted: Sequence[Network]) -> bool:
    return any(ip in network for network in trusted)


def forwarded_client(peer: str | None, forwarded_for: Iterable[str],
                     trusted: Sequence[Network]) -> str | None:
    """The client's address, from the peer's address and the X-Forwarded-For
    header lines (in their order), as the module docstring says."""
    peer_ip = ip_of(peer) if peer is not None and trusted else None
    if peer_ip is None or not _trusted(peer_ip, trusted):
        return peer  # no proxy of ours: whatever the header says is the client's word
    client: str | None = None
    # Several header lines are one list, in order (RFC 9110, 5.3).
    hops = [hop for line in forwarded_for for hop in line.split(",")]
    for hop in reversed(hops):
        ip = ip_of(hop)
        if ip is None:
            return peer  # where a trusted proxy should have written an address
        client = str(ip)
        if not _trusted(ip, trusted):
            break
    return client or peer


def client_address(request: web.BaseRequest) -> str | None:
    """The client's address of ``request``: the forwarded one when the middleware
    found it, else the peer's (no trusted proxies, or a request refused before
    the app, such as a malformed one)."""
    found: str | None = request.get(CLIENT_ADDRESS)
    return found or request.remote


def described(request: web.BaseRequest) -> str:
    """The client for a log line: ``203.0.113.5 via 10.0.0.2`` when forwarded."""
    client, peer = client_address(request), request.remote
    return f"{client} via {peer}" if client != peer else str(peer)


def client_address_middleware(trusted: Sequence[Network]) -> Middleware:
    """Finds the client's address once per request, for :func:`client_address`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = forwarded_client(request.remote,
                                   request.headers.getall(hdrs.X_FORWARDED_FOR, ()), trusted)
        if address is not None:
            request[CLIENT_ADDRESS] = address
        return await handler(request)

    return middleware
