"""The connections of a ``RedisBroker``: each comes back after a fault.

``_Link`` is one connection to Redis made with one of txredisapi's protocols
(``RedisProtocol`` for commands and scripts, ``_Subscriber`` for SUBSCRIBE):
it connects (behind a Sentinel: to the master it names, checked with
``ROLE``), tells its broker ``_link_up`` once logged in, and after a failed
attempt or a lost connection tells it ``_link_down`` and tries again after
``delay(n)``: 0.1 s doubling to 5 s, +-20 %.  ``ping`` drops a subscriber
whose Redis stopped answering.  What a link tells its broker is
``LinkOwner``.
"""

from __future__ import annotations

import random
from typing import Protocol

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .redis_url import RedisURL

_log = Logger()

RETRY_FIRST = 0.1      # seconds before the first reconnection attempt
RETRY_MAX = 5.0        # ... doubling up to this
RETRY_JITTER = 0.2     # +-20 %, so that the nodes do not all come back at once


class LinkOwner(Protocol):
    """What a ``_Link`` tells the broker that owns it (``redis.RedisBroker``)."""

    def _link_up(self, link: "_Link") -> None:
        """``link`` is connected and logged in: ``link.protocol`` is usable."""

    def _link_down(self, link: "_Link", reason: str) -> None:
        """``link`` failed to connect or lost its connection; it tries again."""

    def _received(self, channel: bytes, payload: bytes) -> None:
        """The subscriber got ``payload`` on Redis channel ``channel``."""

    def _confirmed(self, key: bytes) -> None:
        """Redis confirmed the subscriber's SUBSCRIBE of ``key``."""

    def _unsubscribed(self, key: bytes) -> None:
        """Redis confirmed the subscriber's UNSUBSCRIBE of ``key``."""


def _command(*args: bytes) -> bytes:
    """One Redis command in RESP (written straight to the subscriber)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


def _reason(failure: Failure) -> str:
    return failure.getErrorMessage() or failure.type.__name__


class NotRun(txredisapi.ConnectionError):
    """A call the server refused without running it (a Redis Cluster whose
    slot moves, or that cannot serve it now): to be sent again once the
    connection is up, as what was queued while it was down."""


class _SameTurn:
    """What follows a bulk string in a read, parsed in the same turn.

    txredisapi's parser stops after each bulk string that more data follows
    (``setLineMode(extra)``): it pauses the transport and parses the rest in
    a later reactor turn (``callLater(0)``).  So one bulk string was parsed
    per turn: a message from the subscriber (three of them) took three
    turns, each with two ``epoll_ctl``, and a burst waited behind itself.
    Here the rest is parsed at once, in a loop (not a recursion: a burst of
    any size)."""

    _rest = b""

    def setLineMode(self, extra=b""):
        self.line_mode = 1
        if extra:
            self._rest = extra

    def dataReceived(self, data, unpause=False):
        super().dataReceived(data, unpause)
        while self._rest and not self.paused and not (
                self.transport is None or self.transport.disconnecting):
            rest, self._rest = self._rest, b""
            super().dataReceived(rest)


class CommandProtocol(_SameTurn, txredisapi.RedisProtocol):
    """txredisapi's protocol for commands, each reply parsed when it comes."""


class _Subscriber(_SameTurn, txredisapi.SubscriberProtocol):
    """txredisapi's subscriber, with every push handed to the broker: messages,
    subscribe and unsubscribe confirmations (by channel) and the answers to
    PING; the same for shard channels (SSUBSCRIBE, in a Redis Cluster)."""

    link: "_Link"

    def replyReceived(self, reply):
        if isinstance(reply, list) and reply:
            kind = reply[0]
            try:
                if kind in (b"message", b"smessage") and len(reply) == 3:
                    self.link.broker._received(reply[1], reply[2])
                    return
                if kind in (b"subscribe", b"ssubscribe") and len(reply) == 3:
                    self.link.broker._confirmed(reply[1])
                    return
                if kind == b"unsubscribe" and len(reply) == 3:
                    self.link.broker._unsubscribed(reply[1])
                    return
                if kind == b"pong":
                    self.link.ponged()
                    return
            except Exception:  # the connection must outlive one bad message
                _log.failure("handling a message from redis failed")
                return
        super().replyReceived(reply)


class _Factory(Factory):
    """Builds a link's txredisapi protocol, and answers what that protocol asks
    of its factory when logging in fails."""

    noisy = False
    isLazy = False

    def __init__(self, link: "_Link"):
        self.link = link

    def buildProtocol(self, addr):
        link = self.link
        proto = link.protocol_class(charset=None, replyTimeout=link.timeout,
                                    password=link.url.password, dbid=link.dbid,
                                    convertNumbers=False, username=link.url.username)
        proto.factory = self
        proto.link = link
        proto.whenDisconnected().addCallback(link._lost)
        return proto

    def stopTrying(self):  # login failed: the link tries again later anyway
        pass

    def connectionError(self, why):
        self.link.error = str(why)


class _Server:
    """Where a link connects: the one server of a redis:// URL."""

    def __init__(self, reactor, url: RedisURL, timeout: float):
        self.reactor, self.url, self.timeout = reactor, url, timeout

    def connect(self, factory) -> Deferred:
        host, port = self.url.hosts[0]
        return HostnameEndpoint(self.reactor, host, port, timeout=self.timeout).connect(factory)

    def close(self) -> Deferred:
        return succeed(None)


