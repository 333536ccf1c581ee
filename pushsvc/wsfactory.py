"""The WebSocket factory of one process: it builds a ``PushServerProtocol``
per client with the settings' options, keeps the set of open connections,
flushes the frames each queued in a reactor turn, and closes them all (at
shutdown, or spread over a drain when a rolling restart retires a worker)."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from zope.interface import implementer

from .protocol import CLOSE_GOING_AWAY
from .reloadable import IReloadable
from .websocket import OPEN, PushServerProtocol

_log = Logger()

# Every option of a server connection (Autobahn's list), set on the protocol class.
OPTIONS = WebSocketServerProtocol.CONFIG_ATTRS

# Seconds between two batches of clients closed by a rolling restart's drain.
DRAIN_STEP = 0.1


@implementer(IReloadable)
class PushServerFactory(WebSocketServerFactory):
    """Builds client connections for one engine and can close them all."""

    protocol = PushServerProtocol

    def __init__(self, engine, settings, reactor):
        super().__init__()
        self.engine = engine
        self.counters = engine.counters  # the refusals this edge counts (counters.py)
        self.reactor = reactor
        self.connections: set[PushServerProtocol] = set()
        engine.connections = self.connections  # for /metrics (pushsvc/metrics.py)
        self.meter = engine.meter
        self._close_waiters: dict[PushServerProtocol, list[Deferred]] = {}
        self._unflushed: list[PushServerProtocol] = []
        # The per-address slot of the connection being upgraded (http/upgrade.py's
        # WebSocket resource sets it; the protocol takes it in connectionMade).
        self.next_slot = None
        self.setProtocolOptions(
            # twisted.web has read the whole request before the protocol
            # exists, and its own timeout (handshake_timeout) covers the wait.
            openHandshakeTimeout=0,
            autoPingInterval=0,
            echoCloseCodeReason=True,
            # No HTML status page on a plain GET /ws (it also offers ?redirect=).
            webStatus=False,
            # Autobahn's default drops the TCP connection on a failure, so an
            # oversized frame would end in 1006; send the close code (1009) instead.
            failByDrop=False,
        )
        # Autobahn copies every option into each connection; the lean
        # protocol (wsbase.py) copies none and reads them from its class:
        # one subclass per factory, carrying this factory's options.
        self.protocol = type("PushServerProtocol", (PushServerProtocol,), {})
        self.configure(settings)

    def configure(self, settings) -> None:
        """Use ``settings`` from now on, for open connections too (a reload)."""
        self.settings = settings
        for conn in self.connections:
            if conn._guard is not None:
                conn._guard.configure(settings.messages_per_second, settings.message_burst)
        # The handshake's Server header (Autobahn names its version otherwise).
        self.server = settings.server_header or None
        self.setProtocolOptions(maxFramePayloadSize=settings.max_message_bytes,
                                maxMessagePayloadSize=settings.max_message_bytes,
                                closeHandshakeTimeout=settings.close_timeout)
        for name in OPTIONS:
            value = getattr(self, name)
            # A function option (perMessageCompressionAccept, called when a
            # browser offers compression) must not become a method of the class.
            setattr(self.protocol, name, staticmethod(value) if callable(value) else value)

    def flush_soon(self, conn: PushServerProtocol) -> None:
        """Have ``conn.flush()`` run at the end of this reactor turn."""
        if not self._unflushed:
            self.reactor.callLater(0, self._flush)
        self._unflushed.append(conn)

    def _flush(self) -> None:
        conns, self._unflushed = self._unflushed, []
        for conn in conns:
            try:
                conn.flush()
            except Exception:
                session = conn.session
                _log.failure("writing to session {session} (user {user}) failed; "
                             "dropping it", session=session and session.id,
                             user=session and session.user)
                conn.dropConnection(abort=True)

    def pop_close_waiters(self, conn: PushServerProtocol) -> list[Deferred]:
        return self._close_waiters.pop(conn, [])

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server going away",
                  over: float = 0.0) -> Deferred:
        """Close every client, in batches spread evenly over ``over`` seconds
        (a batch every DRAIN_STEP: their reconnects are not one storm); fires
        when all are gone (Autobahn drops any client that does not answer
        within ``close_timeout``)."""
        conns = list(self.connections)
        waits = []
        for conn in conns:
            d = Deferred()
            self._close_waiters.setdefault(conn, []).append(d)
            waits.append(d)
        steps = max(1, min(len(conns), int(over / DRAIN_STEP) + 1))
        size = -(-len(conns) // steps)
        for step in range(steps):
            batch = conns[step * size:(step + 1) * size]
            if step == 0:
                self._close(batch, code, reason)
            else:
                self.reactor.callLater(step * DRAIN_STEP, self._close, batch, code, reason)
        return DeferredList(waits)

    def _close(self, conns: list[PushServerProtocol], code: int, reason: str) -> None:
        for conn in conns:
            if conn not in self.connections:  # gone meanwhile
                continue
            if conn.state == OPEN:
                conn.close(code, reason)
            else:
                conn.dropConnection(abort=True)
