"""``/ws`` (and ``/app/KEY``): the WebSocket upgrade, behind the edge's checks.

Two ways in: twisted.web renders ``PushWebSocketResource`` (every check and
refusal, and Autobahn's ``WebSocketResource`` replaying the request to the
WebSocket protocol); or the lean path (lean.py) hands over a plain
handshake, one that passes every check, from its bytes as sent
(``PushWebSocketResource.direct``), so that a connect storm does not build a
twisted.web Request per connection only to take it apart again.
"""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import NOT_DONE_YET

from ..limits import address_key
from ..protocol import BAD_REQUEST, FORBIDDEN, RATE_LIMITED
from .answers import error_body, respond
from .api import HttpApi


class PushWebSocketResource(WebSocketResource):
    """``/ws``: checks the handshake's ``Origin`` (403), counts a client that
    came through a trusted proxy by the address the proxy forwarded (429),
    then upgrades, handing the connection's per-address slot to the
    WebSocket protocol (the HTTP channel is done with once it upgrades)."""

    def __init__(self, factory, api: HttpApi):
        super().__init__(factory)
        self.factory = factory
        self.api = api

    def direct(self, channel, url: bytes,
               headers: list[tuple[bytes, bytes]]) -> "DirectUpgrade | None":
        """The upgrade of a plain handshake on ``channel`` (HTTP/1.1, asking
        for a WebSocket, with an allowed Origin or none, not through a
        trusted proxy), done without twisted.web; None: twisted.web serves
        the request as always, refusals included."""
        if channel.proxied:
            return None
        upgrade = origin = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"upgrade":
                upgrade = value
            elif lower == b"origin":
                origin = value
        if upgrade is None or upgrade.strip().lower() != b"websocket":
            return None
        if origin is not None and not self.api.origins.allows(origin.decode("latin-1")):
            return None
        return DirectUpgrade(self.factory, channel, (url, headers))

    def render(self, request):
        api = self.api
        origin = request.getHeader(b"origin")
        refusal = refuse_upgrade(api, request.clientproto >= b"HTTP/1.1",
                                 None if origin is None else origin.decode("latin-1"))
        if refusal is not None:
            return _refuse(request, *refusal)
        channel = request.channel
        proxied = getattr(channel, "proxied", False)
        if proxied:
            client = api.proxies.client(channel.transport.getPeer().host,
                                        request.requestHeaders.getRawHeaders(b"x-forwarded-for"))
            slot = api.per_ip.acquire(address_key(client))
            if slot is None:
                api.counters["refused_ip"] += 1
                channel.persistent = False
                request.setHeader(b"connection", b"close")
                return _refuse(request, 429, RATE_LIMITED,
                               f"too many connections from your address: at most "
                               f"{api.per_ip.limit} at once")
        else:
            slot, channel.ip_slot = getattr(channel, "ip_slot", None), None
        factory = self._factory
        factory.next_slot = slot
        try:
            return super().render(request)
        finally:
            if factory.next_slot is not None:  # no WebSocket protocol took it
                factory.next_slot = None
                if proxied:
                    slot.release()
                else:
                    channel.ip_slot = slot


class DirectUpgrade:
    """A handshake the lean path hands over: the connection becomes the
    WebSocket protocol's, which reads the request as the client sent it,
    with the ``head`` llhttp parsed (url, headers): a plain handshake is
    answered from it, any other is Autobahn's (wsbase.py)."""

    upgrade = True  # the request ends at its head (lean_reader.py)

    def __init__(self, factory, channel, head: tuple[bytes, list]):
        self.factory = factory
        self.channel = channel
        self.head = head

    def take_over(self, data: bytes) -> None:
        """Give the connection to a new WebSocket protocol, which reads
        ``data``: the request, and whatever the client sent after it."""
        channel, factory = self.channel, self.factory
        transport = channel.upgraded()
        factory.next_slot, channel.ip_slot = channel.ip_slot, None
        protocol = factory.buildProtocol(transport.getPeer())
        protocol.head = self.head
        if isinstance(transport, ProtocolWrapper):  # TLS
            transport.wrappedProtocol = protocol
        elif isinstance(transport.protocol, ProtocolWrapper):
            transport.protocol.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(data)


def refuse_upgrade(api: HttpApi, http11: bool,
                   origin: str | None) -> tuple[int, str, str] | None:
    """Why a WebSocket handshake is refused before the upgrade, counted:
    (status, error code, message); None when it may go on."""
    if not http11:  # RFC 6455, 4.1: HTTP/1.1 or later
        api.counters["http_invalid"] += 1
        return 400, BAD_REQUEST, "a WebSocket handshake needs HTTP/1.1"
    if origin is not None and not api.origins.allows(origin):
        api.counters["refused_origin"] += 1
        return 403, FORBIDDEN, f"origin {origin[:200]!r} is not allowed"
    return None


def _refuse(request, status: int, code: str, message: str):
    respond(request, status, error_body(code, message))
    return NOT_DONE_YET
