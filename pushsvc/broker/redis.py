"""The broker for many nodes: every engine publishes and subscribes through Redis.

Each engine (the one process of ``--workers 0``, or each pool worker) has its
own ``RedisBroker`` with two connections (``redis_link._Link``): one for
commands (the publish script, PUBLISH of cluster commands, the heartbeat,
replays and mailboxes) and one ``SubscriberProtocol`` for SUBSCRIBE.  The Lua
scripts and the bytes they exchange are in ``redis_scripts``.

Channels.  An engine channel ``C`` (``user:U``, ``group:G``, ``tag:T``,
``all``, ``worker:NODE.WORKER``) is the Redis channel ``PREFIX + C``; besides
them each broker subscribes to ``PREFIX_cmd`` (cluster commands) and to its
own ``PREFIX_reply:ID``.  A broker subscribes to ``C`` when its engine's first
local session wants it and unsubscribes when the last one leaves, so Redis
sends each process only what its sessions need.  Keys: ``PREFIX_members`` (a
sorted set: member id -> expiry, from the Redis server's clock),
``PREFIX_node:NODE`` (which process holds a node name), and the history's and
mailboxes' (``redis_scripts``).

Messages.  The messages one engine publishes in a reactor turn leave as one
call of ``PUBLISH_SCRIPT``, which numbers and keeps those on channels that
keep history (``history.kept_channels``): Redis is the one keeper of the
cluster, as the hub is of one machine.  It PUBLISHes per channel one payload
holding a header (this broker's id, the call's number and the call's first
position) and the records of that turn's messages on that channel, each with
its index among the call's kept messages: every receiver splices its
position into the frame (``protocol.with_position``), so every copy carries
the same bytes.  A script runs atomically, so a subscriber receives the
copies of one call back to back: a message published on several channels it
subscribes to is delivered from the first copy, and the others are dropped by
id (only ids of multi-channel messages of the current call are remembered).
The publisher delivers to its own sessions from its own copies, so that they
get messages in position order with everyone else's; while its subscriber is
away it delivers them at once, without positions.

Commands.  ``command`` runs the command here and publishes it on ``_cmd``
with a request id; every other live member runs it and publishes its result
on the asker's reply channel.  Live members are those in ``_members`` whose
heartbeat is not older than three intervals; the asker waits for every one
of them, or ``timeout`` seconds and logs who did not answer.

Faults.  Each connection reconnects with backoff (0.1 s doubling to 5 s);
Redis going away is logged once and its return once.  While Redis is away
the broker is *degraded* (``health``): delivery within the node goes on
(below), ``subscribe`` fires at once, or once the hub has it (the channel is
subscribed in Redis at reconnect), commands answer for this node alone
(below; this engine alone with ``--workers 0``), and what
this engine publishes for other nodes is kept in a queue bounded by
``max_queued_messages`` and ``max_queued_bytes`` (the oldest go first) and at
most ``QUEUE_MAX_AGE`` seconds old.  At reconnect the subscriber subscribes
every channel again (txredisapi does not), the process registers again in
``_members`` only once that stands, and the queue is sent once every peer
known before the outage has registered again (or after ``hold_time``: the
peers' longest backoff and some), since Redis drops what is published while
nobody listens.

Within a node while Redis is away.  A pool worker's broker also has the AMP
pipe to its master (``use_hub``), whose hub routes messages between the
workers of a node without Redis.  The hub's subscription table follows this
engine's subscriptions *always* (one ``Subscribe``/``Unsubscribe`` per
channel change, beside the Redis one; ``subscribe`` fires once both stand),
so that it is right whichever worker notices the outage first; while Redis
is up nothing else crosses the pipe: a publish never waits for the hub.
Every message that goes to the queue (Redis away, or a reconnection still
holding the queue back) is also sent at once to the hub as a ``RELAY``
publish record (``pool.wire``): the hub hands it on as it is, unnumbered, to
every *other* worker subscribed to one of its channels (the origin has
delivered it to its own sessions), and keeps nothing.  The worker that gets
it delivers it (``deliver_relayed``) and keeps its id, per origin engine, at
most as many as the origin's queue holds and for ``QUEUE_MAX_AGE`` plus
``hold_time`` seconds; when Redis is back and the origin sends its queue,
this node's workers drop the Redis copy of an id they kept
(``_was_relayed``), while the other nodes deliver it, numbered (the ids,
rather than a mark in the Redis payloads, keep their format: nodes of two
versions still read each other's).  So each
session of the node gets the message once, at once and without a position,
and the other nodes get it once Redis is back, with one.  Commands
(``command``) go meanwhile to the hub's ``RunCommand``: every worker of this
node answers, as in a pool without Redis.  Not covered: a worker whose own
subscriber alone lost Redis while the others publish through it (they do not
know it misses their messages), messages in flight to Redis when it went
(as for the other nodes), and a Redis copy that comes before the hub's (the
master's pipes would have to lag more than the queue waits).
"""

