"""One HTTP connection and the site: the limits of the HTTP edge before any
route runs (docs/security.md)."""

from __future__ import annotations

import json

from twisted.web.server import Site
from zope.interface import implementer

from ..limits import address_key
from ..protocol import BAD_REQUEST, TOO_LARGE
from ..reloadable import IReloadable
from .answers import COUNTED, error_body
from .api import HttpApi
from .lean import LeanChannel


class PushChannel(LeanChannel):
    """One HTTP connection (until it upgrades to a WebSocket), its API
    requests served by the lean path (lean.py), with limits:

    - the request line and headers at most ``max_header_bytes`` (and Twisted's
      ``maxHeaders``, 500 headers), else a JSON 431; any other malformed
      request gets a JSON 400 (Twisted answers a bare 400, or nothing);
    - a whole request within ``handshake_timeout`` of the connection (or the
      previous answer), however slowly it trickles in, else the connection
      is closed (``slow_handshakes``);
    - its place in the per-address count (``ip_slot``); a connection over the
      limit (``refused``) gets 429 to its request, one over twice the limit
      (``abort_now``) is cut off at once.

    After an error answer the connection reads and drops what the client
    still sends until the client closes, for at most ``close_timeout``:
    closing at once with unread data would reset the connection, and the
    client might lose the answer.
    """

    ip_slot = None
    refused = False
    abort_now = False
    proxied = False       # from a trusted proxy: counted per client at /ws
    _deadline = None      # the call that ends a request taking too long
    _partial = False      # bytes of a request have arrived, not all of it
    _served = False       # a whole request has arrived
    _closing = False      # an error answer was written; input is dropped
    _linger = None        # the call that cuts off the client after it

    def connectionMade(self):
        super().connectionMade()
        if self.abort_now:
            self.transport.abortConnection()
            return
        if self.refused:
            self._lean_now = False  # LimitedRequest.process answers it 429
        self._arm()

    def dataReceived(self, data):
        if self._closing:
            return
        if self._deadline is not None:
            self._partial = True
        super().dataReceived(data)

    def lineReceived(self, line):
        if not self._closing:
            super().lineReceived(line)

    def rawDataReceived(self, data):
        if not self._closing:
            super().rawDataReceived(data)

    def allContentReceived(self):
        self._disarm()
        self._partial, self._served = False, True
        super().allContentReceived()

    def _lean_arrived(self):
        self._partial, self._served = False, True

    def _lean_waits(self):
        super()._lean_waits()
        self._disarm()

    def _lean_answered(self):
        super()._lean_answered()
        if not self._closing:
            self._arm()
            self._partial = bool(self._buffer)  # the next request has begun

    def requestDone(self, request):
        if self.persistent and not self._closing:
            self._arm()  # the next request's deadline (a pipelined one may be here)
        super().requestDone(request)

    def timeoutConnection(self):
        self._disarm()
        if self._partial or not self._served:
            self.site.api.counters["slow_handshakes"] += 1
        super().timeoutConnection()

    def connectionLost(self, reason):
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self.ip_slot is not None:
            self.ip_slot.release()
        super().connectionLost(reason)

    def upgraded(self):
        """The connection is a WebSocket's from now on (upgrade.py
        ``DirectUpgrade``): no deadline of this channel applies to it any
        more; its transport, which this channel lets go of."""
        self._disarm()
        self.setTimeout(None)
        transport, self.transport = self.transport, None
        return transport

    def _arm(self):
        timeout = self.site.api.settings.handshake_timeout
        deadline = self._deadline
        if deadline is not None and deadline.active():
            deadline.reset(timeout)  # an answer given at once: cheaper than a new call
        else:
            self._deadline = self.callLater(timeout, self._expired)

    def _disarm(self):
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expired(self):
        self._deadline = None
        self.setTimeout(None)
        self.timeoutConnection()

    # -- malformed requests ---------------------------------------------------

    def lineLengthExceeded(self, line):
        # One line (request line or header) longer than max_header_bytes.
        self._too_large()

    def _respondToBadRequestAndDisconnect(self):
        # Twisted's one way out for every malformed request.
        if (self._receivedHeaderSize > self.totalHeadersSize
                or self._receivedHeaderCount > self.maxHeaders):
            self._too_large()
        else:
            self.answer_and_close(400, BAD_REQUEST, "not a valid HTTP request")

    def _too_large(self):
        self.answer_and_close(431, TOO_LARGE,
                              f"the request line and headers are larger than "
                              f"{self.totalHeadersSize} bytes, or more than "
                              f"{self.maxHeaders} headers")

    def answer_and_close(self, status: int, code: str, message: str) -> None:
        """Write a JSON error answer, then close once the client has it."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._disarm()
        self.setTimeout(None)
        self.site.api.counters[COUNTED.get(status, "http_invalid")] += 1
        body = json.dumps(error_body(code, message), separators=(",", ":")).encode() + b"\n"
        phrase = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                             b"cache-control: no-store\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s"
                             % (status, phrase, len(body), body))
        self._buffer = b""  # lines LineReceiver holds
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.loseConnection()
            return
        self._networkProducer.unregisterProducer()
        half_close()
        self.transport.resumeProducing()
        self._linger = self.callLater(self.site.api.settings.close_timeout,
                                      self.transport.abortConnection)


@implementer(IReloadable)
class PushSite(Site):
    """The site of ``/ws``, the HTTP API and ``/healthz``.

    It logs no access line per request: a push API serves thousands a second.
    """

    api: HttpApi
    protocol = PushChannel  # HTTP/1.1 only (no HTTP/2: WebSockets need 1.1)

    def log(self, request):
        pass

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        settings = self.api.settings
        channel.totalHeadersSize = channel.MAX_LENGTH = settings.max_header_bytes
        host = getattr(addr, "host", None)
        if host is None:  # not TCP (a unix socket): nothing to count
            return channel
        api = self.api
        if api.proxies.trusts(host):
            channel.proxied = True
            return channel
        key = address_key(host)
        channel.ip_slot = api.per_ip.acquire(key)
        if channel.ip_slot is None:
            api.counters["refused_ip"] += 1
            channel.ip_slot = api.refusing.acquire(key)
            if channel.ip_slot is None:
                channel.abort_now = True
            else:
                channel.refused = True
        return channel

    server_header = b""  # http.server_header: the Server header, if any

    def configure(self, settings) -> None:
        """Use ``settings`` from now on (a reload); timeouts and the header
        limit apply to new connections."""
        self.api.configure(settings)
        self.server_header = settings.server_header.encode("latin-1", "replace")
        self.requestFactory.max_body = max(settings.max_message_bytes,
                                           settings.max_batch_bytes)
        # No idle timer of twisted.web's: PushChannel's deadline (a whole
        # request within handshake_timeout of the connection or of the last
        # answer) closes an idle connection too, and a second timer per
        # connection cost a connect storm about 5% of its CPU.
        self.timeOut = None
