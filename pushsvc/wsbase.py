"""Autobahn's WebSocket server protocol, set up once per class instead of
once per connection.

Autobahn (``autobahn.twisted.websocket``, ``autobahn.websocket.protocol``)
sets up every connection from scratch: some thirty attributes set to the
same constants, its transport details made twice, two Deferreds and an
event table, and debug lines whose arguments (a method's qualified name,
``hltype``; a ``pformat`` of the options) are built whatever the log
level.  In a connect storm that setup cost more than Autobahn's handshake
itself.  ``LeanServerProtocol`` keeps Autobahn as the implementation of the
handshake and of the frames (``processHandshake``, ``succeedHandshake``,
``processData`` and the rest are Autobahn's, unchanged, with every check
and limit) and changes only the setup around them:

- the constant initial state of a connection is class attributes
  (``INITIAL``, set once): an attribute Autobahn changes becomes the
  connection's own at that moment;
- ``connectionMade``, ``dataReceived`` and ``onConnect`` do Autobahn's work
  without building the arguments of its debug lines;
- what pushsvc never reads is made only when asked for: the transport
  details (``transport_details``, complete when first asked for: the TLS
  handshake is over by the time the WebSocket one is), the UTF-8 validator
  (at the first text message), the send queue (for Autobahn's synchronous
  or chopped writes, which pushsvc does not make); ``is_open`` and
  ``is_closed``, which Autobahn resolves and nobody in pushsvc waits on,
  are one shared stand-in;
- ``release_handshake`` lets go of what Autobahn keeps of the handshake
  for the connection's whole life but reads only during it;
- a plain handshake whose head the lean path has parsed (``head``) is
  answered from that parse (wshandshake.py), with the state and the answer
  Autobahn's ``processHandshake`` and ``succeedHandshake`` give it; every
  other handshake, refusals included, is Autobahn's.

tests/test_wsbase.py compares the state of a connection with the one
Autobahn's own setup gives it, so that an Autobahn which sets up more fails
there first.
"""

from __future__ import annotations

from collections import deque
from functools import cached_property

from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import (Timings, TrafficStats, Utf8Validator,
                                         WebSocketProtocol)

from .wshandshake import Plain, plain, response

__all__ = ["LeanServerProtocol"]

# Handshake state Autobahn keeps for a connection's whole life but reads only
# during the handshake: about 2 KB per idle connection.
HANDSHAKE_ONLY = ("http_headers", "http_request_data", "http_response_data",
                  "http_status_line", "http_request_params", "http_request_uri",
                  "http_request_path", "http_request_host", "websocket_origin", "_wskey",
                  "websocket_protocols", "websocket_extensions",
                  "websocket_extensions_in_use")


class _NobodyWaits:
    """``is_open`` and ``is_closed`` of a lean connection: Autobahn resolves
    them (``txaio.resolve``: ``callback``), and no one waits on them."""

    __slots__ = ()

    def callback(self, result) -> None:
        pass


_NOBODY_WAITS = _NobodyWaits()

# What Autobahn's _connectionMade gives every server connection, the same
# for all of them (the rest it makes per connection: see _connectionMade).
INITIAL = {
    "state": WebSocketProtocol.STATE_CONNECTING,
    "send_state": WebSocketProtocol.SEND_STATE_GROUND,
    "data": b"",
    "triggered": False,
    "_perMessageCompress": None,
    "trackedTimings": None,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "wasClean": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None,
    "autoPingPending": None,
    "autoPingPendingCall": None,
    "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
}


