"""An app's ``allowed_origins``: the web pages whose browsers may open its
Pusher connections, by the handshake's ``Origin`` header.  No I/O.

An entry is one of:

- ``"*"``: any origin (the default, ``["*"]``);
- an origin as ``http.allowed_origins`` takes it (``limits.check_origin``):
  ``https://app.example`` (scheme, host and port must match; case and a
  default port do not matter), ``https://*.example.com`` (any subdomain, not
  the domain itself), ``null`` (sandboxed frames, ``file:`` pages);
- a host as Reverb takes it: ``app.example`` or ``*.example.com``, which
  matches the Origin's host whatever its scheme and port.

A handshake without ``Origin`` is not from a browser page (a backend, a
mobile app, pusher-js in Node) and is always allowed, as at ``/ws``: the
list protects your users' browsers from other sites' pages, it is not an
access control (any other client can send any Origin it likes).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from ..limits import OriginPolicy, check_origin, normalise_origin
from ..namespaces import TableError

ANY = "*"
_HOST = re.compile(r"(\*\.)?([a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])")
_SUBDOMAIN = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")


def check_entry(value: Any) -> str:
    """One entry, normalised; ValueError saying what it may be."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    entry = value.strip().lower()
    if entry == ANY:
        return entry
    if "://" in entry or entry == "null":
        return check_origin(entry)
    if not _HOST.fullmatch(entry):
        raise ValueError(f"{value!r} is not \"*\", an origin such as https://app.example "
                         f"or https://*.example.com, nor a host such as app.example or "
                         f"*.example.com (a port needs the scheme: http://localhost:3000)")
    return entry


def check_allowed_origins(value: Any, label: str) -> list[str]:
    """The ``allowed_origins`` of a table, normalised; TableError naming
    ``label`` or the entry (``label[1]``)."""
    if not isinstance(value, list) or not value:
        raise TableError(label, "must be a non-empty list such as [\"https://app.example\", "
                                "\"*.example.com\"] ([\"*\"]: any origin)")
    entries = []
    for i, item in enumerate(value):
        try:
            entries.append(check_entry(item))
        except ValueError as e:
            raise TableError(f"{label}[{i}]", str(e)) from None
    return list(dict.fromkeys(entries))


def _host(origin: str) -> str:
    """The host of a normalised ``scheme://host[:port]`` origin."""
    rest = origin.partition("://")[2]
    if rest.startswith("["):
        return rest[:rest.find("]") + 1]
    return rest.partition(":")[0]


class AllowedOrigins:
    """The checked entries of one app, and ``allows(origin)``."""

    __slots__ = ("any", "origins", "hosts", "suffixes")

    def __init__(self, entries: Iterable[str] = (ANY,)):
        entries = list(entries)
        self.any = ANY in entries
        full = [e for e in entries if "://" in e or e == "null"]
        self.origins = OriginPolicy(full) if full else None
        bare = [e for e in entries if e not in full and e != ANY]
        self.hosts = frozenset(e for e in bare if not e.startswith("*."))
        self.suffixes = tuple(e[1:] for e in bare if e.startswith("*."))

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` (None: none) may connect."""
        if self.any or origin is None:
            return True
        if self.origins is not None and self.origins.allows(origin):
            return True
        normal = normalise_origin(origin)
        if "://" not in normal:
            return False
        host = _host(normal)
        if host in self.hosts:
            return True
        return any(host.endswith(suffix) and _SUBDOMAIN.fullmatch(host[:-len(suffix)])
                   for suffix in self.suffixes)