from __future__ import annotations

import json
import os
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
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..commands import COMMANDS
from ..history import in_order, kept_channels
from ..ids import base36, new_incarnation
from ..wire.hub_commands import PublishBatch, RunCommand, Subscribe, Unsubscribe
from ..wire.records import as_relay, pack_publish
from ..protocol import Address, ProtocolError, encode, is_message, parse_address, with_position
from ..routing import channels as route
from .interface import Command, IBroker, Message
from .redis_link import (RETRY_FIRST, RETRY_JITTER, RETRY_MAX, _command, _Link, _reason,
                         _SentinelMaster, _Server, _Subscriber)
from .redis_scripts import (HEARTBEAT_SCRIPT, MEMBERS_SCRIPT, PUBLISH_SCRIPT, REPLAY_SCRIPT,
                            TAKE_MAIL_SCRIPT, body, parse_body, parse_payload, parse_replay,
                            payload_body, payload_head, utf8 as _utf8)
from .redis_url import parse_redis_url

__all__ = ["RedisBroker", "node_token", "RETRY_FIRST", "RETRY_JITTER", "RETRY_MAX", "_Link",
           "_calls"]

_log = Logger()

BATCH_MESSAGES = 1000  # messages in one call of the publish script at most
BATCH_BYTES = 1024 * 1024  # ... and bytes (one message may be bigger alone)
QUEUE_MAX_AGE = 60.0   # seconds a message kept while Redis is away stays worth sending
MISSED_BEATS = 3       # heartbeat intervals after which a member is taken for gone
HOLD_POLL = 0.1        # seconds between looks at who is back after an outage
OWN_CALLS_KEPT = 10000  # script calls whose copies the publisher awaits, at most

MEMBER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")


# No session is reached through two channels of one of these kinds (a session
# has one user and one owner), so their order in a script call never matters.
_EXCLUSIVE = ("user:", "worker:")


def _kind(channel: str) -> str | None:
    return next((kind for kind in _EXCLUSIVE if channel.startswith(kind)), None)


def _calls(entries, measure: Callable[[Any], int] = len) -> list[dict[str, list]]:
    """Split publish records ``(channels, record)`` into calls of the publish
    script, ``{channel: records}`` each, that keep the publish order for every
    session (``measure(record)``: its bytes).

    A subscriber receives a call's payloads channel by channel, in the order
    each channel first appears, and delivers each message from the first copy
    it gets.  So a record may join a call only if each of its channels is new
    to the call or is the channel that appeared last, or if its one channel
    is followed only by channels of its own exclusive kind (``user:`` after
    ``user:``); else a new call starts.  Broadcasts, unicasts to users and to sessions make one call
    per batch; a mix of groups and other channels may make more.  A call holds
    at most BATCH_MESSAGES records and BATCH_BYTES bytes (or one record).
    """
    calls: list[dict[str, list]] = []
    call: dict[str, list] = {}
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
        size += measure(record)
    if call:
        calls.append(call)
    return calls


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


