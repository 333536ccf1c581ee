"""Where the admin endpoint is and the connection to it: endpoint strings
(``Target``, ``parse_endpoint``, ``BadEndpoint``), the blocking AMP
``Connection`` (connect, authenticate, reconnect once when the server went
away), and the one-line errors when it cannot be reached (``Unreachable``).

The AMP calls run on a reactor in a background thread (``blockingCallFromThread``),
so one-shot and interactive use share one blocking path.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import (TCP4ClientEndpoint, TCP6ClientEndpoint,
                                        UNIXClientEndpoint, connectProtocol)
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.threads import blockingCallFromThread
from twisted.protocols import amp

from .wire import AdminError, Authenticate


class Unreachable(Exception):
    """The admin endpoint cannot be reached; ``str()`` is the one line to show."""


# -- where the server is -----------------------------------------------------

# The longest unix socket path connect() takes, in bytes (sun_path less its NUL).
UNIX_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


@dataclass(frozen=True)
class Target:
    """The admin endpoint as a client sees it: a unix socket path, or a host and port."""
    path: str = ""
    host: str = ""
    port: int = 0

    def endpoint(self, reactor):
        if self.path:
            return UNIXClientEndpoint(reactor, self.reachable_path())
        kind = TCP6ClientEndpoint if ":" in self.host else TCP4ClientEndpoint
        return kind(reactor, self.host, self.port)

    def reachable_path(self) -> str:
        """The socket path to connect to: as given, or (when that is longer
        than a unix socket address holds) relative to the current folder;
        Unreachable when neither fits."""
        for path in (self.path, os.path.relpath(self.path)):
            if len(os.fsencode(path)) <= UNIX_PATH_MAX:
                return path
        raise Unreachable(f"cannot connect to {self.describe()}: its path is longer than a "
                          f"unix socket address holds ({UNIX_PATH_MAX} bytes), even relative "
                          f"to this folder; run the console nearer to it")

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"tcp:[{self.host}]:{self.port}" if ":" in self.host else \
            f"tcp:{self.host}:{self.port}"

    def describe(self) -> str:
        """``str()``, and a relative socket path's full path."""
        if self.path and not os.path.isabs(self.path):
            return f"{self} ({os.path.abspath(self.path)})"
        return str(self)


class BadEndpoint(ValueError):
    """An admin endpoint string the console cannot use; ``str()`` is the one line."""

    def __init__(self, description: str, why: str):
        super().__init__(f"bad endpoint '{description}': {why}; use a socket path, "
                         f"unix:PATH or tcp:PORT (the server's string, "
                         f"e.g. tcp:7001:interface=127.0.0.1)")


# Endpoint kinds a server may listen on that the console cannot connect to.
OTHER_KINDS = ("ssl", "tls", "tcp4", "udp", "systemd", "stdio", "tor", "onion")


def _fields(text: str) -> list[tuple[str, str | None]]:
    """Split an endpoint string's arguments at ``:`` (``\\`` escapes):
    (text, the name before its first unescaped ``=`` or None)."""
    fields, current, name, chars = [], [], None, iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            fields.append(("".join(current), name))
            current, name = [], None
        elif char == "=" and name is None:
            name, current = "".join(current), []
        else:
            current.append(char)
    fields.append(("".join(current), name))
    return fields


def parse_endpoint(description: str) -> Target:
    """The admin endpoint from the server's endpoint string (``unix:PATH:mode=600``,
    ``tcp:PORT:interface=127.0.0.1``), a client one (``unix:path=PATH``,
    ``tcp:host=H:port=P``) or a bare socket path; BadEndpoint if it is none."""
    if not description.strip():
        raise BadEndpoint(description, "it is empty")
    kind, colon, rest = description.partition(":")
    if colon and kind.lower() in OTHER_KINDS:
        raise BadEndpoint(description, f"the console connects over unix or tcp, not {kind}")
    if not colon or kind not in ("unix", "tcp", "tcp6"):
        return Target(path=description)
    fields = _fields(rest)
    named = {name: value for value, name in fields if name is not None}
    positional = [value for value, name in fields if name is None and value]
    if kind == "unix":
        path = named.get("path") or named.get("address") or next(iter(positional), "")
        if not path:
            raise BadEndpoint(description, "no socket path")
        return Target(path=path)
    host = (named.get("host") or named.get("interface")
            or (positional[0] if len(positional) > 1 else "")
            or ("::1" if kind == "tcp6" else "127.0.0.1"))
    port = named.get("port") or next(reversed(positional), "")
    if not port.isdigit():
        raise BadEndpoint(description, "no port number")
    if not 0 < int(port) < 65536:
        raise BadEndpoint(description, f"port {port} is not between 1 and 65535")
    return Target(host=host, port=int(port))


