"""Pusher Channels names and codes: the error type, close codes, channel
names and kinds, socket ids.  No I/O.

What this follows: Pusher's "Pusher Channels Protocol" reference (protocol
version 7: the connection URL ``/app/{key}?protocol=7`` and its "Error Codes"
section), and the channel naming rules of the Channels docs and of the
official Python server SDK (``pusher`` 3.3: names of ``[A-Za-z0-9_\\-=@,.;]``,
at most 200 characters; socket ids of two whole numbers).

Errors: ``PusherError(code, message)``; ``code`` is a close code 4000-4399
(the edge closes the connection with it), None (a ``pusher:error`` answering
one frame; the connection stays) or an HTTP status (the HTTP API).  One code
answers a frame without closing: 4301, a client event dropped by the app's
rate (``pusher:error`` with that code, as Pusher sends it).  The close
code ranges: 4000-4099 the client should not reconnect unchanged (4000 TLS
only, 4001 no such app, 4003 app disabled, 4004 over the app's connection
quota, 4005 path not found, 4006 invalid version string, 4007 unsupported
protocol version, 4008 no protocol version, 4009 unauthorized); 4100-4199
reconnect after a back-off of 1 s or more (4100 over capacity); 4200-4299
reconnect at once (4200 generic, 4201 pong not received, 4202 closed after
inactivity); 4300-4399 any other error -- Pusher documents only 4301 (client
event rejected by a rate limit) there, and no 4300.

Channel kinds, by prefix: public; ``private-`` and ``presence-`` (an auth
signature, signatures.py); ``private-encrypted-``, refused: its events are
encrypted end to end with a key derived from a master key only the app's
backend holds, while pushsvc's own API and clients publish plaintext into the
same groups, which pusher-js would fail to decrypt -- not supported until
publishers can be kept apart; ``#server-to-user-ID``, the channel pusher-js
subscribes to after a signin (the edge checks that the connection signed in
as ID) and the HTTP API's ``send_to_user`` triggers on.  ``cache-`` channels
are their base kind, without the cache (no ``pusher:cache_miss``).

Socket ids are ``"<worker>.<counter>"`` (``new_socket_id``): two whole numbers,
as the SDKs check.  ``worker`` must be a number no other live process of the
deployment uses, and should not repeat after a restart (e.g. 30 random bits
drawn when the worker starts), so that a signature made for one connection is
never good for another and a trigger's ``socket_id`` excludes one connection
only; ``counter`` counts that process's connections.
"""

from __future__ import annotations

import re
from typing import Any

PROTOCOL = 7
ACTIVITY_TIMEOUT = 120          # seconds, in pusher:connection_established
MAX_EVENT_NAME = 200

# Close codes (Pusher's "Error Codes").
SSL_ONLY = 4000
APP_NOT_FOUND = 4001
APP_DISABLED = 4003
OVER_QUOTA = 4004
PATH_NOT_FOUND = 4005
INVALID_VERSION = 4006
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT = 4200
PONG_NOT_RECEIVED = 4201
INACTIVE = 4202
CLIENT_EVENT_RATE_LIMIT = 4301

# Channel kinds.
PUBLIC = "public"
PRIVATE = "private"
ENCRYPTED = "private-encrypted"
PRESENCE = "presence"
SERVER_TO_USER = "server-to-user"
SERVER_TO_USER_PREFIX = "#server-to-user-"
CHANNEL_NAME = re.compile(r"[A-Za-z0-9_\-=@,.;]+")
SOCKET_ID = re.compile(r"[0-9]+\.[0-9]+")


class PusherError(Exception):
    """A frame or request that cannot be served: ``code`` is a close code
    (4000-4399), None (a ``pusher:error`` frame) or an HTTP status."""

    def __init__(self, code: int | None, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def reconnect_advice(code: int) -> str:
    """What a client should do after the close ``code``: ``never`` (not
    unchanged), ``backoff``, ``now`` or ``other``."""
    return {40: "never", 41: "backoff", 42: "now"}.get(code // 100, "other")


def parse_connect(path: str, query: dict[str, list[str]]) -> str:
    """The app key of a WebSocket request ``/app/{key}?protocol=7``; raises
    PusherError with the close code (4005, 4006, 4007 or 4008)."""
    head, _, key = path.rstrip("/").rpartition("/")
    if head != "/app" or not key:
        raise PusherError(PATH_NOT_FOUND, f"path not found: {path[:200]} (use /app/<key>)")
    versions = query.get("protocol") or []
    if not versions:
        raise PusherError(NO_PROTOCOL, "no protocol version supplied (?protocol=7)")
    if not versions[0].isdigit():
        raise PusherError(INVALID_VERSION, f"invalid version string format: "
                                           f"{versions[0][:20]!r}")
    if int(versions[0]) != PROTOCOL:
        raise PusherError(UNSUPPORTED_PROTOCOL, f"unsupported protocol version "
                                                f"{versions[0][:20]}; this server speaks 7")
    return key


def channel_kind(name: str) -> str:
    """The kind of the channel ``name`` (by its prefix), not checked."""
    if name.startswith(SERVER_TO_USER_PREFIX):
        return SERVER_TO_USER
    if name.startswith("private-encrypted-"):
        return ENCRYPTED
    if name.startswith("private-"):
        return PRIVATE
    if name.startswith("presence-"):
        return PRESENCE
    return PUBLIC


def check_channel(name: Any, max_length: int = 200, code: int | None = None) -> str:
    """Check a channel name; its kind.  Raises PusherError(``code``) for a bad
    name and for ``private-encrypted-`` channels."""
    if not isinstance(name, str) or not name:
        raise PusherError(code, "'channel' must be a non-empty string")
    if len(name) > max_length:
        raise PusherError(code, f"channel name longer than {max_length} characters")
    kind = channel_kind(name)
    rest = name[len(SERVER_TO_USER_PREFIX):] if kind == SERVER_TO_USER else name
    if not CHANNEL_NAME.fullmatch(rest):
        raise PusherError(code, f"invalid channel name {name!r}: use letters, digits "
                                "and _-=@,.;")
    if kind == ENCRYPTED:
        raise PusherError(code, "private-encrypted- channels are not supported: their "
                                "events must be encrypted by every publisher, and pushsvc's "
                                "own API and clients publish plaintext")
    return kind


def user_of_channel(channel: str) -> str | None:
    """The user id of a ``#server-to-user-ID`` channel, else None."""
    if channel.startswith(SERVER_TO_USER_PREFIX):
        return channel[len(SERVER_TO_USER_PREFIX):] or None
    return None


def new_socket_id(counter: int, worker: int) -> str:
    """A Pusher socket id ``"<worker>.<counter>"`` (see the module docstring)."""
    if counter < 0 or worker < 0:
        raise ValueError("socket id parts must be >= 0")
    return f"{worker}.{counter}"


def check_socket_id(value: Any, code: int | None = None) -> str:
    """Check a socket id (``123.456``); raises PusherError(``code``)."""
    if not isinstance(value, str) or len(value) > 64 or not SOCKET_ID.fullmatch(value):
        raise PusherError(code, f"invalid socket_id {str(value)[:64]!r} (two whole numbers "
                                "joined by a dot)")
    return value
