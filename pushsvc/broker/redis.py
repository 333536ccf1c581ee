"""The broker for many nodes: every engine publishes and subscribes through Redis.

Each engine (the one process of ``--workers 0``, or each pool worker) has its
own ``RedisBroker`` with two connections (``redis_link._Link``): one for
commands (the publish script, PUBLISH of cluster commands, the heartbeat,
replays and mailboxes) and one ``SubscriberProtocol`` for SUBSCRIBE.  The Lua
scripts and the bytes they exchange are in ``redis_scripts``.

``RedisBroker`` is a facade: it implements ``IBroker`` by composing one part
per concern, each in its own module (its docstring is the map), and tells
them what happens to the connections.  While Redis is away the broker is
*degraded* (``health``, ``redis_context``): delivery within the node goes on
(``redis_inbox``), ``subscribe`` fires at once or once the hub has it
(``redis_subscriptions``), commands answer for this node alone
(``redis_members``), and what this engine publishes for other nodes waits
in a queue (``redis_publish``).  A pool worker's broker also has the AMP
pipe to its master (``use_hub``), whose hub carries, within the node, what
Redis cannot while it is away.
"""

from __future__ import annotations

import os
import socket
from typing import Callable

from twisted.internet.defer import DeferredList, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ..reloadable import IReloadable
from .interface import IBroker, Message
from .redis_context import Context
from .redis_counts import Counts
from .redis_history import HistoryReader
from .redis_inbox import Inbox
from .redis_link import CommandProtocol, _Link, _SentinelMaster, _Server, _Subscriber
from .redis_members import Members
from .redis_presence import Presence
from .redis_publish import Publisher
from .redis_subscriptions import Subscriptions
from .redis_url import parse_redis_url

__all__ = ["RedisBroker", "node_token"]

_log = Logger()


def node_token(master_pid: int | None = None) -> str:
    """What tells this node's processes from another node's with the same
    name: the host and the pid of the node's master (or one process)."""
    return f"{socket.gethostname()}:{master_pid or os.getpid()}"


