"""Who the client is, behind the reverse proxy (``api.trusted_proxies``).

Behind nginx every connection comes from nginx; login throttling per address
and the audit log need the browser's address, which nginx appends to
``X-Forwarded-For``. That header is believed only from a trusted proxy, and
read from the right: each trusted hop appended the address it saw, so the last
address that is not itself a trusted proxy is the client; anything to its left
was written by the client and proves nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import falcon.asgi

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(addresses: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(a, strict=False) for a in addresses)


def within(address: str, trusted: Sequence[Network]) -> bool:
    """``address`` (IPv4-mapped IPv6 read as IPv4) is in one of the networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted)


def client_address(req: falcon.asgi.Request, trusted: Sequence[Network]) -> str | None:
    """The client's IP address: the peer's, or the one a trusted proxy saw."""
    peer: str | None = req.remote_addr
    if peer is None or not within(peer, trusted):
        return peer
    hops = [h.strip() for h in (req.get_header("X-Forwarded-For") or "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not within(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # not an address: the proxy's own is the best we know
    return hops[0] if hops else peer
