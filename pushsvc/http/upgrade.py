"""``/ws``: the WebSocket upgrade, behind the edge's checks."""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
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
        self.api = api

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