@implementer(IBroker, IReloadable)
class RedisBroker:
    """IBroker through Redis: this engine's parts, composed.

    - ``_context`` (``redis_context.Context``): who this engine is in Redis
      (member id, keys), its two links (``_cmd``, ``_sub``), its health, the
      timed script calls, the history's epoch, the counters, the hub.
    - ``_subscriptions`` (``redis_subscriptions.Subscriptions``):
      ``subscribe``/``unsubscribe`` in Redis and in the hub, the
      confirmations, resubscribing everything at reconnect.
    - ``_publisher`` (``redis_publish.Publisher``): ``publish``, the publish
      script calls (``redis_calls``) and their numbering, the queue kept
      while Redis is away, its release once the peers are back, the relay
      to the hub.
    - ``_inbox`` (``redis_inbox.Inbox``): what reaches the engine's
      sessions: payloads from Redis (one copy each), its own messages back
      numbered, the hub's relays (``deliver_relayed``), the rest at once.
    - ``_members`` (``redis_members.Members``): the heartbeat, the live
      members, the node name's claim, ``command`` across the cluster.
    - ``_reads`` (``redis_history.HistoryReader``): ``replay`` and ``mail``.
    - ``_occupancy`` (``redis_occupancy.Occupancy``, the subscriptions'):
      Pusher's channel_occupied/vacated decided in Redis (``watch_occupancy``).
    - ``_presence`` (``redis_presence.Presence``): ``member``, presence
      members counted in Redis, a dead engine's swept at the heartbeat.
    - ``_counts`` (``redis_counts.Counts``): ``share_counts``, each engine's
      report in a Redis hash, expiring with an engine that stops reporting.

    The facade starts and stops them, hands each connection's events
    (``redis_link.LinkOwner``) to the parts concerned, and keeps the order
    between parts: a command or a close sends the pending publishes first.

    ``owner`` is the engine's ``NODE.WORKER``; ``reactor`` makes the
    connections, ``clock`` (default: the reactor) runs the timers.  The
    connections start with ``attach``.  ``token`` (default ``node_token()``
    at attach) tells this node's processes from another node's of the same
    name; a duplicate node name ends in ``on_fatal(reason)`` (default: log
    it and stop the reactor).  ``url`` (default ``settings.redis``) is the
    Redis, for one shard of several (``redis_sharded``).  ``place`` (one
    logical shard of a Redis Cluster, ``redis_cluster.Place``) gives the
    connections and the key prefix instead.
    """

    def __init__(self, settings, owner: str, reactor, clock=None, token: str | None = None,
                 on_fatal: Callable[[str], None] | None = None, url: str | None = None,
                 place=None):
        self.reactor = reactor
        clock = clock or reactor
        timeout = settings.redis_timeout
        if place is None:
            url = parse_redis_url(url or settings.redis)
            kind = _SentinelMaster if url.sentinel else _Server
            self._server = kind(reactor, url, timeout)
            self._cmd = _Link(self, "commands", self._server, CommandProtocol,
                              url.db, clock, timeout)
            self._sub = _Link(self, "subscriber", self._server, _Subscriber, None, clock,
                              timeout)
        else:
            self._server, self._cmd, self._sub = place.bind(self)
            url = self._server.url
        ctx = self._context = Context(settings, owner, clock, url, self._cmd, self._sub, token,
                                      prefix=place and place.prefix)
        self._inbox = Inbox(ctx)
        self._subscriptions = Subscriptions(ctx, on_ready=self._resubscribed)
        self._occupancy = self._subscriptions.occupancy
        self._members = Members(ctx, on_beat=self._beat,
                                on_fatal=on_fatal or self._stop_reactor)
        self._publisher = Publisher(ctx, self._inbox, self._members)
        self._reads = HistoryReader(ctx, self._publisher.flush, self._subscriptions.standing)
        self._presence = Presence(ctx)
        self._counts = Counts(ctx)
        self.subscriptions = ctx.channels  # one set, kept by _subscriptions
        self._started = False

    # -- what the engine and the tests read -----------------------------------

    @property
    def owner(self) -> str:
        return self._context.owner

    @property
    def id(self) -> str:
        """This member, this run: ``OWNER.INCARNATION``."""
        return self._context.id

    @property
    def token(self) -> str | None:
        return self._context.token

    @property
    def receiver(self):
        return self._context.receiver

    @receiver.setter
    def receiver(self, receiver) -> None:
        self._context.receiver = receiver

    @property
    def closed(self) -> bool:
        return self._context.closed

    @property
    def counters(self) -> dict[str, int]:
        return self._context.counters

    @property
    def members(self) -> list[str]:
        """The live members at the last heartbeat."""
        return self._members.live

    @property
    def epoch(self) -> str | None:
        """The history's epoch in Redis (as last seen); None without history."""
        return self._context.epoch

    @property
    def on_member(self):
        return self._presence.on_member

    @on_member.setter
    def on_member(self, callback) -> None:
        self._presence.on_member = callback

    # -- life cycle -------------------------------------------------------

    def attach(self, receiver):
        self._context.receiver = receiver
        if self._started:
            return
        self._started = True
        if self._context.token is None:
            self._context.token = node_token()
        self._cmd.start()
        self._sub.start()
        self._members.start()
        self._counts.start()

    def use_hub(self, hub) -> None:
        """Within this node, use ``hub`` (a pool worker's connected
        ``WorkerProtocol``) for what Redis cannot carry while it is away:
        the hub's subscription table follows this engine's subscriptions
        from now on."""
        self._context.hub = hub
        self._subscriptions.follow_hub()

    def health(self) -> str | None:
        """None when Redis carries messages both ways (and, with history,
        its epoch is known), else why not."""
        return self._context.health()

    def configure(self, settings) -> None:
        """Use ``settings``' [history] limits from now on (a reload); the
        [redis] settings change only with a restart."""
        self._context.settings = settings

    def watch_occupancy(self, wanted: Callable[[str], bool],
                        announce: Callable[[str, bool], None],
                        active: Callable[[], bool] = lambda: True) -> None:
        """Call ``announce(channel, occupied)`` when a channel that
        ``wanted(channel)`` names gets its first subscriber in Redis, or
        loses its last, and this engine is the one to say so, while
        ``active()`` (``redis_occupancy``)."""
        self._occupancy.watch(wanted, announce, active)

    def timed(self, observe: Callable[[float], None]) -> None:
        """Call ``observe(seconds)`` with the duration of each script call
        (the publish script, the heartbeat, replays, mailboxes, members)."""
        self._context.observe = observe

    def _stop_reactor(self, reason: str) -> None:
        _log.critical("{reason}; stopping", reason=reason)
        if self.reactor.running:
            self.reactor.stop()

    def close(self):
        ctx = self._context
        if ctx.closed:
            return succeed(None)
        self._publisher.flush()  # the last messages go first
        ctx.closed = True
        self._publisher.stop()
        self._presence.stop()
        self._counts.stop()
        self._members.stop()
        d = self._members.leave()  # after the last publish

        def stop(_):
            stops = [self._sub.stop(), self._cmd.stop()]
            return DeferredList(stops, consumeErrors=True).addCallback(
                lambda _: self._server.close()).addBoth(lambda _: None)
        return d.addCallback(stop)

    # -- IBroker: each to its part -------------------------------------------

    def subscribe(self, channel):
        return self._subscriptions.subscribe(channel)

    def unsubscribe(self, channel):
        self._subscriptions.unsubscribe(channel)

    def publish(self, channels, message, store=False):
        return self._publisher.publish(channels, message, store)

    def command(self, command):
        """Run ``command`` here and on every other live member; their results
        (``Members.command``)."""
        self._publisher.flush()  # a command never overtakes a message published before it
        return self._members.command(command)

    def member(self, group, user, session, joined, info=None):
        return self._presence.member(group, user, session, joined, info)

    def share_counts(self, report, learned, interval):
        self._counts.share(report, learned, interval)

    def replay(self, channels, since, epoch):
        return self._reads.replay(channels, since, epoch)

    def mail(self, user):
        return self._reads.mail(user)

    def deliver_relayed(self, message: Message, alone: bool = False) -> None:
        """A message relayed by the hub while Redis is away (``Inbox``)."""
        self._inbox.deliver_relayed(message, alone)

    # -- the connections' events (redis_link.LinkOwner) -----------------------

    def _link_up(self, link: _Link) -> None:
        if self._context.closed:
            return
        if link is self._sub:
            self._subscriptions.resubscribe(link.protocol)
            return
        self._members.beat_now()
        self._publisher.reconnected()
        self._context.maybe_up()

    def _link_down(self, link: _Link, reason: str) -> None:
        ctx = self._context
        ctx.reason = f"{reason} ({link.name} connection to {ctx.url.describe()})"
        if link is self._sub:
            self._inbox.own_lost()
            self._subscriptions.lost()  # degraded: they stand at reconnect
        else:  # wait for those it knew, and those a hold cut short waited for
            self._publisher.disconnected()
        ctx.went_down()

    def _beat(self) -> None:
        self._inbox.forget_relayed()
        self._occupancy.beat(self._members.live)
        self._presence.beat()

    def _resubscribed(self) -> None:
        self._members.beat_now()  # register: this member hears everything again
        self._context.maybe_up()

    def _received(self, channel: bytes, payload: bytes) -> None:
        if channel == self._context.cmd_key:
            self._members.on_request(payload)
        elif channel == self._context.reply_key:
            self._members.on_reply(payload)
        else:
            self._inbox.on_messages(payload)

    def _confirmed(self, key: bytes) -> None:
        self._subscriptions.confirmed(key)

    def _unsubscribed(self, key: bytes) -> None:
        self._subscriptions.unconfirmed(key)
