"""A hostname resolver for tests of DNS-named peers (:class:`~nuraft_mesg.DnsApplication`).

The transport resolves peer names with trio's ``getaddrinfo``, which asks the resolver set by
``trio.socket.set_custom_hostname_resolver`` when there is one.  :class:`StaticResolver` answers
from a table (name -> IP address), like entries in ``/etc/hosts`` but for one ``trio.run`` only,
so a test never edits the machine's resolver configuration.  A name not in the table fails as
an unknown host does (``socket.gaierror``), so a test also sees what a missing DNS record does.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

import trio

__all__ = ["StaticResolver", "install_static_resolver"]


class StaticResolver(trio.abc.HostnameResolver):
    """Answers ``getaddrinfo`` for the names in ``table`` (name -> IPv4 or IPv6 address)."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self.table = {name.lower().rstrip("."): ipaddress.ip_address(ip)
                      for name, ip in table.items()}
        self.lookups: list[str] = []
        """Every name asked for, in order (what a test can assert was resolved)."""

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        name = (host or b"").decode("ascii").lower().rstrip(".")
        self.lookups.append(name)
        ip = self.table.get(name)
        if ip is None:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown host {name!r} (StaticResolver)")
        ip_family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        if family not in (0, socket.AF_UNSPEC, ip_family):
            raise socket.gaierror(socket.EAI_ADDRFAMILY, f"{name!r} has no such address")
        numeric_port = int(port) if port is not None else 0
        sockaddr: tuple[Any, ...] = ((str(ip), numeric_port) if ip.version == 4
                                     else (str(ip), numeric_port, 0, 0))
        return [(ip_family, type or socket.SOCK_STREAM, proto or socket.IPPROTO_TCP, "",
                 sockaddr)]

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        for name, ip in self.table.items():
            if str(ip) == sockaddr[0]:
                return name, str(sockaddr[1])
        raise socket.gaierror(socket.EAI_NONAME, f"no name for {sockaddr[0]} (StaticResolver)")


def install_static_resolver(table: Mapping[str, str]) -> StaticResolver:
    """Make trio's ``getaddrinfo`` answer from ``table`` for the rest of this ``trio.run``."""
    resolver = StaticResolver(table)
    trio.socket.set_custom_hostname_resolver(resolver)
    return resolver
