"""The SSRF guard: which callback URLs sdserve may call, checked at submit and again before every delivery.

A delivery connects only to an address the guard has just checked (the URL's host is resolved once, the
checked IP is dialled, the original host goes in ``Host`` and TLS SNI), so a DNS answer that changes between
check and connect (rebinding) cannot reach a private address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from sdserve.contract.problems import UnsafeWebhookUrl
from sdserve.egress import AllowedHost, AllowedNetwork, IPAddress

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class WebhookPolicy:
    """What callback URLs may be: public addresses on the allowed ports, or what the operator allow-lists.

    An allow-list entry names a host (or a network) *and* the ports it may be called on: trusting a host
    on every port would let a tenant reach whatever else listens there (Redis, the admin API, ...).
    """

    allowed_ports: frozenset[int]
    allowed_hosts: tuple[AllowedHost, ...]
    allowed_networks: tuple[AllowedNetwork, ...]

    @classmethod
    def build(cls, ports: list[int], hosts: list[str], networks: list[str]) -> WebhookPolicy:
        return cls(
            allowed_ports=frozenset(ports),
            allowed_hosts=tuple(AllowedHost.parse(h) for h in hosts),
            allowed_networks=tuple(AllowedNetwork.parse(n) for n in networks),
        )

    def trusts(self, host: str, port: int, addresses: list[IPAddress]) -> bool:
        """Whether the allow-list covers this host (or every one of its addresses) on this port."""
        if any(entry.host == host and port in entry.ports for entry in self.allowed_hosts):
            return True
        return bool(addresses) and all(
            any(address in entry.network and port in entry.ports for entry in self.allowed_networks)
            for address in addresses
        )


def address_problem(ip: IPAddress) -> str | None:
    """Why an address may not be called, or None if it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is not None:
            return address_problem(mapped) or "IPv4-mapped or tunnelled IPv6 addresses are not allowed"
    checks = (
        (ip.is_loopback, "loopback"),
        (ip.is_private, "private"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
        (ip.is_unspecified, "unspecified"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "carrier-grade NAT"),
        (not ip.is_global, "not globally routable"),
    )
    for bad, name in checks:
        if bad:
            return f"{ip} is a {name} address"
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address a host name resolves to (the OS resolver, so 2130706433 and 0x7f.1 count too)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeWebhookUrl(f"host {host!r} does not resolve ({exc.strerror})", permanent=False) from None
    except UnicodeError:  # an empty or over-long label, or characters IDNA refuses: not a host name at all
        raise UnsafeWebhookUrl(f"host {host!r} is not a valid host name") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


@dataclass(frozen=True)
class CheckedTarget:
    """A callback URL and the one address that was checked for it."""

    url: str
    host: str
    port: int
    address: IPAddress
    trusted: bool = False
    """Reached through the operator's allow-list (an internal address): its failures are reported coarsely."""


async def check_url(url: str, policy: WebhookPolicy) -> CheckedTarget:
    """Refuse URLs that are not http(s) on an allowed port or that reach non-public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookUrl("only http and https URLs are allowed")
    if parts.username or parts.password:
        raise UnsafeWebhookUrl("credentials in the URL are not allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeWebhookUrl("the URL has no host")
    try:
        given = parts.port
    except ValueError:
        raise UnsafeWebhookUrl("the port is not valid") from None
    if given == 0:
        raise UnsafeWebhookUrl("port 0 is not a port that can be called")
    port = given or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(host, port)
    if not addresses:
        raise UnsafeWebhookUrl(f"host {host!r} does not resolve")
    trusted = policy.trusts(host, port, addresses)
    if not trusted:
        if port not in policy.allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(policy.allowed_ports))
            raise UnsafeWebhookUrl(f"port {port} is not allowed (allowed: {allowed})")
        for address in addresses:
            problem = address_problem(address)
            if problem is not None:
                raise UnsafeWebhookUrl(f"{host} resolves to {problem}")
    return CheckedTarget(url=url, host=host, port=port, address=addresses[0], trusted=trusted)
