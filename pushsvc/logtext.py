"""Words for log lines: a listening address, a count with its noun.  No I/O."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress


def address_text(address) -> str:
    """``127.0.0.1:8080``, ``[::1]:8080``, or a unix socket's path."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return str(address)


def plural(count: int, noun: str) -> str:
    """``1 client``, ``2 clients``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
