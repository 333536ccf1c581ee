"""The WebSocket edge: an Autobahn protocol per client, thin around the engine.

Each connection is a ``PushServerProtocol`` (made by ``wsfactory.PushServerFactory``;
Autobahn's protocol, set up once per class: ``wsbase.LeanServerProtocol``).
It gives the engine its frames and writes what the engine sends; it owns
what the engine does not know:

- the flow watch: a push producer on the transport.  Twisted buffers writes
  without limit, so while the transport says "pause" the connection counts the
  bytes it still writes; past ``max_buffered_bytes`` it stops writing, leaves
  the engine and closes with 1013.  Frames wait for the end of the reactor
  turn (one ``send()`` for all of them), or at most ``FLUSH_AT`` bytes.
- liveness: the time the client last sent anything; the engine's keepalive tick
  asks ``check_alive`` to ping it or drop it.
- the close code mapping for limits Autobahn enforces itself (1009 for a frame
  over ``max_message_bytes``).
- abuse limits (docs/security.md): the message rate (a token bucket per
  session: over it, error ``rate_limited``; ``message_burst`` refusals in a
  row, close 1008), fragments per message (``MAX_FRAGMENTS``, close 1009),
  and the connection's place in the per-address count (``ip_slot``, handed
  over by the site at the upgrade, given back when the connection ends).
"""

from __future__ import annotations

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import tcp
from twisted.web.http import RESPONSES
from twisted.logger import Logger
from zope.interface import implementer

from .engine import IConnection, Overloaded
from .frames import error_frame
from .limits import RateGuard
from .protocol import (BAD_REQUEST, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN,
                       RATE_LIMITED, ProtocolError, encode, ref_of)
from .twisted_private import send_now
from .wsbase import LeanServerProtocol

_log = Logger()


OPEN = LeanServerProtocol.STATE_OPEN
CONNECTING = LeanServerProtocol.STATE_CONNECTING
SWITCHING = b"HTTP/1.1 101 "  # the start of the handshake's answer

# Frames queued for the end of the turn are written at once past this many bytes.
FLUSH_AT = 64 * 1024

# Frames one message may come in.  Browsers send a message as one frame and
# other clients in a few; a flood of tiny fragments costs a list entry each.
MAX_FRAGMENTS = 1024
FRAGMENTS_PER_TOKEN = 16  # every 16th fragment of a message costs a token, like a message


def prepare_frame(frame: bytes) -> PreparedMessage:
    """Frame a text message once, for writing to many clients (never compressed)."""
    return PreparedMessage(frame, False, False, True)


