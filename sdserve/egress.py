"""Entries of the webhook allow-list: a host, or a network, and the ports it may be called on.

Parsed here, at the bottom of the shared package, so that reading the settings already refuses an entry that
names no port (``SDSERVE_WEBHOOK_ALLOWED_HOSTS=hooks.internal`` would have trusted every port of that host).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PortRange:
    """Ports ``low`` to ``high``, both included."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    @classmethod
    def parse(cls, text: str, entry: str) -> PortRange:
        low, _, high = text.partition("-")
        try:
            ports = cls(int(low), int(high or low))
        except ValueError:
            raise ValueError(f"{entry!r}: the port must be a number or a range like 8000-8999") from None
        if not 1 <= ports.low <= ports.high <= 65535:
            raise ValueError(f"{entry!r}: ports run from 1 to 65535, low to high")
        return ports


def _split_port(entry: str) -> tuple[str, str]:
    """``host:port`` → (host, port); ``[v6]:port`` → (v6, port)."""
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError(f"{entry!r}: write [address]:port")
        return inside, rest[1:]
    host, sep, port = entry.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{entry!r}: an allow-list entry names a port too: host:port or host:low-high")
    return host, port


@dataclass(frozen=True)
class AllowedHost:
    """A host name trusted on some ports: ``hooks.internal:8443``."""

    host: str
    ports: PortRange

    @classmethod
    def parse(cls, entry: str) -> AllowedHost:
        host, port = _split_port(entry.strip())
        return cls(host.rstrip(".").lower(), PortRange.parse(port, entry))


@dataclass(frozen=True)
class AllowedNetwork:
    """A network trusted on some ports: ``10.0.0.0/8:8000-8999``, ``[fd00::/8]:443``."""

    network: IPNetwork
    ports: PortRange

    @classmethod
    def parse(cls, entry: str) -> AllowedNetwork:
        network, port = _split_port(entry.strip())
        try:
            net = ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r}: {network!r} is not a network (CIDR)") from None
        return cls(net, PortRange.parse(port, entry))