class _SentinelMaster(_Server):
    """The master of a Sentinel service, asked for before each connection
    (txredisapi's Sentinel support)."""

    def __init__(self, reactor, url: RedisURL, timeout: float):
        super().__init__(reactor, url, timeout)
        self.sentinel = None

    def connect(self, factory) -> Deferred:
        if self.sentinel is None:
            self.sentinel = txredisapi.Sentinel(list(self.url.hosts))
            self.sentinel.discovery_timeout = self.timeout
        d = self.sentinel.discover_master(self.url.service)
        return d.addCallback(lambda address: HostnameEndpoint(
            self.reactor, address[0], address[1], timeout=self.timeout).connect(factory))

    def close(self) -> Deferred:
        return self.sentinel.disconnect() if self.sentinel is not None else succeed(None)


class _Link:
    """One connection to Redis that comes back.

    Connects; once txredisapi's protocol has logged in (and, behind a
    Sentinel, Redis says it is the master) it is ``protocol`` and the broker
    hears ``_link_up``.  A failed attempt or a lost connection is reported
    with ``_link_down`` and the next attempt waits ``delay(n)``: 0.1 s after
    a connection that was up, then doubling to 5 s.  Timers run on ``clock``.
    """

    SUBSCRIBE, UNSUBSCRIBE = b"SUBSCRIBE", b"UNSUBSCRIBE"  # for a subscriber link

    def __init__(self, broker: LinkOwner, name: str, server: _Server, protocol_class,
                 dbid: int | None, clock, timeout: float):
        self.broker, self.name, self.server = broker, name, server
        self.url = server.url
        self.protocol_class, self.dbid = protocol_class, dbid
        self.clock, self.timeout = clock, timeout
        self.protocol = None        # connected, logged in and checked
        self.attempts = 0           # failed attempts since the last success
        self.error: str | None = None
        self.stopped = False
        self._pending = None        # the connection being made or prepared
        self._timer = None          # ends a login that takes too long
        self._retry = None
        self._ping_sent: float | None = None

    def start(self) -> None:
        self._retry = None
        if self.stopped:
            return
        self.error = None
        d = self._pending = self.server.connect(_Factory(self))
        d.addCallbacks(self._connected, self._failed)

    @staticmethod
    def delay(attempt: int) -> float:
        """Seconds before attempt ``attempt`` (1, 2, ...) after failures."""
        base = min(RETRY_MAX, RETRY_FIRST * 2 ** min(attempt - 1, 16))
        return base * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)

    def _connected(self, proto) -> None:
        self._pending = proto
        self._timer = self.clock.callLater(self.timeout, self._too_slow, proto)
        d = proto.whenConnected()
        if self.url.sentinel:
            d.addCallback(lambda _: proto.role()).addCallback(self._is_master, proto)
        d.addCallbacks(lambda _: self._ready(proto), self._not_ready, errbackArgs=(proto,))

    def _too_slow(self, proto) -> None:
        self._timer = None
        self.error = f"no login within {self.timeout:g} s"
        if proto.connected:
            proto.transport.abortConnection()  # _lost follows

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @staticmethod
    def _is_master(role, proto) -> None:
        if not role or role[0] not in (b"master", "master"):
            raise ConnectionError(f"the Sentinel's master answers ROLE with {role!r:.80}")

    def _ready(self, proto) -> None:
        self._cancel_timer()
        if self.stopped or not proto.connected or proto is not self._pending:
            return
        self._pending = None
        self.protocol, self.attempts, self._ping_sent = proto, 0, None
        self.broker._link_up(self)

    def _not_ready(self, failure: Failure, proto) -> None:
        if proto is not self._pending:
            return
        self._cancel_timer()
        self.error = _reason(failure)
        if proto.connected:
            proto.transport.abortConnection()  # _lost follows

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        if self.stopped:
            return
        self.error = _reason(failure)
        self._again(was_up=False)

    def _lost(self, proto) -> None:
        if proto is self.protocol:
            self.protocol = None
            self._again(was_up=True)
        elif proto is self._pending:  # lost while logging in or checking
            self._pending = None
            self._cancel_timer()
            self._again(was_up=False)

    def _again(self, was_up: bool) -> None:
        if self.stopped:
            return
        reason = "connection lost" if was_up else (self.error or "connection lost")
        self.attempts = 1 if was_up else self.attempts + 1
        self._retry = self.clock.callLater(self.delay(self.attempts), self.start)
        self.broker._link_down(self, reason)

    def ping(self, now: float) -> None:
        """PING the subscriber; drop the connection when the last PING of
        ``timeout`` seconds ago has not been answered (a Redis that hangs)."""
        if self.protocol is None:
            return
        if self._ping_sent is not None:
            if now - self._ping_sent > self.timeout:
                self.error = f"no answer to PING within {self.timeout:g} s"
                self.protocol.transport.abortConnection()
            return
        self._ping_sent = now
        self.protocol.transport.write(_command(b"PING"))

    def ponged(self) -> None:
        self._ping_sent = None

    def stop(self) -> Deferred:
        """Stop trying; close the connection; fires once it is closed."""
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        proto = self.protocol or self._pending
        if isinstance(proto, Deferred):
            proto.cancel()
            return succeed(None)
        if proto is None or not proto.connected:
            return succeed(None)
        d = proto.whenDisconnected()
        proto.transport.loseConnection()
        return d.addCallback(lambda _: None)

