"""The lean path of the HTTP API: an ``HTTPChannel`` that reads requests with
llhttp (lean_reader.py) and serves those of the routes rendered by
``JsonResource.render`` (``/api/...``, ``/healthz``) itself, with a
``LeanRequest`` (lean_request.py), without twisted.web's per-request
machinery.  A plain WebSocket handshake (``/ws``, ``/app/KEY``: one that
passes the edge's checks) goes from its bytes to the WebSocket protocol,
which does the handshake (upgrade.py ``DirectUpgrade``).  Every other
request (a handshake to refuse, ``/metrics``, the static files, the Pusher
routes, HEAD, HTTP/1.0, ``Expect``, anything llhttp finds malformed or over
the header limits) is handed, from its first byte,
to the twisted.web ``HTTPChannel`` this class is, which serves it as it
always has; the connection comes back to the lean path once twisted.web has
answered and holds nothing more.

Requests are served one at a time, in order, as ``HTTPChannel`` does:
pipelined requests wait in ``_buffer`` while one is answered (the
connection stops reading past ``_optimisticEagerReadSize`` of them), so a
pipelined command sees the effects of the one before it.
"""

from __future__ import annotations

from twisted.protocols.basic import LineReceiver
from twisted.web.http import HTTPChannel
from twisted.web.resource import getChildForRequest

from .answers import JsonResource
from .lean_reader import HAND_OFF, INVALID, NEED_MORE, RequestReader
from .lean_request import LeanRequest


class LeanChannel(HTTPChannel):
    """An HTTPChannel with the lean path in front (module docstring).

    Subclasses hear of each lean request through ``_lean_arrived`` (whole),
    ``_lean_waits`` (its answer comes later: a round trip) and
    ``_lean_answered``.
    """

    lean = True            # False: twisted.web serves everything (the old path)
    _lean_now = False      # the next bytes go to the lean reader
    _current = None        # the LeanRequest being answered
    _reader = None         # made at the first request
    _serving = False       # inside _serve (an answer given at once must not recurse)
    _paused = False        # reading stopped: requests wait in _buffer

    def connectionMade(self):
        super().connectionMade()
        self._lean_now = self.lean

    def dataReceived(self, data):
        if not self._lean_now:
            super().dataReceived(data)
            self._back_to_lean()
            return
        if not self.persistent:
            return  # after an answer with Connection: close (as HTTPChannel drops it)
        self.resetTimeout()
        self._buffer += data
        if self._current is None:
            self._serve()
        elif (len(self._buffer) > self._optimisticEagerReadSize and not self._paused
              and not self._waitingForTransport):
            self._paused = True
            self._networkProducer.pauseProducing()  # read no more until answered

    def _serve(self) -> None:
        """Serve the whole requests in ``_buffer``, in order, until one waits."""
        if self._reader is None:
            self._reader = RequestReader(self._accept, self.totalHeadersSize, self.maxHeaders,
                                         self.site.requestFactory.max_body)
        self._serving = True
        try:
            while self._buffer and self._current is None and self.persistent:
                outcome, used = self._reader.read(self._buffer)
                if outcome is HAND_OFF:
                    # A WebSocket handshake, most often: its connection keeps no reader.
                    self._lean_now, self._reader = False, None
                    LineReceiver.dataReceived(self, b"")  # twisted.web reads _buffer
                    self._back_to_lean()
                    return
                if outcome is not NEED_MORE and outcome is not INVALID and outcome.target.upgrade:
                    # A plain WebSocket handshake: the connection is the WebSocket's.
                    data, self._buffer, self._reader = self._buffer, b"", None
                    outcome.target.take_over(data)
                    return
                self._buffer = self._buffer[used:]
                if outcome is NEED_MORE:
                    return
                if outcome is INVALID:
                    self._respondToBadRequestAndDisconnect()
                    return
                request = self._current = outcome.target
                self._lean_arrived()
                request.process(outcome.body, outcome.too_large)
                if self._current is request:
                    self._lean_waits()
        finally:
            self._serving = False

    def _accept(self, method: bytes, url: bytes, headers: list) -> LeanRequest | None:
        """A LeanRequest for a request the lean path serves, a DirectUpgrade
        (upgrade.py) for a plain WebSocket handshake, else None."""
        request = LeanRequest(self, method, url, headers)
        resource = getChildForRequest(self.site.resource, request)
        direct = getattr(resource, "direct", None)
        if direct is not None:
            return direct(self, url, headers) if method == b"GET" else None
        if getattr(type(resource), "render", None) is not JsonResource.render:
            return None
        request.resource = resource
        return request

    def lean_done(self, request: LeanRequest) -> None:
        """``request`` has written its answer: on to the next one."""
        self._current = None
        if not request.persistent:
            self.persistent = False
            self.loseConnection()
            return
        self._lean_answered()
        if self._paused:
            self._paused = False
            if not self._waitingForTransport:  # else the transport's resume does it
                self._networkProducer.resumeProducing()
        if not self._serving:
            self._serve()

    def _lean_arrived(self) -> None:
        """A lean request has arrived whole."""

    def _lean_waits(self) -> None:
        """Its answer comes later: no idle timeout meanwhile, and no reading
        when the transport resumes (as HTTPChannel)."""
        self._handlingRequest = True
        if self.timeOut:
            self._savedTimeOut = self.setTimeout(None)

    def _lean_answered(self) -> None:
        self._handlingRequest = False
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)
            self._savedTimeOut = None

    def requestDone(self, request):
        super().requestDone(request)
        self._back_to_lean()

    def _back_to_lean(self) -> None:
        """Once twisted.web has answered and holds no byte of another
        request, the next request is the lean path's again."""
        if (self.lean and not self._lean_now and not self.requests and not self._buffer
                and not self._busyReceiving and self.line_mode and self.persistent
                and self.transport is not None and not self._dataBuffer):
            self._lean_now = True

    def connectionLost(self, reason):
        self._reader = None  # it refers to this channel (accept)
        current, self._current = self._current, None
        if current is not None:
            current.connectionLost(reason)
        super().connectionLost(reason)
