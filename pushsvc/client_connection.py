"""One plain connection to pushsvc that keeps every frame, used by the tests
(``connect``, ``PushClientProtocol``), the errors every client request fails
with (``ServerError``, ``ConnectionClosed``) and ``tls_failure``, which words
a failed wss:// handshake.

    client = await connect("ws://127.0.0.1:8080/ws")
    await client.request("auth", user="u1")
    await client.request("join", group="lobby")
    ...                                   # someone pushes to group lobby
    await client.barrier()                # everything sent before is now here
    print(client.messages)

``request`` sends an op with a fresh ``ref`` and fires with the reply (``ok``,
``pong`` or ``welcome``); an ``error`` reply fails it with ``ServerError``.
``barrier`` is a ping: the server answers in order, so once the pong is back,
every frame the server wrote before it has arrived.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, wrapClientTLS


class ServerError(Exception):
    """The server answered a request with an ``error`` frame.  ``group`` names
    the group when it answers a ``join`` of PushClient's (None otherwise)."""

    def __init__(self, frame: dict[str, Any], group: str | None = None):
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.code = frame.get("code")
        self.frame = frame
        self.group = group


class ConnectionClosed(Exception):
    """The connection closed before the awaited reply or frame arrived."""

    def __init__(self, code: int | None, reason: str | None):
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


class PushClientProtocol(WebSocketClientProtocol):
    """One client connection; collects every frame the server sends."""

    def __init__(self):
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.session: str | None = None
        self.user: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.welcomed: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self._refs = itertools.count(1)
        self._pending: dict[Any, Deferred] = {}
        self._watchers: list[tuple[Callable[[], bool], Deferred]] = []

    def onMessage(self, payload, isBinary):
        frame = json.loads(payload)
        self.frames.append(frame)
        op = frame.get("op")
        if op == "welcome":
            self.session, self.user = frame["session"], frame["user"]
            if not self.welcomed.called:
                self.welcomed.callback(self)
        elif op == "msg":
            self.messages.append(frame)
        waiter = self._pending.pop(frame.get("ref"), None) if "ref" in frame else None
        if waiter is not None:
            if op == "error":
                waiter.errback(ServerError(frame))
            else:
                waiter.callback(frame)
        self._check_watchers()

    def onClose(self, wasClean, code, reason):
        self.close_code, self.close_reason = code, reason
        error = ConnectionClosed(code, reason)
        pending, self._pending = self._pending, {}
        watchers, self._watchers = self._watchers, []
        for d in list(pending.values()) + [d for _, d in watchers]:
            d.errback(error)
        if not self.welcomed.called:
            self.welcomed.errback(error)
        self.closed.callback((code, reason))

    def send_json(self, frame: Any) -> None:
        """Send any JSON value as a text frame (tests send bad frames this way)."""
        self.sendMessage(json.dumps(frame).encode("utf-8"))

    def request(self, op: str, **fields: Any) -> Deferred:
        """Send ``op`` with a new ref; fires with the reply frame."""
        ref = next(self._refs)
        d = self._pending[ref] = Deferred()
        self.send_json({"op": op, "ref": ref, **fields})
        return d

    def barrier(self) -> Deferred:
        """Fires once every frame the server sent before now has arrived."""
        return self.request("ping")

    def wait_until(self, condition: Callable[[], bool]) -> Deferred:
        """Fires when ``condition()`` is true after some frame arrives (or now)."""
        d = Deferred()
        if condition():
            d.callback(None)
        else:
            self._watchers.append((condition, d))
        return d

    def wait_for_messages(self, count: int) -> Deferred:
        """Fires with ``messages`` once at least ``count`` have arrived."""
        return self.wait_until(lambda: len(self.messages) >= count).addCallback(
            lambda _: self.messages)

    def _check_watchers(self) -> None:
        still = []
        for condition, d in self._watchers:
            if condition():
                d.callback(None)
            else:
                still.append((condition, d))
        self._watchers = still

    def disconnect(self, code: int = 1000) -> Deferred:
        """Close cleanly; fires when the connection is closed."""
        self.sendClose(code)
        return self.closed


def connect(url: str, reactor=None,
            protocol: type[PushClientProtocol] = PushClientProtocol,
            tls=None) -> Deferred:
    """Open a client to ``url`` (ws://host:port/ws or wss://...); fires after
    the welcome.

    ``tls``: for wss://, the client TLS options to use instead of trusting
    the system's CA certificates, e.g.
    ``optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(pem))``.
    """
    if reactor is None:
        from twisted.internet import reactor
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "wss" else 80)
    factory = WebSocketClientFactory(url)
    factory.protocol = protocol
    kind = "tls" if parsed.scheme == "wss" and tls is None else "tcp"
    endpoint = clientFromString(reactor, f"{kind}:host={parsed.hostname}:port={port}")
    if parsed.scheme == "wss" and tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    return endpoint.connect(factory).addCallback(lambda proto: proto.welcomed)


def tls_failure(reason) -> str | None:
    """Why a wss:// connection ended in its TLS handshake, in words; None
    when it did not (an untrusted certificate would otherwise be a bare 1006)."""
    from OpenSSL.SSL import Error
    if not reason.check(Error):
        return None
    details = [part for args in reason.value.args for entry in args
               for part in (entry[-1] if isinstance(entry, tuple) else entry,) if part]
    why = ", ".join(dict.fromkeys(str(d) for d in details)) or "handshake failed"
    hint = ("; trust the server's CA with SSL_CERT_FILE=ca.pem or the tls= option"
            if "certificate verify failed" in why else "")
    return f"TLS: {why}{hint}"
