"""The broker for many nodes: every engine publishes and subscribes through Redis.

Each engine (the one process of ``--workers 0``, or each pool worker) has its
own ``RedisBroker`` with two connections made with txredisapi's protocols: one
for commands (the publish script, PUBLISH of cluster commands, the heartbeat)
and one ``SubscriberProtocol`` for SUBSCRIBE.

Channels.  An engine channel ``C`` (``user:U``, ``group:G``, ``tag:T``,
``all``, ``worker:NODE.WORKER``) is the Redis channel ``PREFIX + C``; besides
them each broker subscribes to ``PREFIX_cmd`` (cluster commands) and to its
own ``PREFIX_reply:ID``.  A broker subscribes to ``C`` when its engine's first
local session wants it and unsubscribes when the last one leaves, so Redis
sends each process only what its sessions need.  Keys: ``PREFIX_members`` (a
sorted set: member id -> expiry, from the Redis server's clock) and
``PREFIX_node:NODE`` (which process holds a node name).

Messages.  The messages one engine publishes in a reactor turn leave as one
call of ``PUBLISH_SCRIPT``: per channel, one payload holding a header (this
broker's id and the call's number) and the publish records
(``pool.wire.pack_publish``) of that turn's messages on that channel.  A
script runs atomically, so a subscriber receives the copies of one call back
to back: a message published on several channels it subscribes to is
delivered from the first copy, and the others are dropped by id (only ids of
multi-channel messages of the current call are remembered).  The publisher
delivers to its own sessions itself (so local delivery goes on while Redis is
away) and ignores its own copies.

Commands.  ``command`` runs the command here and publishes it on ``_cmd``
with a request id; every other live member runs it and publishes its result
on the asker's reply channel.  Live members are those in ``_members`` whose
heartbeat is not older than three intervals; the asker waits for every one
of them, or ``timeout`` seconds and logs who did not answer.

Faults.  Each connection reconnects with backoff (0.1 s doubling to 5 s);
Redis going away is logged once and its return once.  While Redis is away
the broker is *degraded* (``health``): local delivery goes on, ``subscribe``
fires at once (the channel is subscribed at reconnect), commands answer for
this engine alone, and what this engine publishes for other nodes is kept in
a queue bounded by ``max_queued_messages`` and ``max_queued_bytes`` (the
oldest go first) and at most ``QUEUE_MAX_AGE`` seconds old.  At reconnect the
subscriber subscribes every channel again (txredisapi does not), the process
registers again in ``_members`` only once that stands, and the queue is sent
once every peer known before the outage has registered again (or after
``hold_time``: the peers' longest backoff and some), since Redis drops what
is published while nobody listens.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import sys
from collections import deque
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Callable

import txredisapi
from twisted.internet.defer import (Deferred, DeferredList, fail, maybeDeferred,
                                    succeed)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..commands import COMMANDS
from ..ids import new_incarnation
from ..pool.wire import pack_publish, unpack_messages, unpack_publishes
from ..protocol import ProtocolError, encode, parse_address
from .interface import Command, IBroker, Message
from .redis_url import RedisURL, parse_redis_url

_log = Logger()

RETRY_FIRST = 0.1      # seconds before the first reconnection attempt
RETRY_MAX = 5.0        # ... doubling up to this
RETRY_JITTER = 0.2     # +-20 %, so that the nodes do not all come back at once
BATCH_MESSAGES = 1000  # messages in one call of the publish script at most
BATCH_BYTES = 1024 * 1024  # ... and bytes (one message may be bigger alone)
QUEUE_MAX_AGE = 60.0   # seconds a message kept while Redis is away stays worth sending
MISSED_BEATS = 3       # heartbeat intervals after which a member is taken for gone
HOLD_POLL = 0.1        # seconds between looks at who is back after an outage

MAGIC = b"PS1"
_HEAD = struct.Struct("!3sH")   # magic, length of the publisher's id
_SEQ = struct.Struct("!Q")      # the number of the publisher's script call
MEMBER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")

# Publishes each payload on its channel, atomically: ARGV = channel, payload, ...
# (One place to become the history's script: number, RPUSH/LTRIM/PEXPIRE, PUBLISH.)
PUBLISH_SCRIPT = """
for i = 1, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""

