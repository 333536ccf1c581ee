"""A request of the lean path (lean.py): what the routes rendered by
``JsonResource.render`` use of twisted.web's Request, and their answer
written as twisted.web writes it (same status line, headers in the same
order and case, same body), in one write."""

from __future__ import annotations

import io
import time

from twisted.internet.defer import Deferred
from twisted.web.http import RESPONSES, datetimeToString, unquote
from twisted.web.http_headers import Headers

from ..twisted_private import write_now


_CANONICAL: dict[bytes, bytes] = {}


def canonical(name: bytes) -> bytes:
    """A header name as twisted.web writes it (``Content-Type``, ``WWW-Authenticate``)."""
    written = _CANONICAL.get(name)
    if written is None:
        written = next(Headers({name: [b""]}).getAllRawHeaders())[0]
        if len(_CANONICAL) < 256:  # the routes' own few names
            _CANONICAL[name] = written
    return written


class _Date:
    """The Date header's value, made once a second."""

    second = -1
    value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, datetimeToString(second)
        return self.value


_date = _Date()


class LeanRequest:
    """One request: its method, path, headers and body, the resource that
    serves it, and the answer that resource gives.

    ``headers`` are (name, value) pairs as sent; as in twisted.web,
    ``getHeader`` gives the last value of a name and the first
    ``Connection`` header says whether the connection stays open.
    """

    clientproto = b"HTTP/1.1"
    upgrade = False       # not a WebSocket handshake (those are upgrade.DirectUpgrade's)
    code = 200
    finished = False
    gone = False          # set by JsonResource.render when the client is gone
    too_large = False     # the body was over the limit (LimitedRequest's meaning)
    content = None
    resource = None

    def __init__(self, channel, method: bytes, uri: bytes, headers: list[tuple[bytes, bytes]]):
        self.channel = channel
        self.method = method
        self.uri = uri
        self.path = uri.split(b"?", 1)[0]
        self.prepath: list[bytes] = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        received: dict[bytes, bytes] = {}
        connection = None
        for name, value in headers:
            name = name.lower()
            value = value.strip(b" \t")
            received[name] = value
            if name == b"connection" and connection is None:
                connection = value
        self._received = received
        self._answer: dict[bytes, bytes] = {}
        self._waiting: list[Deferred] = []
        # HTTPChannel.checkPersistence for HTTP/1.1.
        self.persistent = b"close" not in (connection or b"").lower().split(b" ")
        if not self.persistent:
            self._answer[b"connection"] = b"close"

    def getHeader(self, name: bytes) -> bytes | None:
        return self._received.get(name.lower())

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"server":  # as LimitedRequest.setHeader: only http.server_header
            value = self.channel.site.server_header
            if not value:
                return
        self._answer[name] = value

    def notifyFinish(self) -> Deferred:
        d = Deferred()
        self._waiting.append(d)
        return d

    def process(self, body: bytes, too_large: bool) -> None:
        """Render the request with ``body`` as its content (server.Request.process)."""
        self.content = io.BytesIO(body)
        self.too_large = too_large
        self.setHeader(b"server", b"")
        self._answer[b"date"] = _date.now()
        self.resource.render(self)

    def write(self, data: bytes) -> None:
        """The whole answer: ``respond`` writes its body once, with its
        Content-Length set."""
        if self.gone:
            return
        head = [b"HTTP/1.1 %d %s\r\n" % (self.code, RESPONSES.get(self.code, b"Unknown Status"))]
        for name, value in self._answer.items():
            head.append(b"%s: %s\r\n" % (canonical(name), value))
        head.append(b"\r\n")
        write_now(self.channel.transport, b"".join(head) + data)

    def finish(self) -> None:
        self.finished = True
        waiting, self._waiting = self._waiting, []
        self.channel.lean_done(self)
        for d in waiting:
            d.callback(None)

    def connectionLost(self, reason) -> None:
        self.gone = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)