@implementer(IConnection)
class PushServerProtocol(LeanServerProtocol):
    """One client connection."""

    session = None
    _out = None           # frames queued in this reactor turn (see flush)
    _queued = 0           # their bytes
    _socket = None        # the socket, when the transport is plain TCP
    last_seen = 0.0
    buffered = 0          # bytes written since the transport asked us to pause
    max_buffered = 0      # the most bytes waiting at once (tests read it)
    _paused = False
    ip_slot = None        # limits.Slot: this connection's place in the per-address count
    _guard = None        # limits.RateGuard, made at the first frame the client sends
    _fragments = 0        # frames of the message being received
    _in_close_frame = False  # Autobahn is handling the client's close frame
    _cutoff = None        # the abort of a connection closed after a bad close frame

    # -- Autobahn callbacks -----------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        transport = self.transport
        if isinstance(transport, tcp.Connection) and not transport.TLS:
            self._socket = transport.socket
        self.factory.connections.add(self)
        self.factory.meter.connections_opened += 1
        self.ip_slot, self.factory.next_slot = self.factory.next_slot, None

    def connectionLost(self, reason):
        self.factory.connections.discard(self)
        if self.ip_slot is not None:
            self.ip_slot.release()
        # Autobahn leaves its close handshake timer (and this connection in
        # it) for close_timeout when a failed connection is dropped early.
        call, self.closeHandshakeTimeoutCall = self.closeHandshakeTimeoutCall, None
        if call is not None:
            call.cancel()
        cutoff, self._cutoff = self._cutoff, None
        if cutoff is not None and cutoff.active():
            cutoff.cancel()
        super().connectionLost(reason)
        self._leave_engine()
        for waiter in self.factory.pop_close_waiters(self):
            waiter.callback(None)

    def dataReceived(self, data):
        factory = self.factory
        self.last_seen = factory.engine.clock.seconds()
        factory.meter.bytes_in += len(data)
        super().dataReceived(data)

    def onOpen(self):
        engine = self.factory.engine
        try:
            self.session = engine.open(self)
        except Overloaded:
            self.close(CLOSE_TRY_AGAIN, "server is full, try again later")
            return
        # ?token= on the URL: an auth with it follows the welcome; ?resume=1:
        # live messages wait for the client's resume.
        params = self.http_request_params or {}
        token = params.get("token", (None,))[0]
        if "resume" in params:
            engine.hold(self.session)
        self.release_handshake()
        transport = self.transport
        # twisted.web's HTTPChannel is the transport's producer until now.
        transport.unregisterProducer()
        self.transport.registerProducer(_FlowWatch(self), True)
        engine.reply(self.session, engine.welcome(self.session))
        if token is not None:
            engine.authenticate_url(self.session, token)

    def onMessage(self, payload, isBinary):
        # Nothing is served once the server has begun to close (a token that
        # expired, a kick): the client's frames in flight meanwhile are dropped.
        if self.session is None or self.state != OPEN:
            return
        if not self._within_rate(payload, isBinary):
            return
        engine = self.factory.engine
        if isBinary:
            engine.reply(self.session, error_frame(ProtocolError(
                BAD_REQUEST, "binary frames are not supported; send JSON text")))
            return
        try:
            engine.handle(self.session, payload)
        except Exception:
            _log.failure("error serving a frame from session {session} (user {user})",
                         session=self.session.id, user=self.session.user)
            engine.reply(self.session, error_frame(ProtocolError(
                "internal", "internal error; the request was not done")))

    def onClose(self, wasClean, code, reason):
        self._leave_engine()

    def onMessageBegin(self, isBinary):
        super().onMessageBegin(isBinary)
        self._fragments = 0

    def onMessageFrameBegin(self, length):
        super().onMessageFrameBegin(length)
        self._fragments += 1
        if (self._fragments % FRAGMENTS_PER_TOKEN == 0 and self.session is not None
                and not self.failedByMe):
            # Fragments cost the parser as much as messages: a flood of them
            # spends tokens too, and a long one ends in 1008 like any flood.
            self._within_rate()
        if self._fragments > MAX_FRAGMENTS and not self.failedByMe:
            self._fail_connection(CLOSE_TOO_BIG, f"a message in more than {MAX_FRAGMENTS} "
                                                 f"fragments")

    def onPong(self, payload):
        # An unasked pong costs a token like a ping (answers to ours are few).
        if self.session is not None:
            self._within_rate()
        super().onPong(payload)

    def onPing(self, payload):
        # A ping costs a token like a message.  A client that does not read
        # gets no pong: Autobahn's frames bypass the slow-reader count.
        if self.session is not None and self._within_rate() and not self._paused:
            super().onPing(payload)

    def onCloseFrame(self, code, reasonRaw):
        self._in_close_frame = True
        try:
            return super().onCloseFrame(code, reasonRaw)
        finally:
            self._in_close_frame = False

    def dropConnection(self, abort=False):
        # A close frame that breaks the rules (a code no one may send, a
        # 1-byte body, a reason that is not UTF-8) makes Autobahn send its own
        # close (1002, 1007) and then take the same bad frame for the answer
        # to it: it would abort, and the reset would destroy the close frame
        # it has just written.  End with a FIN after it instead, and cut off
        # a peer that does not read it within close_timeout.
        if (abort and self._in_close_frame and self.failedByMe
                and self.transport is not None and self._cutoff is None):
            super().dropConnection(abort=False)
            self._cutoff = self.factory.reactor.callLater(
                self.factory.settings.close_timeout, self.transport.abortConnection)
            return
        super().dropConnection(abort)

    def sendHttpErrorResponse(self, code, reason, responseHeaders=None):
        """A handshake Autobahn refuses (no Sec-WebSocket-Key, a version other
        than 13, ...): answered as the rest of the HTTP edge answers, in JSON."""
        if code == 400:
            self.factory.counters["http_invalid"] += 1
        body = encode({"error": {"code": BAD_REQUEST if code == 400 else f"http_{code}",
                                 "message": str(reason)[:300]}}) + b"\n"
        head = [f"HTTP/1.1 {code} {RESPONSES.get(code, b'Error').decode('ascii')}",
                "Content-Type: application/json", "Cache-Control: no-store",
                "Connection: close", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in responseHeaders or ()]
        self.sendData("\r\n".join(head).encode("latin-1", "replace") + b"\r\n\r\n" + body)

    def _fail_connection(self, code=1001, reason="going away"):
        # Autobahn fails a connection for a frame over the size limit (1009),
        # a protocol error (1002) or invalid UTF-8 (1007).
        if self.state != self.STATE_CLOSED and not self.failedByMe:
            self.factory.counters[
                "dropped_large" if code == CLOSE_TOO_BIG else "dropped_invalid"] += 1
        super()._fail_connection(code, reason)

    # -- the message rate ---------------------------------------------------

    def _within_rate(self, payload: bytes | None = None, binary: bool = False) -> bool:
        """Spend a token for a frame from the client (a message, a ping or
        pong, every FRAGMENTS_PER_TOKEN-th fragment): False when it is over
        the rate.  The first refusal of a window is answered
        ``rate_limited``, the others are dropped; refusals that outnumber
        what a window served close the session with 1008 (``RateGuard``)."""
        settings = self.factory.settings
        if settings.messages_per_second <= 0:
            return True
        engine = self.factory.engine
        now = engine.clock.seconds()
        guard = self._guard
        if guard is None:
            guard = self._guard = RateGuard(settings.messages_per_second,
                                             settings.message_burst, now)
        verdict = guard.admit(now)
        if verdict is RateGuard.SERVE:
            return True
        self.factory.counters["rate_limited"] += 1
        if verdict is RateGuard.CLOSE:
            self._flooding()
        elif verdict is RateGuard.TELL and payload is not None:
            error = ProtocolError(RATE_LIMITED, f"more than {settings.messages_per_second:g} "
                                                f"messages a second; this one was not served")
            engine.reply(self.session, error_frame(error, None if binary else ref_of(payload)))
        return False

    def _flooding(self) -> None:
        self.factory.counters["dropped_flood"] += 1
        # Per connection: debug only (the drop is counted, see /metrics).
        _log.debug("closing session {session} (user {user}): {count} frames over the "
                   "rate limit in {window:g} s", session=self.session.id, user=self.session.user,
                   count=self._guard.refused, window=RateGuard.WINDOW)
        self._leave_engine()
        self.close(CLOSE_POLICY, "sending too fast")

    def _leave_engine(self):
        # Forget the session first: closing it in the engine may deliver
        # (a broker flush), and nothing must be written to it by then.
        session, self.session = self.session, None
        if session is not None:
            self.factory.engine.close(session)

    # -- IConnection --------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        self.send_prepared(prepare_frame(frame))

    def send_prepared(self, prepared: PreparedMessage) -> None:
        """Write a prepared frame.  This is ``sendPreparedMessage`` without
        Autobahn's per-write debug formatting (two thirds of the cost of a
        write): compression is never negotiated, so the prepared bytes are
        exactly what goes on the wire."""
        if self.state != OPEN or self.session is None:
            return
        frame = prepared.payloadHybi
        if self._paused:
            self.buffered += len(frame)
            self.max_buffered = max(self.max_buffered, self.buffered)
            if self.buffered > self.factory.settings.max_buffered_bytes:
                self._too_slow()
                return
        self._queue(frame)
        if self._queued >= FLUSH_AT:
            # Hand a big turn's frames on now: what the kernel does not take
            # fills Twisted's buffer, whose pause signal starts the counting.
            self.flush()

    def _queue(self, data: bytes) -> None:
        """Add ``data`` to what this connection writes at the end of the turn."""
        if self._out is None:
            self._out = [data]
            self._queued = len(data)
            self.factory.flush_soon(self)
        else:
            self._out.append(data)
            self._queued += len(data)

    def flush(self) -> None:
        """Write the frames of this reactor turn: with one ``send()`` straight to
        the socket when Twisted holds nothing for it (no epoll register and
        unregister per write), else through the transport, which keeps order
        and tells the flow watch when the client falls behind."""
        frames, self._out, self._queued = self._out, None, 0
        if not frames or self.transport is None:
            return
        self._write(frames[0] if len(frames) == 1 else b"".join(frames))

    def send_now(self, prepared: PreparedMessage) -> None:
        """Write a prepared frame at once, unless frames of this turn wait (then
        after them).  For a message that is alone in its turn: there is nothing
        to batch it with, and queueing it would cost more than the write."""
        if self._out is not None or self._paused:
            self.send_prepared(prepared)
        elif self.state == OPEN and self.session is not None and self.transport is not None:
            self._write(prepared.payloadHybi)

    def _write(self, data: bytes) -> None:
        self.factory.meter.bytes_out += len(data)
        if self._socket is not None:
            send_now(self.transport, self._socket.send, data)
        else:
            self.transport.write(data)

    def sendData(self, data, sync=False, chopsize=None):
        # The handshake's answer waits for the end of the turn, so that it
        # leaves with the welcome in one send() (a refusal is written at once:
        # Autobahn closes the connection right after it).
        if self.state == CONNECTING and data.startswith(SWITCHING):
            self._queue(data)
            return
        # Autobahn's other writes (pong, ping, close) go after the frames
        # queued in this turn, and as they do: straight to the socket when
        # Twisted holds nothing for it.
        self.flush()
        if sync or chopsize or self.send_queue:  # not pushsvc's: Autobahn's queue
            self.factory.meter.bytes_out += len(data)
            super().sendData(data, sync, chopsize)
        else:
            self._write(data)

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake with any code a server may send.

        (Autobahn's ``sendClose`` only takes 1000 and 3000-4999, the codes an
        application may choose; 1001, 1008, 1011, 1012 and 1013 are the
        server's own, so the frame is sent directly.)
        """
        if self.state == OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8")[:123], isReply=False)

    def check_alive(self, now: float) -> None:
        settings = self.factory.settings
        idle = now - self.last_seen
        if idle >= settings.ping_timeout:
            _log.debug("dropping silent session {session} (user {user})",
                       session=self.session.id, user=self.session.user)
            self._leave_engine()
            self.dropConnection(abort=True)
        elif idle >= settings.ping_interval and self.state == OPEN:
            self.sendPing()

    # -- slow readers -------------------------------------------------------

    def _too_slow(self) -> None:
        self.factory.counters["dropped_slow"] += 1
        _log.debug("closing session {session} (user {user}): more than {limit} bytes "
                   "waiting to be written", session=self.session.id,
                   user=self.session.user, limit=self.factory.settings.max_buffered_bytes)
        self._leave_engine()
        self.close(CLOSE_TRY_AGAIN, "too slow to read")

    def pause_writes(self) -> None:
        self._paused = True

    def resume_writes(self) -> None:
        self._paused = False
        self.buffered = 0


class _FlowWatch:
    """The push producer the transport pauses when its write buffer is full."""

    __slots__ = ("conn",)

    def __init__(self, conn: PushServerProtocol):
        self.conn = conn

    def pauseProducing(self):
        self.conn.pause_writes()

    def resumeProducing(self):
        self.conn.resume_writes()

    def stopProducing(self):
        pass
