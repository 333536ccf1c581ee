"""A ``RedisBroker``'s publishes: the publish script, and the queue kept while
Redis is away.

Messages.  The messages one engine publishes in a reactor turn leave as
calls of ``PUBLISH_SCRIPT`` (``redis_calls``), which numbers and keeps those
on channels that keep history (``history.kept_channels``): Redis is the one
keeper of the cluster, as the hub is of one machine.  It PUBLISHes per
channel one payload of the call's records on that channel, which every
subscriber reads alike (``redis_inbox``); the publisher's own sessions get
their messages from its own copies, numbered.  A Redis that refuses writes
for memory (``OOM``) gets the call again without history (logged once).

The queue.  What this engine publishes while Redis is away is kept in a
queue bounded by ``max_queued_messages`` and ``max_queued_bytes`` (the
oldest go first) and at most ``QUEUE_MAX_AGE`` seconds old, its local
sessions having it at once.  Redis drops what is published while nobody
listens, so at reconnect the queue is sent once every peer known before the
outage has registered again (so is subscribed again), or after
``hold_time`` (the peers' longest backoff and some).

Within a node while Redis is away.  Every message that goes to the queue
(Redis away, or a reconnection still holding the queue back) is also sent
at once to the node's hub (a pool worker's) as a ``RELAY`` publish record
(``wire.records``): the hub hands it on as it is, unnumbered, to every *other*
worker subscribed to one of its channels (the origin has delivered it to its
own sessions), and keeps nothing; they drop its Redis copy later
(``redis_inbox``).  So each session of the node gets the message once, at
once and without a position, and the other nodes get it once Redis is back,
with one.  While Redis is up nothing crosses the pipe: a publish never waits
for the hub.  Not covered: a worker whose own subscriber alone lost Redis
while the others publish through it (they do not know it misses their
messages), messages in flight to Redis when it went (as for the other
nodes), and a Redis copy that comes before the hub's (the master's pipes
would have to lag more than the queue waits).
"""

from __future__ import annotations

from collections import deque
from itertools import count

import txredisapi
from twisted.internet.defer import succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..frames import is_message
from ..history import kept_channels
from ..wire.hub_commands import PublishBatch
from ..wire.records import as_relay
from .redis_calls import BATCH_BYTES, BATCH_MESSAGES, _calls, _Out
from .redis_context import QUEUE_MAX_AGE, Context
from .redis_inbox import Inbox
from .redis_link import NotRun
from .redis_members import Members
from .redis_scripts import (PUBLISH_SCRIPT, body, mail_key, payload_body, payload_head,
                            utf8 as _utf8)

__all__ = ["HOLD_POLL", "Publisher"]

_log = Logger()

HOLD_POLL = 0.1        # seconds between looks at who is back after an outage