class _Out:
    """A published message on its way to Redis: its channels, those that keep
    history, its publish record, the users to keep it for (``store``), and
    the message itself when local sessions want it too."""

    __slots__ = ("number", "channels", "message", "record", "kept", "users", "local")

    def __init__(self, number: int, channels: tuple[str, ...], message: Message):
        self.number = number          # publish order
        self.channels = channels
        self.message = message
        to = message.to_text or encode(message.to.to_json())
        self.record = pack_publish(channels, message.id, to, message.frame)
        self.kept: tuple[str, ...] = ()
        self.users: tuple[str, ...] = ()
        self.local: Message | None = None

    def size(self) -> int:
        return len(self.record)

    def order(self) -> int:
        return self.number


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

    # Called with the seconds each call to Redis took (the publish script, the
    # heartbeat): the engine's ``pushsvc_redis_round_trip_seconds`` (metrics.py).
    on_round_trip: Callable[[float], None] | None = None

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
        # The history's keys (redis_scripts): its state, its log, its frames.
        self._history_keys = [_utf8(prefix + "_history"), _utf8(prefix + "_history_log"),
                              _utf8(prefix + "_history_frames")]
        self._epoch: str | None = None  # the history's, as Redis last said
        self._epoch_seed = new_incarnation()
        self._candidates = count(1)

        self.receiver = None
        self.subscriptions: set[str] = set()
        self.closed = False
        self.members: list[str] = []   # the live members at the last heartbeat
        self.counters = {"sent": 0, "queued": 0, "dropped": 0, "lost": 0, "received": 0,
                         "duplicates": 0, "bad": 0, "relayed": 0, "from_hub": 0}

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

        self._pending: list[_Out] = []  # this turn's publishes
        self._pending_bytes = 0
        self._flush_call = None
        self._numbers = count()      # publish order
        self._seq = 0
        # The script calls whose copies come back to this engine's own
        # sessions: (call number, {id: message}), oldest first.
        self._own: deque[tuple[int, dict[str, Message]]] = deque()
        self._burst_own = 0          # the last of them that began to come back
        self._direct: list[Message] = []  # for local sessions at once (no subscriber)
        self._direct_call = None
        self._queue: deque[tuple[float, _Out]] = deque()
        self._queue_bytes = 0
        self._dropped_now = 0        # dropped during the current outage
        self._holding = False        # reconnected, waiting for the peers to be back
        self._hold_peers: set[str] = set()   # the peers to wait for at reconnection
        self._hold_waiting: set[str] = set()  # those the current hold waits for
        self._hold_until = 0.0
        self._hold_call = None

        # A pool worker: its AMP pipe to the node's hub (``use_hub``), and the
        # ids of the messages the hub relayed here from the node's other
        # workers while Redis was away, per origin engine, oldest first, with
        # when they came: their Redis copies, when Redis is back, are dropped.
        self._hub = None
        self._relayed: dict[str, dict[str, float]] = {}
        self.relayed_kept = QUEUE_MAX_AGE + self.hold_time  # seconds an id is remembered

        self._burst: tuple[bytes, int] | None = None  # the script call being received
        self._seen: set[str] = set()  # its multi-channel message ids delivered

        self._rids = count(1)
        self._requests: dict[int, _Request] = {}
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._beating = False
        self._claim_lost_since: float | None = None
        self._warned_oom = False
        self._beat_error: str | None = None

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

    def use_hub(self, hub) -> None:
        """Within this node, use ``hub`` (a pool worker's connected
        ``WorkerProtocol``) for what Redis cannot carry while it is away:
        the hub's subscription table follows this engine's subscriptions
        from now on."""
        self._hub = hub
        if self.subscriptions:
            self._to_hub(Subscribe, channels=sorted(self.subscriptions))

    def _to_hub(self, command, **args) -> Deferred | None:
        """``command`` to the hub; a Deferred of its answer (None on failure:
        the pipe is gone, and so is the master, so this worker stops), or
        None for a command without one."""
        d = self._hub.callRemote(command, **args)
        if d is not None:
            d.addErrback(lambda _: None)
        return d

    def health(self) -> str | None:
        """None when Redis carries messages both ways (and, with history,
        its epoch is known), else why not."""
        if (self._cmd.protocol is not None and self._sub_ready
                and (self._epoch is not None or not self._keeping())):
            return None
        return f"redis unavailable: {self._reason}"

    # -- the history's settings -------------------------------------------

    def _limits(self):
        """The [history] settings: the engine's (they follow a reload)."""
        return getattr(self.receiver, "settings", None) or self.settings

    def _keeping(self) -> bool:
        return self._limits().ttl > 0

    @property
    def epoch(self) -> str | None:
        """The history's epoch in Redis (as last seen); None without history."""
        return self._epoch if self._keeping() else None

    def _set_epoch(self, raw) -> None:
        if not raw:
            return
        epoch = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if epoch == self._epoch:
            return
        if self._epoch is not None:
            _log.warn("the history in redis has a new epoch ({epoch}): redis lost what it "
                      "kept; clients that resume get gaps", epoch=epoch)
        first = self._epoch is None
        self._epoch = epoch
        if first:
            self._maybe_up()

    def _candidate(self) -> bytes:
        """A fresh epoch, in case the history in Redis has none."""
        return _utf8(f"{self._epoch_seed}{base36(next(self._candidates))}")

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
            self._own_lost()
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
        """A Deferred firing once Redis confirms, and the node's hub (a pool
        worker) routes the channel here too; while the subscriber is away,
        at once (None) or once the hub does: the channel is subscribed in
        Redis when it is back."""
        self.subscriptions.add(channel)
        hub = None if self._hub is None else self._to_hub(Subscribe, channels=[channel])
        proto = self._sub.protocol
        if proto is None:
            return hub
        key = self._key(channel)
        d = Deferred()
        self._expect.setdefault(key, deque()).append(d)
        proto.transport.write(_command(b"SUBSCRIBE", key))
        if hub is None:
            return d
        return DeferredList([d, hub]).addCallback(lambda _: None)

    def unsubscribe(self, channel):
        self.subscriptions.discard(channel)
        if self._hub is not None:
            self._to_hub(Unsubscribe, channels=[channel])
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

    def publish(self, channels, message, store=False):
        """Queue ``message`` for this turn's call of the publish script, which
        numbers and keeps it, and with ``store`` keeps it in the mailbox of
        each of its ``user:`` channels nobody subscribes to in Redis: at the
        moment it is published, so a user either is online for it or finds
        it in the mailbox."""
        names = tuple(channels)
        out = _Out(next(self._numbers), names, message)
        if self._keeping() and is_message(message.frame):  # not a joined/left event
            out.kept = kept_channels(names)
            if store:
                out.users = tuple(c[5:] for c in names if c.startswith("user:"))
        if not self.subscriptions.isdisjoint(names):
            out.local = message
        self._pending.append(out)
        self._pending_bytes += len(out.record)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)
        if len(self._pending) >= BATCH_MESSAGES or self._pending_bytes >= BATCH_BYTES:
            self._flush()
        return succeed(None)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        if self._queue or not self._may_send():
            self._at_once([out.local for out in pending if out.local is not None])
            self._relay(pending)
            self._queue_up(pending)
        else:
            self._send(pending)

    def _relay(self, outs: list[_Out]) -> None:
        """Messages that wait for Redis, to the node's other workers now,
        through the hub: one PublishBatch of ``RELAY`` records (the hub
        skips this worker, which delivers them itself, and numbers nothing).
        When Redis takes them, the node's workers drop their copies."""
        if self._hub is None or not outs:
            return
        self.counters["relayed"] += len(outs)
        self._to_hub(PublishBatch, batch=b"".join(as_relay(out.record) for out in outs))

    def _may_send(self) -> bool:
        return self._cmd.protocol is not None and not self._holding and not self.closed

    def _send(self, outs: list[_Out]) -> None:
        for call in _calls([(out.channels, out) for out in outs], _Out.size):
            self._publish(call, sorted({out.number: out for records in call.values()
                                        for out in records}.values(), key=_Out.order))
        self.counters["sent"] += len(outs)

    def _publish(self, by_channel: dict[str, list[_Out]], outs: list[_Out]) -> None:
        """One call of the publish script: ``outs`` numbered and kept (those on
        kept channels; ``outs`` in publish order), stored for offline users,
        and per channel, a payload of its records."""
        self._seq += 1
        limits = self._limits()
        keeping = limits.ttl > 0
        kept = [out for out in outs if out.kept] if keeping else []
        stored = [out for out in outs if out.users] if keeping else []
        rel = {out.number: n for n, out in enumerate(kept, 1)}
        args = [int(limits.ttl * 1000), limits.max_per_channel, limits.max_memory,
                self._candidate(), self._prefix, payload_head(self._id_b, self._seq),
                len(kept), len(stored)]
        for out in kept:
            args += (body(out.message.id, out.message.frame), len(out.kept),
                     *map(_utf8, out.kept))
        for out in stored:
            args += (body(out.message.id, out.message.frame), len(out.users),
                     *map(_utf8, out.users))
        for channel, records in by_channel.items():
            args += (self._key(channel),
                     payload_body([rel.get(out.number, 0) for out in records],
                                  [out.record for out in records]))
        local = {out.message.id: out.local for out in outs if out.local is not None}
        if local:
            if self._sub_ready:  # they come back from Redis, numbered
                self._own.append((self._seq, local))
                if len(self._own) > OWN_CALLS_KEPT:
                    self._own.popleft()
            else:
                self._at_once(list(local.values()))
        d = self._eval(PUBLISH_SCRIPT, self._history_keys, args)
        d.addCallbacks(self._published, self._not_sent,
                       errbackArgs=(self._seq, by_channel, outs))

    def _published(self, answer) -> None:
        self._set_epoch(answer[1] if len(answer) > 1 else None)
        if self._warned_oom:
            self._warned_oom = False
            _log.info("redis keeps history again")

    def _not_sent(self, failure: Failure, seq: int, by_channel, outs: list[_Out]) -> None:
        # Its own sessions have it at once (those awaiting its copy).
        for n, (call, local) in enumerate(self._own):
            if call == seq:
                del self._own[n]
                self._at_once(list(local.values()))
                break
        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("OOM"):
            self._without_history(failure, by_channel, outs)
            return
        self.counters["lost"] += len(outs)
        if failure.check(txredisapi.ConnectionError) or self.closed:
            return  # the connection went: logged once as such
        _log.failure("publishing {count} messages through redis failed", failure,
                     count=len(outs))

    def _without_history(self, failure: Failure, by_channel, outs: list[_Out]) -> None:
        """Redis is out of memory (``maxmemory`` with ``noeviction``): the
        call again with nothing kept, so that messages still flow."""
        if not self._warned_oom:
            self._warned_oom = True
            _log.warn("redis refuses to keep history ({error}): messages go on without "
                      "history or mailbox while it is out of memory", error=str(failure.value))
        if not self._may_send() or not by_channel:
            return
        self._seq += 1
        args = [0, 1, 0, self._candidate(), self._prefix,
                payload_head(self._id_b, self._seq), 0, 0]
        for channel, records in by_channel.items():
            args += (self._key(channel), payload_body([0] * len(records),
                                                      [out.record for out in records]))
        d = self._eval(PUBLISH_SCRIPT, self._history_keys, args)
        d.addErrback(lambda f: _log.failure("publishing {count} messages through redis "
                                            "failed", f, count=len(outs)))

    def _at_once(self, messages: list[Message]) -> None:
        """Deliver ``messages`` to local sessions (at the end of this turn),
        without waiting for Redis: its subscriber is away, or the call failed."""
        if not messages:
            return
        self._direct += messages
        if self._direct_call is None:
            self._direct_call = self.clock.callLater(0, self._deliver_direct)

    def _deliver_direct(self) -> None:
        self._direct_call = None
        messages, self._direct = self._direct, []
        self._deliver_all(messages)

    def _deliver_all(self, messages: list[Message]) -> None:
        alone = len(messages) == 1
        for message in messages:
            try:
                self.receiver.deliver(message, alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=message.id)

    def _queue_up(self, outs: list[_Out]) -> None:
        """Queue messages for other nodes while Redis is away: the newest
        ``max_queued_messages`` and ``max_queued_bytes`` at most."""
        now = self.clock.seconds()
        limit, limit_bytes = self.settings.redis_max_queued, self.settings.redis_max_queued_bytes
        for out in outs:
            out.local = None  # delivered at once
            self._queue.append((now, out))
            self._queue_bytes += len(out.record)
            self.counters["queued"] += 1
        while self._queue and (len(self._queue) > limit or self._queue_bytes > limit_bytes):
            _, out = self._queue.popleft()
            self._queue_bytes -= len(out.record)
            self._dropped_now += 1
            self.counters["dropped"] += 1

    def _release(self) -> None:
        """Send what was kept while Redis was away, oldest first."""
        if not self._may_send():
            return
        queue, self._queue, self._queue_bytes = self._queue, deque(), 0
        now = self.clock.seconds()
        fresh = [out for t, out in queue if now - t <= QUEUE_MAX_AGE]
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
            origin, seq, records = parse_payload(payload)
        except (ValueError, struct.error, StopIteration, UnicodeDecodeError) as e:
            self._bad("a message payload", e)
            return
        if origin == self._id_b:
            self._own_copies(seq, records)
            return
        if (origin, seq) != self._burst:
            self._burst = (origin, seq)
            self._seen = set()
        deliver = []
        relayed = self._relayed
        for several, position, msg_id, to, frame in records:
            if several:
                if msg_id in self._seen:
                    self.counters["duplicates"] += 1
                    continue
                self._seen.add(msg_id)
            if relayed and self._was_relayed(msg_id):  # the hub brought it during an outage
                self.counters["duplicates"] += 1
                continue
            deliver.append((position, msg_id, to, frame))
        alone = len(deliver) == 1
        for position, msg_id, to, frame in deliver:
            self.counters["received"] += 1
            try:
                if position is not None:
                    frame = with_position(frame, position)
                message = Message(msg_id, parse_address(json.loads(to), sys.maxsize), frame)
                self.receiver.deliver(message, alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=msg_id)

    def deliver_relayed(self, message: Message, alone: bool = False) -> None:
        """A message another worker of this node relayed through the hub
        while Redis was away (``_relay``): delivered now, and its id kept
        until its copy from Redis comes (``_was_relayed``), at most
        ``relayed_kept`` seconds and, per origin, as many as its queue holds
        (``max_queued_messages``)."""
        self.counters["from_hub"] += 1
        origin = message.id.rpartition(".")[0]
        ids = self._relayed.get(origin)
        if ids is None:
            ids = self._relayed[origin] = {}
        ids.pop(message.id, None)
        ids[message.id] = self.clock.seconds()
        if len(ids) > self.settings.redis_max_queued:
            del ids[next(iter(ids))]
        self.receiver.deliver(message, alone)

    def _was_relayed(self, msg_id: str) -> bool:
        """Whether ``msg_id`` came through the hub already (forgotten now)."""
        origin = msg_id.rpartition(".")[0]
        ids = self._relayed.get(origin)
        if not ids or ids.pop(msg_id, None) is None:
            return False
        if not ids:
            del self._relayed[origin]
        return True

    def _forget_relayed(self) -> None:
        """Let go of the relayed ids whose Redis copies can no longer come."""
        if not self._relayed:
            return
        until = self.clock.seconds() - self.relayed_kept
        for origin, ids in list(self._relayed.items()):
            while ids and next(iter(ids.values())) < until:
                del ids[next(iter(ids))]
            if not ids:
                del self._relayed[origin]

    def _own_copies(self, seq: int, records) -> None:
        """This engine's own messages back from Redis: delivered to its
        sessions (those it awaits, each once), with their positions."""
        self._burst_own = seq
        own = self._own
        while own and own[0][0] < seq:  # their calls are over
            own.popleft()
        if not own or own[0][0] != seq:
            return
        waiting = own[0][1]
        deliver = []
        for _, position, msg_id, _, _ in records:
            message = waiting.pop(msg_id, None)
            if message is None:
                continue
            if position is not None:
                message = Message(msg_id, message.to, with_position(message.frame, position),
                                  message.to_text)
            deliver.append(message)
        self._deliver_all(deliver)

    def _own_lost(self) -> None:
        """The subscriber went: what it had still to bring back of calls it
        had not begun to bring goes to the local sessions at once."""
        last = self._burst_own
        own, self._own = self._own, deque()
        self._at_once([message for seq, waiting in own if seq > last
                       for message in waiting.values()])

    def _bad(self, what: str, error: Exception) -> None:
        self.counters["bad"] += 1
        if self.counters["bad"] in (1, 10, 100) or self.counters["bad"] % 1000 == 0:
            _log.warn("ignored {what} from redis that pushsvc cannot read ({count} so far): "
                      "{error}", what=what, count=self.counters["bad"], error=error)

    # -- commands -------------------------------------------------------------

    def command(self, command):
        """Run ``command`` here and on every other live member; their results.

        While Redis is away: on every worker of this node through the hub (a
        pool worker), else here alone."""
        self._flush()  # a command never overtakes a message published before it
        if self.health() is not None:
            return self._node_command(command)
        local = maybeDeferred(self.receiver.perform, command)
        remote = self._ask(command)
        d = DeferredList([local, remote], fireOnOneErrback=True, consumeErrors=True)

        def both(results):
            return [results[0][1]] + results[1][1]

        def first_error(failure):
            return failure.value.subFailure
        return d.addCallbacks(both, first_error)

    def _node_command(self, command) -> Deferred:
        """``command`` on this node only: every ready worker's result through
        the hub (``RunCommand``, as the ``AmpBroker`` does), or this engine's."""
        if self._hub is None:
            return maybeDeferred(self.receiver.perform, command).addCallback(
                lambda result: [result])
        d = self._hub.callRemote(RunCommand, name=command.name, args=command.args)
        return d.addCallback(lambda answer: answer["results"])

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
        self._forget_relayed()
        if self._beating or self._cmd.protocol is None or self.closed:
            return
        self._beating = True
        d = self._eval(HEARTBEAT_SCRIPT, [self._members_key, self._node_key,
                                          *self._history_keys],
                       [self._id_b, self._ttl_ms, _utf8(self.token),
                        b"1" if self._sub_ready else b"0", self._candidate()])
        d.addCallbacks(self._beaten, self._beat_failed)
        d.addBoth(self._beat_done)

    def _beat_done(self, _) -> None:
        self._beating = False

    def _beat_failed(self, failure: Failure) -> None:
        if not failure.check(txredisapi.ResponseError):
            return  # a connection that went: logged as such
        error = str(failure.value)
        if error != self._beat_error:  # once, not every beat
            self._beat_error = error
            _log.error("the redis heartbeat failed: {error}", error=error)

    def _beaten(self, result) -> None:
        claimed, holder, members, epoch = result
        self._beat_error = None
        self.members = [m.decode("utf-8", "replace") for m in members]
        self._set_epoch(epoch)
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
        d = maybeDeferred(proto.eval, script, keys, args)
        if self.on_round_trip is not None:
            from ..metrics import timed
            timed(d, self.on_round_trip)
        return d

    # -- history and mailbox --------------------------------------------------

    def replay(self, channels, since, epoch):
        """The kept messages of ``channels`` after ``since`` and their gaps,
        read from Redis (``REPLAY_SCRIPT``); this engine's pending publishes
        are numbered first."""
        channels = sorted(set(channels))
        limits = self._limits()
        if limits.ttl <= 0 or not epoch:
            return succeed(([], channels))
        self._flush()
        d = self._eval(REPLAY_SCRIPT, self._history_keys, [
            int(limits.ttl * 1000), limits.max_memory, self._prefix, _utf8(epoch),
            str(since), *map(_utf8, channels)])

        def answered(answer):
            state, gaps, entries = parse_replay(answer)
            if not state:
                if len(answer) > 1:
                    self._set_epoch(answer[1])
                return [], channels
            self._set_epoch(answer[1])
            found, wanted = [], set(channels)
            for position, raw in entries:
                msg_id, frame = parse_body(raw)
                if not wanted.intersection(route(Address.from_json(json.loads(frame)["to"]))):
                    # A channel's list outlived the history it points into (keys
                    # evicted or deleted): never hand over another's message.
                    _log.warn("the history in Redis is inconsistent; resume reports gaps")
                    return [], channels
                found.append((position, msg_id, with_position(frame, position)))
            return in_order(found), channels if state == 2 else gaps
        return d.addCallback(answered)

    def mail(self, user):
        """What the mailbox of ``user`` holds (``TAKE_MAIL_SCRIPT``), once
        this engine's subscription to the user stands in Redis (from then
        on, a stored push finds the user online)."""
        limits = self._limits()
        if limits.ttl <= 0 or self._cmd.protocol is None:
            return succeed([])
        ready = Deferred()
        waiting = [d for d in self._expect.get(self._key(f"user:{user}"), ())
                   if d is not _RESUBSCRIBE]
        if waiting:
            waiting[-1].addBoth(lambda result: (ready.callback(None), result)[1])
        else:
            ready.callback(None)
        key = _utf8(f"{self.settings.redis_prefix}_mail:{user}")
        ready.addCallback(lambda _: self._eval(TAKE_MAIL_SCRIPT, [key],
                                               [int(limits.ttl * 1000)]))

        def taken(bodies):
            return [parse_body(raw) for raw in bodies]

        def away(failure):
            failure.trap(txredisapi.ConnectionError)
            return []
        return ready.addCallbacks(taken, away)