class LeanServerProtocol(WebSocketServerProtocol):
    """Autobahn's server protocol with its per-connection setup done once
    per class (module docstring).  Its factory must put Autobahn's options
    on the class too (``CONFIG_ATTRS`` empty: see wsfactory.py)."""

    is_open = is_closed = _NOBODY_WAITS
    send_queue = ()             # a deque once a synchronous or chopped write needs one
    # (url, headers) of the handshake, as the lean path's llhttp read them
    # (http/upgrade.py): set before the handshake's bytes arrive.
    head = None

    def __init__(self):
        # Autobahn's constructor makes the two futures, an event table for
        # listeners (none here: fire() finds none) and transport details
        # that connectionMade replaces.
        pass

    def connectionMade(self):
        # Autobahn's connectionMade without its debug line, and without
        # setting TCP_NODELAY again: every connection comes through
        # twisted.web's HTTPChannel, which has set it.
        self.peer = peer2str(self.transport)
        self._connectionMade()

    def _connectionMade(self):
        # What WebSocketServerProtocol._connectionMade makes for each
        # connection; the constants are class attributes (INITIAL), the
        # options too (the factory's), so there is nothing to copy or log.
        self.trafficStats = TrafficStats()
        if self.trackTimings:
            self.trackedTimings = Timings()
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = self.factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout)
        self.factory.countConnections += 1

    @cached_property
    def utf8validator(self) -> Utf8Validator:
        return Utf8Validator()

    @cached_property
    def _transport_details(self) -> TransportDetails:
        details = create_transport_details(self.transport, True)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        return details

    def _onOpen(self):
        # Autobahn adds the TLS channel id and peer certificate to the
        # transport details here; made now or later, they have them.
        self.onOpen()

    def release_handshake(self) -> None:
        """Let go of the handshake's state (HANDSHAKE_ONLY), once the
        connection is open and what it needed of it was read."""
        for name in HANDSHAKE_ONLY:
            setattr(self, name, None)

    def dataReceived(self, data):
        self._dataReceived(data)  # without Autobahn's debug line

    def _connectionLost(self, reason):
        WebSocketProtocol._connectionLost(self, reason)  # without the debug line
        self.factory.countConnections -= 1

    def onConnect(self, request):
        return None  # Autobahn's: a debug line, and None (no subprotocol)

    def processHandshake(self):
        head = self.__dict__.pop("head", None)  # read once; no attribute left behind
        if head is not None and type(self).onConnect is LeanServerProtocol.onConnect:
            end = self.data.find(b"\r\n\r\n")
            found = plain(*head, self) if end >= 0 else None
            if found is not None:
                self._open_plain(found, end + 4)
                return
        super().processHandshake()

    def _open_plain(self, found: Plain, end: int) -> None:
        """What Autobahn's processHandshake and succeedHandshake do with a
        plain handshake whose head is the first ``end`` bytes of ``data``."""
        data = self.data
        self.http_request_data, self.data = data[:end], data[end:]
        self.http_status_line = f"GET {found.uri} HTTP/1.1"
        self.http_headers = found.headers
        self.http_request_uri = found.uri
        self.http_request_path = found.path
        self.http_request_params = found.params
        self.http_request_host = found.host
        self.websocket_version = 13
        self.websocket_protocols = []
        self.websocket_origin = found.origin
        self.websocket_extensions = found.extensions
        self._wskey = found.key
        self.websocket_protocol_in_use = None
        self.websocket_extensions_in_use = []
        factory = self.factory
        answer = response(factory.server, factory.headers, found.key)
        self.sendData(answer.encode("utf8"))
        self.http_response_data = answer
        self.state = self.STATE_OPEN
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        self.inside_message = False
        self.current_frame = None
        if self.autoPingInterval:
            self.autoPingPendingCall = factory._batched_timer.call_later(
                self.autoPingInterval, self._sendAutoPing)
        if self.trackedTimings:
            self.trackedTimings.track("onOpen")
        self._onOpen()
        self.is_open.callback(None)
        if self.data:
            self.consumeData()

    def sendData(self, data, sync=False, chopsize=None):
        if (sync or chopsize) and not self.send_queue:
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)


for _name, _value in INITIAL.items():
    setattr(LeanServerProtocol, _name, _value)