# KEYS: members, node claim; ARGV: member id, ttl (ms), node token, "1" to register.
# Claims the node name unless another process holds it, registers the member,
# forgets expired ones; returns {claimed, holder, live members}.
HEARTBEAT_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local holder = redis.call('GET', KEYS[2])
local claimed = 1
if holder and holder ~= ARGV[3] then
  claimed = 0
else
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
  holder = ARGV[3]
end
if claimed == 1 and ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return {claimed, holder, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')}
"""

# KEYS: members; ARGV: "" or a time T (ms), ttl (ms).  With "": {now, the live
# members}.  With T: {T, the members that have registered since T}.
MEMBERS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == '' then
  return {now, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')}
end
local since = tonumber(ARGV[1])
return {since, redis.call('ZRANGEBYSCORE', KEYS[1], since + tonumber(ARGV[2]), '+inf')}
"""


def _command(*args: bytes) -> bytes:
    """One Redis command in RESP (written straight to the subscriber)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _reason(failure: Failure) -> str:
    return failure.getErrorMessage() or failure.type.__name__


# No session is reached through two channels of one of these kinds (a session
# has one user and one owner), so their order in a script call never matters.
_EXCLUSIVE = ("user:", "worker:")


def _kind(channel: str) -> str | None:
    return next((kind for kind in _EXCLUSIVE if channel.startswith(kind)), None)


def _calls(entries) -> list[dict[str, list[bytes]]]:
    """Split publish records ``(channels, record)`` into calls of the publish
    script, ``{channel: records}`` each, that keep the publish order for every
    session.

    A subscriber receives a call's payloads channel by channel, in the order
    each channel first appears, and delivers each message from the first copy
    it gets.  So a record may join a call only if each of its channels is new
    to the call or is the channel that appeared last, or if its one channel
    is followed only by channels of its own exclusive kind (``user:`` after
    ``user:``); else a new call starts.  Broadcasts, unicasts to users and to sessions make one call
    per batch; a mix of groups and other channels may make more.  A call holds
    at most BATCH_MESSAGES records and BATCH_BYTES bytes (or one record).
    """
    calls: list[dict[str, list[bytes]]] = []
    call: dict[str, list[bytes]] = {}
    position: dict[str, int] = {}  # where each channel of the call first appeared
    last_kind = None
    run = 0                      # where the trailing run of one exclusive kind starts
    count = size = 0
    for channels, record in entries:
        # The last channel, or (one channel alone) any channel of the trailing run.
        since = run if len(channels) == 1 else len(position) - 1
        fits = call and count < BATCH_MESSAGES and size < BATCH_BYTES and all(
            position.get(channel, since) >= since for channel in channels)
        if call and not fits:
            calls.append(call)
            call, position, last_kind, run, count, size = {}, {}, None, 0, 0, 0
        for channel in channels:
            if channel not in call:
                kind = _kind(channel)
                if kind is None or kind != last_kind:
                    run = len(position)
                last_kind = kind
                position[channel] = len(position)
                call[channel] = []
            call[channel].append(record)
        count += 1
        size += len(record)
    if call:
        calls.append(call)
    return calls


# -- connections -------------------------------------------------------------

class _Subscriber(txredisapi.SubscriberProtocol):
    """txredisapi's subscriber, with every push handed to the broker: messages,
    subscribe confirmations (by channel) and the answers to PING."""

    link: "_Link"

    def replyReceived(self, reply):
        if isinstance(reply, list) and reply:
            kind = reply[0]
            try:
                if kind == b"message" and len(reply) == 3:
                    self.link.broker._received(reply[1], reply[2])
                    return
                if kind == b"subscribe" and len(reply) == 3:
                    self.link.broker._confirmed(reply[1])
                    return
                if kind == b"unsubscribe" and len(reply) == 3:
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

    def __init__(self, broker: "RedisBroker", name: str, server: _Server, protocol_class,
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


# -- the broker ------------------------------------------------------------------

@dataclass
class _Request:
    """A cluster command waiting for the other members' results."""
    name: str
    expected: set[str]
    done: Deferred = field(default_factory=Deferred)
    results: list[Any] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    timer: Any = None


_RESUBSCRIBE = object()  # an expected confirmation of a resubscription


def node_token(master_pid: int | None = None) -> str:
    """What tells this node's processes from another node's with the same
    name: the host and the pid of the node's master (or one process)."""
    return f"{socket.gethostname()}:{master_pid or os.getpid()}"


@implementer(IBroker)
class RedisBroker:
    """IBroker through Redis (see the module's docstring).

    ``owner`` is the engine's ``NODE.WORKER``; ``reactor`` makes the
    connections, ``clock`` (default: the reactor) runs the timers.  The
    connections start with ``attach``.  ``token`` (default ``node_token()``
    at attach) tells this node's processes from another node's of the same
    name; a duplicate node name ends in ``on_fatal(reason)`` (default: log
    it and stop the reactor).
    """

    epoch = None  # no history through Redis yet

    def __init__(self, settings, owner: str, reactor, clock=None, token: str | None = None,
                 on_fatal: Callable[[str], None] | None = None):
        self.settings = settings
        self.url = parse_redis_url(settings.redis)
        self.owner = owner
        self.node = owner.rsplit(".", 1)[0]
        self.id = f"{owner}.{new_incarnation()}"   # this member, this run
        self._id_b = _utf8(self.id)
        self.reactor = reactor
        self.clock = clock or reactor
        self.token = token
        self.on_fatal = on_fatal or self._stop_reactor
        self.timeout = settings.redis_timeout
        self.interval = settings.redis_heartbeat
        self._ttl_ms = int(MISSED_BEATS * self.interval * 1000)  # a member's life
        # How long the queue waits after an outage for the peers to be back:
        # their longest backoff, and time to subscribe again and register.
        self.hold_time = RETRY_MAX * (1 + RETRY_JITTER) + self.timeout + 2 * self.interval
        prefix = settings.redis_prefix
        self._prefix = _utf8(prefix)
        self._cmd_key = _utf8(prefix + "_cmd")
        self._reply_key = _utf8(f"{prefix}_reply:{self.id}")
        self._members_key = _utf8(prefix + "_members")
        self._node_key = _utf8(f"{prefix}_node:{self.node}")

        self.receiver = None
        self.subscriptions: set[str] = set()
        self.closed = False
        self.members: list[str] = []   # the live members at the last heartbeat
        self.counters = {"sent": 0, "queued": 0, "dropped": 0, "lost": 0, "received": 0,
                         "duplicates": 0, "bad": 0}

        kind = _SentinelMaster if self.url.sentinel else _Server
        self._server = kind(reactor, self.url, self.timeout)
        self._cmd = _Link(self, "commands", self._server, txredisapi.RedisProtocol,
                          self.url.db, self.clock, self.timeout)
        self._sub = _Link(self, "subscriber", self._server, _Subscriber, None,
                          self.clock, self.timeout)
        self._started = False
        self._sub_ready = False      # resubscribed everything since it connected
        self._expect: dict[bytes, deque] = {}   # SUBSCRIBE confirmations awaited
        self._resubscribing = 0
        self._down = False           # Redis is away (logged)
        self._down_since = 0.0
        self._ever_up = False
        self._reason = f"not connected yet to {self.url.describe()}"

        self._pending: list[tuple[tuple[str, ...], bytes]] = []  # this turn's publishes
        self._pending_bytes = 0
        self._flush_call = None
        self._local: list[Message] = []  # this turn's publishes for local sessions
        self._seq = 0
        self._queue: deque[tuple[float, tuple[str, ...], bytes]] = deque()
        self._queue_bytes = 0
        self._dropped_now = 0        # dropped during the current outage
        self._holding = False        # reconnected, waiting for the peers to be back
        self._hold_peers: set[str] = set()   # the peers to wait for at reconnection
        self._hold_waiting: set[str] = set()  # those the current hold waits for
        self._hold_until = 0.0
        self._hold_call = None

        self._burst: tuple[bytes, int] | None = None  # the script call being received
        self._seen: set[str] = set()  # its multi-channel message ids delivered

        self._rids = count(1)
        self._requests: dict[int, _Request] = {}
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._beating = False
        self._claim_lost_since: float | None = None
        self._warned_keep = False

    # -- life cycle -------------------------------------------------------

    def attach(self, receiver):
        self.receiver = receiver
        if self._started:
            return
        self._started = True
        if self.token is None:
            self.token = node_token()
        self._cmd.start()
        self._sub.start()
        self._heartbeat.start(self.interval, now=False).addErrback(
            lambda f: _log.failure("the redis heartbeat stopped", f))

    def health(self) -> str | None:
        """None when Redis carries messages both ways, else why not."""
        if self._cmd.protocol is not None and self._sub_ready:
            return None
        return f"redis unavailable: {self._reason}"

    def _stop_reactor(self, reason: str) -> None:
        _log.critical("{reason}; stopping", reason=reason)
        if self.reactor.running:
            self.reactor.stop()

    def close(self):
        if self.closed:
            return succeed(None)
        self._flush()  # the last messages go first
        self.closed = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._hold_call is not None and self._hold_call.active():
            self._hold_call.cancel()
        for rid in list(self._requests):
            self._finish(rid)
        d = succeed(None)
        if self._cmd.protocol is not None:  # leave the members (after the last publish)
            d = maybeDeferred(self._cmd.protocol.execute_command, "ZREM",
                              self._members_key, self._id_b)
            d.addTimeout(self.timeout, self.clock).addErrback(lambda _: None)

        def stop(_):
            stops = [self._sub.stop(), self._cmd.stop()]
            return DeferredList(stops, consumeErrors=True).addCallback(
                lambda _: self._server.close()).addBoth(lambda _: None)
        return d.addCallback(stop)

    # -- connections up and down --------------------------------------------

    def _link_up(self, link: _Link) -> None:
        if self.closed:
            return
        if link is self._sub:
            self._resubscribe(link.protocol)
            return
        self._beat_now()
        peers = self._hold_waiting = self._hold_peers - {self.id}
        self._hold_peers = set()
        if peers:
            self._holding = True
            self._hold_until = self.clock.seconds() + self.hold_time
            self._check_hold(peers, None)
        else:
            self._release()
        self._maybe_up()

    def _link_down(self, link: _Link, reason: str) -> None:
        self._reason = f"{reason} ({link.name} connection to {self.url.describe()})"
        if link is self._sub:
            self._sub_ready = False
            self._resubscribing = 0
            expected, self._expect = self._expect, {}
            for waiting in expected.values():  # degraded: they stand at reconnect
                for d in waiting:
                    if d is not _RESUBSCRIBE:
                        d.callback(None)
        else:  # wait for those it knew, and those a hold cut short waited for
            self._hold_peers |= set(self.members)
            if self._holding:
                self._hold_peers |= self._hold_waiting
            self._holding = False
        if self.closed or self._down:
            return
        self._down = True
        self._down_since = self.clock.seconds()
        _log.warn("redis unavailable: {reason}; local delivery goes on, messages for "
                  "other nodes are kept (up to {count} or {bytes} bytes), reconnecting "
                  "with backoff", reason=self._reason, count=self.settings.redis_max_queued,
                  bytes=self.settings.redis_max_queued_bytes)

    def _maybe_up(self) -> None:
        if self.health() is not None:
            return
        self._reason = "up"
        if self._down:
            self._down = False
            _log.info("redis is back after {seconds:.1f} s: resubscribed {count} channels",
                      seconds=self.clock.seconds() - self._down_since,
                      count=len(self.subscriptions))
        elif not self._ever_up:
            _log.info("connected to redis at {url} as {member}", url=self.url.describe(),
                      member=self.id)
        self._ever_up = True

    # -- subscriptions ------------------------------------------------------

    def _key(self, channel: str) -> bytes:
        return self._prefix + _utf8(channel)

    def subscribe(self, channel):
        """A Deferred firing once Redis confirms; None (at once) while the
        subscriber is away: the channel is subscribed when it is back."""
        self.subscriptions.add(channel)
        proto = self._sub.protocol
        if proto is None:
            return None
        key = self._key(channel)
        d = Deferred()
        self._expect.setdefault(key, deque()).append(d)
        proto.transport.write(_command(b"SUBSCRIBE", key))
        return d

    def unsubscribe(self, channel):
        self.subscriptions.discard(channel)
        proto = self._sub.protocol
        if proto is not None:
            proto.transport.write(_command(b"UNSUBSCRIBE", self._key(channel)))

    def _resubscribe(self, proto) -> None:
        """Subscribe everything again on a new subscriber connection."""
        keys = [self._cmd_key, self._reply_key] + [self._key(c) for c in self.subscriptions]
        for key in keys:
            self._expect.setdefault(key, deque()).append(_RESUBSCRIBE)
        self._resubscribing = len(keys)
        proto.transport.write(b"".join(_command(b"SUBSCRIBE", key) for key in keys))

    def _confirmed(self, key: bytes) -> None:
        waiting = self._expect.get(key)
        if not waiting:
            return
        item = waiting.popleft()
        if not waiting:
            del self._expect[key]
        if item is not _RESUBSCRIBE:
            item.callback(None)
            return
        self._resubscribing -= 1
        if self._resubscribing == 0 and self._sub.protocol is not None:
            self._sub_ready = True
            self._beat_now()  # register: this member hears everything again
            self._maybe_up()

    # -- publishing ---------------------------------------------------------

    def publish(self, channels, message):
        to = message.to_text or encode(message.to.to_json())
        names = tuple(channels)
        record = pack_publish(names, message.id, to, message.frame)
        self._pending.append((names, record))
        self._pending_bytes += len(record)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)
        if not self.subscriptions.isdisjoint(channels):
            if not self._local:
                self.clock.callLater(0, self._deliver_local)
            self._local.append(message)
        if len(self._pending) >= BATCH_MESSAGES or self._pending_bytes >= BATCH_BYTES:
            self._flush()
        return succeed(None)

    def _deliver_local(self) -> None:
        """Deliver this turn's publishes to local sessions (after the flush
        that hands them to Redis)."""
        local, self._local = self._local, []
        alone = len(local) == 1
        for message in local:
            try:
                self.receiver.deliver(message, alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=message.id)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        if self._queue or not self._may_send():
            self._keep(pending)
        else:
            self._send(pending)

    def _may_send(self) -> bool:
        return self._cmd.protocol is not None and not self._holding and not self.closed

    def _send(self, entries) -> None:
        for call in _calls(entries):
            self._publish(call, sum(len(records) for records in call.values()))
        self.counters["sent"] += len(entries)

    def _publish(self, by_channel: dict[str, list[bytes]], number: int) -> None:
        """One call of the publish script: per channel, a payload of its records."""
        self._seq += 1
        head = _HEAD.pack(MAGIC, len(self._id_b)) + self._id_b + _SEQ.pack(self._seq)
        args = []
        for channel, records in by_channel.items():
            args += (self._key(channel), b"".join([head, *records]))
        d = self._eval(PUBLISH_SCRIPT, [], args)
        d.addErrback(self._not_sent, number)

    def _not_sent(self, failure: Failure, number: int) -> None:
        self.counters["lost"] += number
        if failure.check(txredisapi.ConnectionError) or self.closed:
            return  # the connection went: logged once as such
        _log.failure("publishing {count} messages through redis failed", failure,
                     count=number)

    def _keep(self, entries) -> None:
        """Queue messages for other nodes while Redis is away: the newest
        ``max_queued_messages`` and ``max_queued_bytes`` at most."""
        now = self.clock.seconds()
        limit, limit_bytes = self.settings.redis_max_queued, self.settings.redis_max_queued_bytes
        for channels, record in entries:
            self._queue.append((now, channels, record))
            self._queue_bytes += len(record)
            self.counters["queued"] += 1
        while self._queue and (len(self._queue) > limit or self._queue_bytes > limit_bytes):
            _, _, record = self._queue.popleft()
            self._queue_bytes -= len(record)
            self._dropped_now += 1
            self.counters["dropped"] += 1

    def _release(self) -> None:
        """Send what was kept while Redis was away, oldest first."""
        if not self._may_send():
            return
        queue, self._queue, self._queue_bytes = self._queue, deque(), 0
        now = self.clock.seconds()
        fresh = [(c, r) for t, c, r in queue if now - t <= QUEUE_MAX_AGE]
        self._dropped_now += len(queue) - len(fresh)
        self.counters["dropped"] += len(queue) - len(fresh)
        if fresh:
            self._send(fresh)
        if fresh or self._dropped_now:
            _log.info("sent {sent} messages kept for other nodes while redis was away; "
                      "dropped {dropped} (over the queue's limits or older than {age:g} s)",
                      sent=len(fresh), dropped=self._dropped_now, age=QUEUE_MAX_AGE)
        self._dropped_now = 0
        self._flush()

    def _check_hold(self, peers: set[str], since: int | None) -> None:
        """Send the queue once the peers known before the outage are back:
        registered again since this reconnection (so subscribed again; a
        registration from before may have outlived the outage in Redis), or
        after ``hold_time``."""
        self._hold_call = None
        if not self._holding or self.closed:
            return
        d = self._eval(MEMBERS_SCRIPT, [self._members_key], [
            "" if since is None else since, self._ttl_ms])

        def seen(result):
            if not self._holding or self.closed:  # the connection went meanwhile
                return
            since, members = result
            missing = peers - {m.decode("utf-8", "replace") for m in members}
            if missing and self.clock.seconds() < self._hold_until:
                self._hold_call = self.clock.callLater(HOLD_POLL, self._check_hold, peers,
                                                       since)
                return
            if missing:
                _log.info("not back after the outage: {members}",
                          members=", ".join(sorted(missing)))
            self._holding = False
            self._release()

        def failed(failure):
            if self._cmd.protocol is not None and self._holding:
                self._hold_call = self.clock.callLater(HOLD_POLL, self._check_hold, peers,
                                                       since)
        d.addCallbacks(seen, failed)

    # -- receiving ----------------------------------------------------------

    def _received(self, channel: bytes, payload: bytes) -> None:
        if channel == self._cmd_key:
            self._on_request(payload)
        elif channel == self._reply_key:
            self._on_reply(payload)
        else:
            self._on_messages(payload)

    def _on_messages(self, payload: bytes) -> None:
        try:
            magic, size = _HEAD.unpack_from(payload)
            if magic != MAGIC:
                raise ValueError("not a pushsvc payload")
            start = _HEAD.size
            origin = payload[start:start + size]
            (seq,) = _SEQ.unpack_from(payload, start + size)
            if origin == self._id_b:  # our own: delivered locally already
                return
            body = payload[start + size + _SEQ.size:]
            records = []
            for channels, record in unpack_publishes(body):
                msg_id, to, frame = next(unpack_messages(bytes(record)))
                records.append((len(channels) > 1, msg_id, to, frame))
        except (ValueError, struct.error, StopIteration) as e:
            self._bad("a message payload", e)
            return
        if (origin, seq) != self._burst:
            self._burst = (origin, seq)
            self._seen = set()
        deliver = []
        for several, msg_id, to, frame in records:
            if several:
                if msg_id in self._seen:
                    self.counters["duplicates"] += 1
                    continue
                self._seen.add(msg_id)
            deliver.append((msg_id, to, frame))
        alone = len(deliver) == 1
        for msg_id, to, frame in deliver:
            self.counters["received"] += 1
            try:
                message = Message(msg_id, parse_address(json.loads(to), sys.maxsize), frame)
                self.receiver.deliver(message, alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=msg_id)

    def _bad(self, what: str, error: Exception) -> None:
        self.counters["bad"] += 1
        if self.counters["bad"] in (1, 10, 100) or self.counters["bad"] % 1000 == 0:
            _log.warn("ignored {what} from redis that pushsvc cannot read ({count} so far): "
                      "{error}", what=what, count=self.counters["bad"], error=error)

    # -- commands -------------------------------------------------------------

    def command(self, command):
        """Run ``command`` here and on every other live member; their results."""
        self._flush()  # a command never overtakes a message published before it
        local = maybeDeferred(self.receiver.perform, command)
        if self.health() is not None:
            return local.addCallback(lambda result: [result])
        remote = self._ask(command)
        d = DeferredList([local, remote], fireOnOneErrback=True, consumeErrors=True)

        def both(results):
            return [results[0][1]] + results[1][1]

        def first_error(failure):
            return failure.value.subFailure
        return d.addCallbacks(both, first_error)

    def _ask(self, command) -> Deferred:
        d = self._eval(MEMBERS_SCRIPT, [self._members_key], ["", self._ttl_ms])

        def members(result):
            self.members = [m.decode("utf-8", "replace") for m in result[1]]
            expected = set(self.members) - {self.id}
            if not expected:
                return []
            if self._cmd.protocol is None:
                raise txredisapi.ConnectionError("connection lost")
            rid = next(self._rids)
            request = self._requests[rid] = _Request(command.name, expected)
            payload = json.dumps({"rid": rid, "from": self.id, "name": command.name,
                                  "args": command.args}, separators=(",", ":"))
            self._cmd.protocol.publish(self._cmd_key, payload.encode("utf-8")).addErrback(
                lambda f: self._finish(rid))
            request.timer = self.clock.callLater(self.timeout, self._finish, rid)
            return request.done

        def alone(failure):
            _log.warn("command {name} answered by this process alone: {error}",
                      name=command.name, error=_reason(failure))
            return []
        return d.addCallback(members).addErrback(alone)

    def _on_request(self, payload: bytes) -> None:
        try:
            request = json.loads(payload)
            rid, origin = request["rid"], request["from"]
            name, args = request["name"], request["args"]
            if (not isinstance(rid, int) or not isinstance(origin, str)
                    or not MEMBER_RE.match(origin) or name not in COMMANDS
                    or not isinstance(args, dict)):
                raise ValueError(f"bad command request {payload[:200]!r}")
        except (ValueError, KeyError, TypeError) as e:
            self._bad("a command", e)
            return
        if origin == self.id:
            return
        d = maybeDeferred(self.receiver.perform, Command(name, args))

        def failed(failure):
            if not failure.check(ProtocolError):
                _log.failure("command {name} from {origin} failed", failure, name=name,
                             origin=origin)
            return {"error": _reason(failure)}
        d.addCallbacks(lambda result: {"result": result}, failed)
        d.addCallback(self._answer, rid, origin)

    def _answer(self, answer: dict, rid: int, origin: str) -> None:
        proto = self._cmd.protocol
        if proto is None:
            return
        answer.update(rid=rid, member=self.id)
        proto.publish(_utf8(f"{self.settings.redis_prefix}_reply:{origin}"),
                      json.dumps(answer, separators=(",", ":")).encode("utf-8")
                      ).addErrback(lambda _: None)

    def _on_reply(self, payload: bytes) -> None:
        try:
            answer = json.loads(payload)
            rid, member = answer["rid"], answer["member"]
        except (ValueError, KeyError, TypeError) as e:
            self._bad("a command result", e)
            return
        request = self._requests.get(rid)
        if request is None or member in request.answered:
            return  # too late, or twice
        request.answered.add(member)
        if "result" in answer:
            request.results.append(answer["result"])
        else:
            _log.warn("command {name} failed on {member}: {error}", name=request.name,
                      member=member, error=answer.get("error"))
        if request.expected <= request.answered:
            self._finish(rid)

    def _finish(self, rid: int) -> None:
        request = self._requests.pop(rid, None)
        if request is None:
            return
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        missing = request.expected - request.answered
        if missing and not self.closed:
            _log.warn("command {name}: no answer from {members} within {timeout:g} s",
                      name=request.name, members=", ".join(sorted(missing)),
                      timeout=self.timeout)
        request.done.callback(request.results)

    # -- heartbeat ------------------------------------------------------------

    def _beat_now(self) -> None:
        self.clock.callLater(0, self._beat)

    def _beat(self) -> None:
        """Claim the node name, register (once subscribed), learn the members;
        PING the subscriber."""
        self._sub.ping(self.clock.seconds())
        if self._beating or self._cmd.protocol is None or self.closed:
            return
        self._beating = True
        d = self._eval(HEARTBEAT_SCRIPT, [self._members_key, self._node_key],
                       [self._id_b, self._ttl_ms, _utf8(self.token),
                        b"1" if self._sub_ready else b"0"])
        d.addCallbacks(self._beaten, lambda f: None)
        d.addBoth(self._beat_done)

    def _beat_done(self, _) -> None:
        self._beating = False

    def _beaten(self, result) -> None:
        claimed, holder, members = result
        self.members = [m.decode("utf-8", "replace") for m in members]
        if claimed:
            self._claim_lost_since = None
            return
        holder = holder.decode("utf-8", "replace")
        now = self.clock.seconds()
        grace = (MISSED_BEATS + 1) * self.interval
        if self._claim_lost_since is None:
            self._claim_lost_since = now
            _log.warn("node name {node!r} is held in redis by another process ({holder}): "
                      "a node that stopped less than {ttl:g} s ago, or another node with "
                      "the same name; waiting up to {grace:g} s for it to go",
                      node=self.node, holder=holder, ttl=MISSED_BEATS * self.interval,
                      grace=grace)
        elif now - self._claim_lost_since >= grace:
            self._claim_lost_since = None
            self.on_fatal(f"another pushsvc node ({holder}) runs with the node name "
                          f"{self.node!r} on {self.url.describe()}: give each node its "
                          "own --node")

    def _eval(self, script: str, keys: list, args: list) -> Deferred:
        proto = self._cmd.protocol
        if proto is None:
            return fail(txredisapi.ConnectionError("not connected to redis"))
        return maybeDeferred(proto.eval, script, keys, args)

    # -- history and mailbox (none through Redis yet) -------------------------

    def replay(self, channels, since, epoch):
        return succeed(([], sorted(set(channels))))

    def keep(self, users, message):
        if not self._warned_keep:
            self._warned_keep = True
            _log.warn("pushes with \"store\": true are not kept for offline users "
                      "with redis (not yet); they are delivered live only")

    def mail(self, user):
        return succeed([])
