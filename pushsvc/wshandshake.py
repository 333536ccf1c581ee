"""The plain WebSocket opening handshake, read from a head llhttp has parsed.

Autobahn's ``processHandshake`` parses a handshake's head again from its
bytes (a second parse after the lean path's llhttp), checks it line by line
with a debug line per step, and answers through a Deferred: about 40 us of a
connect's 170.  Nearly every handshake is the plain case, and ``plain``
recognises it from the head the lean path has already parsed: GET of an
origin-form URI without fragment or parameters, HTTP/1.1, exactly one
``Host`` (a port, if any, in digits), ``Upgrade: websocket``, ``Connection:
upgrade``, ``Sec-WebSocket-Version: 13``, a well-formed ``Sec-WebSocket-Key``,
no subprotocol asked for, an ``Origin`` Autobahn's own rules allow, and
extension offers Autobahn's own parsers read and decline (pushsvc never
compresses).  Anything else (every refusal, and every case rare enough not
to matter) returns None and Autobahn does the whole handshake as always, so
its answers and checks are unchanged; tests/test_wshandshake.py compares
the two on plain and unusual heads.

What ``plain`` returns is the state Autobahn's handshake leaves on the
connection (``Plain``) and ``response`` the answer it writes, byte for byte.
Free of I/O: the connection (wsbase.py) applies them.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION
from autobahn.websocket.protocol import (WebSocketProtocol, _is_same_origin,
                                         _url_to_origin)

__all__ = ["Plain", "plain", "response"]

# The characters of a Sec-WebSocket-Key before its "==" (base64).
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
# Headers that a plain handshake has exactly once (Autobahn refuses some
# repeated; the others, repeated, are joined and rare: left to Autobahn).
_ONCE = ("host", "upgrade", "connection", "sec-websocket-version", "sec-websocket-key")
_AT_MOST_ONCE = ("origin", "sec-websocket-extensions")


class Plain(NamedTuple):
    """What Autobahn's handshake would have read from a plain head."""
    uri: str
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]     # lower-case names, as Autobahn keeps them
    host: str                   # without its port
    origin: str                 # "" when none was sent
    key: str
    extensions: list            # the offers, parsed by Autobahn, all declined


def plain(url: bytes, headers: list[tuple[bytes, bytes]], options: Any) -> Plain | None:
    """The handshake of an HTTP/1.1 GET of ``url`` with ``headers`` (as
    llhttp read them), when it is plain and Autobahn would accept it with
    the protocol ``options`` (a server protocol: its class attributes and
    factory); else None."""
    if options.maxConnections > 0 and options.factory.countConnections > options.maxConnections:
        return None  # Autobahn answers 503
    uri = url.decode("latin-1")
    if not uri.startswith("/") or uri.startswith("//") or "#" in uri or ";" in uri:
        return None
    path, _, query = uri.partition("?")
    named: dict[str, str] = {}
    for name, value in headers:
        lower = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip(" \t")
        if lower in named:
            if lower in _ONCE or lower in _AT_MOST_ONCE:
                return None
            named[lower] += f", {text}"
        else:
            named[lower] = text
    try:
        host, version, key = named["host"], named["sec-websocket-version"], \
            named["sec-websocket-key"]
        upgrade, connection = named["upgrade"], named["connection"]
    except KeyError:
        return None
    if (version != "13" or not _has_token(upgrade, "websocket")
            or not _has_token(connection, "upgrade") or not _good_key(key)
            or "sec-websocket-protocol" in named
            or (options.trustXForwardedFor and "x-forwarded-for" in named)):
        return None
    if ":" in host and not host.endswith("]"):
        host, port = host.rsplit(":", 1)
        port = port.strip()
        if not (port.isascii() and port.isdigit()):
            return None
        external = options.factory.externalPort
        if external and int(port) != external:
            return None
    origin = named.get("origin", "")
    if origin and not _origin_allowed(origin, options):
        return None
    extensions = []
    if "sec-websocket-extensions" in named:
        extensions = _declined_offers(named["sec-websocket-extensions"], options)
        if extensions is None:
            return None
    return Plain(uri, path, parse_qs(query) if query else {}, named, host, origin, key,
                 extensions)


def response(server: str | None, headers: dict, key: str) -> bytes:
    """Autobahn's answer to a plain handshake: 101, ``Server`` if any, the
    factory's extra ``headers``, the key's accept value."""
    lines = ["HTTP/1.1 101 Switching Protocols\r\n"]
    if server:
        lines.append(f"Server: {server}\r\n")
    lines.append("Upgrade: WebSocket\r\nConnection: Upgrade\r\n")
    for name, values in headers.items():
        if isinstance(values, str):
            values = [values]
        else:
            try:
                values = iter(values)
            except TypeError:
                values = [values]
        lines.extend(f"{name}: {value}\r\n" for value in values)
    digest = hashlib.sha1(key.encode("utf8") + WebSocketProtocol._WS_MAGIC).digest()
    lines.append(f"Sec-WebSocket-Accept: {base64.b64encode(digest).decode()}\r\n\r\n")
    return "".join(lines)


def _has_token(value: str, token: str) -> bool:
    return value.lower() == token or any(part.strip().lower() == token for part in value.split(","))


def _good_key(key: str) -> bool:
    return len(key) == 24 and key.endswith("==") and _KEY_CHARS.issuperset(key[:-2])


def _origin_allowed(origin: str, options: Any) -> bool:
    """Autobahn's Origin check, with its own functions and options."""
    try:
        parts = _url_to_origin(origin)
    except ValueError:
        return False
    factory = options.factory
    if parts == "null" and factory.allowNullOrigin:
        return True
    return _is_same_origin(parts, "https" if factory.isSecure else "http",
                           factory.externalPort or factory.port,
                           options.allowedOriginsPatterns)


def _declined_offers(header: str, options: Any) -> list | None:
    """The extension offers of ``header``, parsed by Autobahn, when each is
    well-formed and none is accepted; None otherwise (Autobahn refuses a
    malformed offer, or compresses: both its own way)."""
    extensions = options._parseExtensionsHeader(header)
    offers = []
    for name, params in extensions:
        pmce = PERMESSAGE_COMPRESSION_EXTENSION.get(name)
        if pmce is not None:
            try:
                offers.append(pmce["Offer"].parse(params))
            except Exception:
                return None
    if offers and options.perMessageCompressionAccept(offers) is not None:
        return None
    return extensions