class Publisher:
    """Publishes through Redis, or queues (and relays) while it cannot.

    ``inbox`` delivers to this engine's own sessions; ``members`` says who
    to wait for after an outage."""

    def __init__(self, context: Context, inbox: Inbox, members: Members):
        self.context = context
        self.inbox = inbox
        self.members = members
        self._pending: list[_Out] = []  # this turn's publishes
        self._pending_bytes = 0
        self._flush_call = None
        self._numbers = count()      # publish order
        self._seq = 0                # script calls made
        self._queue: deque[tuple[float, _Out]] = deque()
        self._queue_bytes = 0
        self._dropped_now = 0        # dropped during the current outage
        self._holding = False        # reconnected, waiting for the peers to be back
        self._hold_peers: set[str] = set()   # the peers to wait for at reconnection
        self._hold_waiting: set[str] = set()  # those the current hold waits for
        self._hold_until = 0.0
        self._hold_call = None
        self._warned_oom = False

    def publish(self, channels, message, store=False):
        """Queue ``message`` for this turn's call of the publish script, which
        numbers and keeps it, and with ``store`` keeps it in the mailbox of
        each of its ``user:`` channels nobody subscribes to in Redis: at the
        moment it is published, so a user either is online for it or finds
        it in the mailbox."""
        ctx = self.context
        names = tuple(channels)
        out = _Out(next(self._numbers), names, message)
        if ctx.keeping() and is_message(message.frame):  # not a joined/left event
            out.kept = kept_channels(names)
            if store:
                out.users = tuple(c[5:] for c in names if c.startswith("user:"))
        if not ctx.channels.isdisjoint(names):
            out.local = message
        self._pending.append(out)
        self._pending_bytes += len(out.record)
        if self._flush_call is None:
            self._flush_call = ctx.clock.callLater(0, self.flush)
        if len(self._pending) >= BATCH_MESSAGES or self._pending_bytes >= BATCH_BYTES:
            self.flush()
        return succeed(None)

    def flush(self) -> None:
        """This turn's publishes, now: to Redis, or to the queue."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        if self._queue or not self.may_send():
            self.inbox.at_once([out.local for out in pending if out.local is not None])
            self._relay(pending)
            self._queue_up(pending)
        else:
            self._send(pending)

    def may_send(self) -> bool:
        ctx = self.context
        return ctx.cmd.protocol is not None and not self._holding and not ctx.closed

    def _relay(self, outs: list[_Out]) -> None:
        """Messages that wait for Redis, to the node's other workers now,
        through the hub: one PublishBatch of ``RELAY`` records (the hub
        skips this worker, which delivers them itself, and numbers nothing).
        When Redis takes them, the node's workers drop their copies."""
        ctx = self.context
        if ctx.hub is None or not outs:
            return
        ctx.counters["relayed"] += len(outs)
        ctx.to_hub(PublishBatch, batch=b"".join(as_relay(out.record) for out in outs))

    # -- script calls -------------------------------------------------------

    def _send(self, outs: list[_Out]) -> None:
        for call in _calls([(out.channels, out) for out in outs], _Out.size):
            self._publish(call, sorted({out.number: out for records in call.values()
                                        for out in records}.values(), key=_Out.order))
        self.context.counters["sent"] += len(outs)

    def _publish(self, by_channel: dict[str, list[_Out]], outs: list[_Out]) -> None:
        """One call of the publish script: ``outs`` numbered and kept (those on
        kept channels; ``outs`` in publish order), stored for offline users,
        and per channel, a payload of its records."""
        ctx = self.context
        self._seq += 1
        limits = ctx.limits()
        keeping = limits.ttl > 0
        kept = [out for out in outs if out.kept] if keeping else []
        stored = [out for out in outs if out.users] if keeping else []
        rel = {out.number: n for n, out in enumerate(kept, 1)}
        args = [int(limits.ttl * 1000), limits.max_per_channel, limits.max_memory,
                ctx.candidate(), ctx.prefix, payload_head(ctx.id_b, self._seq),
                len(kept), len(stored)]
        for out in kept:
            args += (body(out.message.id, out.message.frame), len(out.kept),
                     *map(_utf8, out.kept))
        for out in stored:
            args += (body(out.message.id, out.message.frame), len(out.users),
                     *map(_utf8, out.users))
        for channel, records in by_channel.items():
            args += (ctx.key(channel),
                     payload_body([rel.get(out.number, 0) for out in records],
                                  [out.record for out in records]))
        local = {out.message.id: out.local for out in outs if out.local is not None}
        if local:
            self.inbox.await_own(self._seq, local)
        keys = ctx.history_keys + [mail_key(ctx.prefix, user)
                                   for user in dict.fromkeys(u for out in stored
                                                             for u in out.users)]
        d = ctx.eval(PUBLISH_SCRIPT, keys, args)
        d.addCallbacks(self._published, self._not_sent,
                       errbackArgs=(self._seq, by_channel, outs))

    def _published(self, answer) -> None:
        self.context.set_epoch(answer[1] if len(answer) > 1 else None)
        if self._warned_oom:
            self._warned_oom = False
            _log.info("redis keeps history again")

    def _not_sent(self, failure: Failure, seq: int, by_channel, outs: list[_Out]) -> None:
        self.inbox.own_failed(seq)
        if failure.check(NotRun):
            self._requeue(outs)
            return
        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("OOM"):
            self._without_history(failure, by_channel, outs)
            return
        self.context.counters["lost"] += len(outs)
        if failure.check(txredisapi.ConnectionError) or self.context.closed:
            return  # the connection went: logged once as such
        _log.failure("publishing {count} messages through redis failed", failure,
                     count=len(outs))

    def _without_history(self, failure: Failure, by_channel, outs: list[_Out]) -> None:
        """Redis is out of memory (``maxmemory`` with ``noeviction``): the
        call again with nothing kept, so that messages still flow."""
        ctx = self.context
        if not self._warned_oom:
            self._warned_oom = True
            _log.warn("redis refuses to keep history ({error}): messages go on without "
                      "history or mailbox while it is out of memory", error=str(failure.value))
        if not self.may_send() or not by_channel:
            return
        self._seq += 1
        args = [0, 1, 0, ctx.candidate(), ctx.prefix, payload_head(ctx.id_b, self._seq), 0, 0]
        for channel, records in by_channel.items():
            args += (ctx.key(channel), payload_body([0] * len(records),
                                                    [out.record for out in records]))
        d = ctx.eval(PUBLISH_SCRIPT, ctx.history_keys, args)
        d.addErrback(lambda f: _log.failure("publishing {count} messages through redis "
                                            "failed", f, count=len(outs)))

    # -- the queue while Redis is away ----------------------------------------

    def _requeue(self, outs: list[_Out]) -> None:
        """A call Redis refused without running it (``NotRun``: a Redis
        Cluster's slot moving, its connection down now): its messages wait
        in the queue, in publish order with what came after them."""
        self._relay(outs)
        self._queue_up(outs)
        self._queue = deque(sorted(self._queue, key=lambda entry: entry[1].number))
        if self.may_send():  # already up again, and released
            self._release()

    def _queue_up(self, outs: list[_Out]) -> None:
        """Queue messages for other nodes while Redis is away: the newest
        ``max_queued_messages`` and ``max_queued_bytes`` at most."""
        ctx = self.context
        now = ctx.clock.seconds()
        limit, limit_bytes = ctx.settings.redis_max_queued, ctx.settings.redis_max_queued_bytes
        for out in outs:
            out.local = None  # delivered at once
            self._queue.append((now, out))
            self._queue_bytes += len(out.record)
            ctx.counters["queued"] += 1
        while self._queue and (len(self._queue) > limit or self._queue_bytes > limit_bytes):
            _, out = self._queue.popleft()
            self._queue_bytes -= len(out.record)
            self._dropped_now += 1
            ctx.counters["dropped"] += 1

    def disconnected(self) -> None:
        """The command connection went: at reconnection, wait for the peers
        known now, and for those a hold it cut short waited for."""
        self._hold_peers |= set(self.members.live)
        if self._holding:
            self._hold_peers |= self._hold_waiting
        self._holding = False

    def reconnected(self) -> None:
        """The command connection is back: send the queue once the peers are
        back too (``_check_hold``), or now when there are none to wait for."""
        ctx = self.context
        peers = self._hold_waiting = self._hold_peers - {ctx.id}
        self._hold_peers = set()
        if peers:
            self._holding = True
            self._hold_until = ctx.clock.seconds() + ctx.hold_time
            self._check_hold(peers, None)
        else:
            self._release()

    def stop(self) -> None:
        """No more waiting for the peers (at close)."""
        if self._hold_call is not None and self._hold_call.active():
            self._hold_call.cancel()

    def _release(self) -> None:
        """Send what was kept while Redis was away, oldest first."""
        if not self.may_send():
            return
        ctx = self.context
        queue, self._queue, self._queue_bytes = self._queue, deque(), 0
        now = ctx.clock.seconds()
        fresh = [out for t, out in queue if now - t <= QUEUE_MAX_AGE]
        self._dropped_now += len(queue) - len(fresh)
        ctx.counters["dropped"] += len(queue) - len(fresh)
        if fresh:
            self._send(fresh)
        if fresh or self._dropped_now:
            _log.info("sent {sent} messages kept for other nodes while redis was away; "
                      "dropped {dropped} (over the queue's limits or older than {age:g} s)",
                      sent=len(fresh), dropped=self._dropped_now, age=QUEUE_MAX_AGE)
        self._dropped_now = 0
        self.flush()

    def _check_hold(self, peers: set[str], since: int | None) -> None:
        """Send the queue once the peers known before the outage are back:
        registered again since this reconnection (so subscribed again; a
        registration from before may have outlived the outage in Redis, or
        moved with a Redis Cluster's slot: the first look, ``since`` None,
        only reads the time), or after ``hold_time``."""
        ctx = self.context
        self._hold_call = None
        if not self._holding or ctx.closed:
            return
        d = self.members.registered(since)
        first = since is None

        def seen(result):
            if not self._holding or ctx.closed:  # the connection went meanwhile
                return
            since, members = result
            back = set() if first else {m.decode("utf-8", "replace") for m in members}
            missing = peers - back
            if missing and ctx.clock.seconds() < self._hold_until:
                self._hold_call = ctx.clock.callLater(HOLD_POLL, self._check_hold, peers,
                                                      since)
                return
            if missing:
                _log.info("not back after the outage: {members}",
                          members=", ".join(sorted(missing)))
            self._holding = False
            self._release()

        def failed(failure):
            if ctx.cmd.protocol is not None and self._holding:
                self._hold_call = ctx.clock.callLater(HOLD_POLL, self._check_hold, peers,
                                                      since)
        d.addCallbacks(seen, failed)
