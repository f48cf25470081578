"""Outbound requests only to public addresses: the one check pages read for sources and webhooks share.

A URL is allowed when its scheme is http or https and every address its host
resolves to is globally reachable: loopback, private, link-local (cloud
metadata at 169.254.169.254), multicast, reserved, unspecified and shared
(100.64/10) addresses are refused unless ``allow_private`` is set (tests,
intranets). The request then connects to the address that was checked
(``pinned``), so a DNS answer that changes between check and connect cannot
redirect it; redirects are not followed blindly — each hop is checked again by
the caller.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx


class Refused(Exception):
    """The URL may not be fetched; ``reason`` says why in a few words (never a secret)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{reason}: {url}")
        self.reason = reason


def address_problem(address: str) -> str | None:
    """Why an IP address is not a public one, or ``None`` when it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        (ip.is_loopback, "loopback address"),
        (ip.is_link_local, "link-local address"),
        (ip.is_multicast, "multicast address"),
        (ip.is_unspecified, "unspecified address"),
        (ip.is_reserved, "reserved address"),
        (ip.is_private, "private address"),
        (not ip.is_global, "non-public address"),
    )
    return next((reason for failed, reason in checks if failed), None)


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL and the address to connect to."""

    url: str
    host: str
    address: str

    def pinned(self) -> tuple[str, dict[str, str], dict[str, Any]]:
        """URL, headers and httpx extensions that connect to ``address`` while speaking to ``host``.

        The Host header and TLS server name (SNI, and so certificate checks) stay the original host's.
        """
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host_header = parts.hostname or self.host
        if parts.port is not None:
            host_header = f"{host_header}:{parts.port}"
        extensions: dict[str, Any] = {"sni_hostname": self.host} if parts.scheme == "https" else {}
        return url, {"Host": host_header}, extensions


Resolver = Any  # async (host, port) -> list of addresses; tests inject one


async def _system_resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check(url: str, *, allow_private: bool, resolve: Resolver = None) -> Target:
    """Resolve ``url``'s host and return where to connect, or raise ``Refused``."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise Refused(url, f"scheme {parts.scheme or '(none)'} is not http or https")
    host = parts.hostname
    if not host:
        raise Refused(url, "no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused(url, "bad port") from None
    try:
        addresses = [host] if _is_ip(host) else await (resolve or _system_resolve)(host, port)
    except (OSError, UnicodeError) as exc:
        raise Refused(url, f"cannot resolve {host} ({exc.__class__.__name__})") from None
    if not addresses:
        raise Refused(url, f"cannot resolve {host}")
    if not allow_private:
        for address in addresses:
            problem = address_problem(address)
            if problem is not None:
                raise Refused(url, f"{host} is a {problem} ({address})")
    return Target(url=url, host=host, address=addresses[0])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def send(
    client: httpx.AsyncClient, method: str, target: Target, *, headers: dict[str, str], content: bytes | None = None
) -> httpx.Response:
    """One request to the checked address (no redirects followed: the caller checks each hop)."""
    url, host_headers, extensions = target.pinned()
    request = client.build_request(method, url, headers={**headers, **host_headers}, content=content)
    request.extensions.update(extensions)
    return await client.send(request, follow_redirects=False)
