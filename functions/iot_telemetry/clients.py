"""Who is calling: a request's client address as seen past the proxies in front of us."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (or single addresses); ValueError names a bad one."""
    networks = []
    for item in (i.strip() for i in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network (CIDR)") from None
    return tuple(networks)


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(remote_addr: str | None, headers: Mapping[str, str] | Any,
                   proxies: Sequence[Network]) -> str:
    """The rightmost address not in `proxies`, reading X-Forwarded-For back from the peer.

    On Knative the peer is always the queue-proxy (127.0.0.1), and the activator and the
    ingress gateway append to X-Forwarded-For: the first address from the right that is not
    one of those proxies is the one the ingress saw. Entries left of it may be forged by the
    client, so they are never used.
    """
    forwarded = str(headers.get("X-Forwarded-For") or "")
    hops = [*(a.strip() for a in forwarded.split(",") if a.strip()), remote_addr or ""]
    for address in reversed(hops):
        if not _trusted(address, proxies):
            return address
    return hops[0]