# -- talking to the server ---------------------------------------------------

class _Client(amp.AMP):
    """The console's end of a connection; knows when it is gone."""

    lost = False

    def connectionLost(self, reason):
        self.lost = True
        super().connectionLost(reason)


def _alive(protocol: _Client | None) -> bool:
    """Whether ``protocol``'s connection can take a command: not lost, and
    no end of file waiting to be read (the server never speaks first, so
    anything readable on an idle connection is its end: it stopped or
    restarted)."""
    if protocol is None or protocol.lost:
        return False
    try:
        return protocol.transport.getHandle().recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:  # nothing to read: the usual, alive
        return True
    except OSError:
        return False


class Connection:
    """A blocking AMP connection to the admin endpoint: the reactor runs in a
    background thread.  A connection found dead before a command (the server
    stopped or restarted) is made again, once, for that command."""

    def __init__(self, target: Target, secret: str):
        from twisted.internet import reactor
        self.reactor = reactor
        self.target = target
        self.secret = secret
        self.protocol: _Client | None = None  # used in the reactor thread only
        self.thread = threading.Thread(target=reactor.run, daemon=True,
                                       kwargs={"installSignalHandlers": False})
        self.thread.start()

    def open(self) -> None:
        """Connect (and authenticate) unless connected; AdminError or Unreachable."""
        self._blocking(self._ready)

    def call(self, command: type[amp.Command], **args: Any) -> Any:
        """The command's ``result``; AdminError, or Unreachable."""
        try:
            return self._blocking(self._call, command, args)["result"]
        except ConnectionClosed:
            raise Unreachable(f"lost the connection to {self.target} before an answer "
                              f"(did the server stop?); the command may not have run")
        except amp.UnknownRemoteError as e:
            raise AdminError(f"the server failed ({e}); see its log")
        except amp.UnhandledCommand:
            raise AdminError(f"the server at {self.target} does not know this command "
                             f"(is it an older pushsvc?)")

    # -- in the reactor thread

    def _ready(self):
        """A Deferred firing with a live, authenticated connection."""
        if _alive(self.protocol):
            return succeed(self.protocol)
        if self.protocol is not None and not self.protocol.lost:
            self.protocol.transport.abortConnection()
        self.protocol = None
        d = connectProtocol(self.target.endpoint(self.reactor), _Client())
        if self.secret:
            d.addCallback(self._authenticate)
        return d.addCallback(self._keep)

    def _authenticate(self, protocol: _Client):
        def refused(failure):
            protocol.transport.loseConnection()
            return failure
        return (protocol.callRemote(Authenticate, secret=self.secret)
                .addCallbacks(lambda _: protocol, refused))

    def _keep(self, protocol: _Client) -> _Client:
        self.protocol = protocol
        return protocol

    def _call(self, command: type[amp.Command], args: dict[str, Any]):
        return self._ready().addCallback(lambda p: p.callRemote(command, **args))

    def _stop(self) -> None:
        if self.protocol is not None and not self.protocol.lost:
            self.protocol.transport.loseConnection()
        self.reactor.stop()

    # -- from the main thread

    def _blocking(self, f, *args, **kwargs):
        try:
            return blockingCallFromThread(self.reactor, f, *args, **kwargs)
        except (ConnectError, DNSLookupError) as e:
            raise Unreachable(self.cannot_connect(e))

    def cannot_connect(self, e: Exception) -> str:
        """The one line for a failed connect: the endpoint, why, and a hint."""
        where = f"cannot connect to {self.target.describe()}"
        number = getattr(e, "osError", None)
        if number in (errno.EACCES, errno.EPERM):
            return f"{where}: permission denied (run the console as the server's user)"
        if isinstance(number, int) and number:
            why = os.strerror(number)
        elif isinstance(e, ConnectError):
            why = (str(e.args[0]) if e.args and e.args[0] else e.MESSAGE).rstrip(".")
        else:
            why = str(e).rstrip(".")
        if isinstance(e, DNSLookupError):
            return f"{where}: {why}"
        if self.target.path and not os.path.isabs(self.target.path):
            hint = ("is pushsvc running, and is this its run directory? "
                    "Use --connect to give its endpoint")
        else:
            hint = "is pushsvc running?"
        return f"{where}: {why}; {hint}"

    def close(self) -> None:
        if self.thread.is_alive():
            self.reactor.callFromThread(self._stop)
            self.thread.join(5)
