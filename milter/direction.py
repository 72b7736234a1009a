"""Which pipeline a message takes: outbound (a user submitting) or inbound."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from enum import Enum
from functools import lru_cache


class Direction(str, Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


def parse_networks(specs: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(s, strict=False) for s in specs)


def direction(auth_authen: str | None, client_ip: str | None, trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> Direction:
    """Outbound when the client logged in (SASL) or connects from a trusted network."""
    if auth_authen:
        return Direction.OUTBOUND
    if client_ip:
        if isinstance(trusted, tuple):  # the runtime's parsed networks: the answer per client IP is cached
            return _from_ip(client_ip, trusted)
        return _from_ip.__wrapped__(client_ip, tuple(trusted))
    return Direction.INBOUND


@lru_cache(maxsize=4096)
def _from_ip(client_ip: str, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> Direction:
    try:
        ip = ipaddress.ip_address(client_ip.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return Direction.INBOUND
    if any(ip in net for net in trusted):
        return Direction.OUTBOUND
    return Direction.INBOUND
