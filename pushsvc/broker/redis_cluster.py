"""The broker over a Redis Cluster (issue 15, point 2): ``redis+cluster://``.

Design.  A cluster is ``[redis] cluster_shards`` logical shards (K, 16 by
default), each one slot of the cluster (``redis_cluster_slots``: its keys
and channels carry its hash tag), and each a whole ``RedisBroker``, composed
by ``ShardedRedisBroker`` as independent Redis shards are: a channel's
shard is ``redis_shards.shard_of(channel, K)``, and everything a shard does
(history and its epoch and positions, mailboxes, members, the queue while
it is away, resume) works unchanged, each Lua call within one slot.  The
numbering of kept messages is per logical shard, so publishes spread over
every master instead of all hitting the one holding a counter.  What is
the cluster's own is here and in ``redis_cluster_links``: which master
holds each shard's slot, one command and one subscriber connection per
master (shared by the shards it holds), sharded pub/sub (SSUBSCRIBE and
SPUBLISH: a message goes to the master of its slot only, not to every node
as PUBLISH does in a cluster), MOVED and ASK followed.

The map.  ``Cluster`` keeps a control connection to one of the nodes (the
URL's, then any master it learnt of, in turn) and reads the slot map with
``CLUSTER SHARDS`` (Redis 7; ``CLUSTER SLOTS`` when the server does not
know it): at start, every ``REFRESH_EVERY`` seconds, and every
``REFRESH_POLL`` seconds while a shard is not up or something hinted at a
change (a master's connection lost, a MOVED, a subscription the server
dropped).  A shard whose slot changed master goes down and comes up on the
new one, where it subscribes everything again: a failover (a replica
promoted) or a migration is an outage of the shards concerned, survived as
one (their queue kept, then sent once the peers are back).  A master that
refuses for now (``CLUSTERDOWN``: a cluster that needs every slot held, while
a failed master's slots wait for a replica; ``TRYAGAIN``) takes the shard
down the same way, until a slot map with every slot held; the publish calls
it refused wait in the publisher's queue, first.  A URL pointing at a Redis
without cluster mode is logged as such and named by ``/healthz``.

A slot that migrates.  Every script call declares a key that never exists
(``Place.fence``), so while its slot migrates Redis refuses it (TRYAGAIN,
or ASK) instead of running it on keys half moved; a script call is never
redirected (``redis_cluster_links._Commands``).  So the shard is down from
its first refused call until the map shows the slot's new master, and its
publishes wait in the queue, sent there once the peers have registered
again (having subscribed there): none is lost, none runs twice.

Limits.  Replication is asynchronous: what a master acknowledged just
before it failed may be missing on the promoted replica (history and
mailboxes included; a resume then reports gaps).
"""

from __future__ import annotations

import txredisapi
from twisted.internet.defer import DeferredList, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .redis import RedisBroker
from .redis_cluster_links import Place, _Node
from .redis_cluster_slots import SLOTS, key_slot, owners, shard_prefixes, slot_map
from .redis_link import CommandProtocol, _Link, _reason
from .redis_sharded import ShardedRedisBroker
from .redis_url import RedisURL, parse_redis_url

__all__ = ["Cluster", "ClusterRedisBroker"]

_log = Logger()

REFRESH_EVERY = 10.0   # seconds between looks at the slot map
REFRESH_POLL = 0.5     # ... while a shard is down or a change was hinted at
NOT_A_CLUSTER = "cluster support disabled"


class _Seeds:
    """Where the control link connects: the URL's nodes, then the masters
    learnt of, one after another at each attempt."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.url = cluster.url
        self._next = 0

    def connect(self, factory):
        known = list(self.url.hosts)
        known += [a for a in sorted(self.cluster.nodes) if a not in known]
        host, port = known[self._next % len(known)]
        self._next += 1
        self.where = f"{host}:{port}"
        return HostnameEndpoint(self.cluster.reactor, host, port,
                                timeout=self.cluster.timeout).connect(factory)


class Cluster:
    """The logical shards (``places``) of the cluster at ``url``, where their
    slots are, and the masters' connections (``nodes``)."""

    def __init__(self, settings, reactor, clock, url: RedisURL):
        self.reactor, self.clock, self.url = reactor, clock, url
        self.timeout = settings.redis_timeout
        prefixes = shard_prefixes(settings.redis_prefix, settings.redis_cluster_shards)
        self.places = [Place(self, i, prefix, key_slot(prefix.encode()))
                       for i, prefix in enumerate(prefixes)]
        self.by_prefix = {place.prefix_b: place for place in self.places}
        self.nodes: dict[tuple[str, int], _Node] = {}
        self.error: str | None = None       # why the map cannot be read, logged once
        self._seeds = _Seeds(self)
        self._control = _Link(self, "control", self._seeds, CommandProtocol, None,
                              clock, self.timeout)
        self._tick = LoopingCall(self._look)
        self._tick.clock = clock
        self._started = False
        self._open = set(self.places)
        self._reading = False
        self._wanted = True
        self._last = None
        self._shards_known = True           # CLUSTER SHARDS answered (else CLUSTER SLOTS)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._control.start()
        self._tick.start(REFRESH_POLL, now=False)

    def release(self, place: Place):
        """``place``'s broker has closed; the last one closes the connections."""
        self._open.discard(place)
        if self._open or not self._started:
            return succeed(None)
        if self._tick.running:
            self._tick.stop()
        stops = [self._control.stop()] + [node.stop() for node in self.nodes.values()]
        return DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)

    def refresh_soon(self) -> None:
        self._wanted = True

    # -- the control link (redis_link.LinkOwner) -------------------------------

    def _link_up(self, link) -> None:
        self._read()

    def _link_down(self, link, reason: str) -> None:
        pass  # it tries the next node

    # -- the map ---------------------------------------------------------------

    def _look(self) -> None:
        due = self._last is None or self.clock.seconds() - self._last >= REFRESH_EVERY
        if self._wanted or due or any(p.cmd.protocol is None or p.sub.protocol is None
                                      for p in self.places):
            self._read()

    def _read(self) -> None:
        proto = self._control.protocol
        if proto is None or self._reading or not self._open:
            self._wanted = True
            return
        self._reading, self._wanted = True, False
        shards = self._shards_known
        d = proto.execute_command("CLUSTER", "SHARDS" if shards else "SLOTS")
        d.addCallback(slot_map, shards)
        d.addCallbacks(self._mapped, self._unmapped, errbackArgs=(shards,))
        d.addBoth(self._read_done)

    def _read_done(self, _) -> None:
        self._reading = False

    def _unmapped(self, failure, shards: bool) -> None:
        self._wanted = True
        error = _reason(failure)
        if shards and failure.check(txredisapi.ResponseError) and "unknown" in error.lower():
            self._shards_known = False  # before Redis 7: CLUSTER SLOTS
            return
        if failure.check(txredisapi.ConnectionError, txredisapi.TimeoutError):
            return
        where = getattr(self._seeds, "where", "?")
        if NOT_A_CLUSTER in error:
            error = (f"the Redis at {where} is not a Redis Cluster ({error}): "
                     "use a redis:// URL for it, or enable cluster mode")
        else:
            error = f"cannot read the slot map from {where}: {error}"
        if error != self.error:
            self.error = error
            _log.error("{error}", error=error)
        for place in self.places:
            place.cmd.down(error)
            place.sub.down(error)

    def _mapped(self, ranges) -> None:
        if not self._open:  # closed meanwhile
            return
        self._last = self.clock.seconds()
        if self.error is not None:
            self.error = None
            _log.info("read the slot map of the redis cluster at {url}",
                      url=self.url.describe())
        complete = sum(last - first + 1 for first, last, _ in ranges) == SLOTS
        for place, address in zip(self.places, owners(ranges, [p.slot for p in self.places])):
            self._place(place, address, complete)
        held = {place.node for place in self.places}
        for address in [a for a in self.nodes if a not in held]:
            self.nodes.pop(address).stop()

    def _place(self, place: Place, address, complete: bool) -> None:
        """``place``'s slot is held by ``address`` (None: by no live master);
        ``complete``: every slot is held (a place its master refused is up
        again then)."""
        if address == place.node and not place.dirty:
            if address is None:
                place.connect(None, f"no live master holds slot {place.slot}")
            elif place.refused and complete:
                place.refused = False
                self.nodes[address].offer(place)
            return
        old, place.node, place.dirty, place.refused = place.node, address, False, False
        if address is None:
            place.connect(None, f"no live master holds slot {place.slot}")
            return
        node = self.nodes.get(address)
        if node is None:
            node = self.nodes[address] = _Node(self, address)
            node.start()
        reason = None
        if old is not None:
            what = "moved to" if old != address else "subscribes again at"
            reason = f"shard {place.index} (slot {place.slot}) {what} {address[0]}:{address[1]}"
            _log.info("{reason}", reason=reason)
        place.connect(node, reason)


class ClusterRedisBroker(ShardedRedisBroker):
    """IBroker through a Redis Cluster (``settings.redis``: one
    ``redis+cluster://`` URL): its logical shards, one ``RedisBroker`` each."""

    def _brokers(self, settings, owner, reactor, clock, token, on_fatal) -> list[RedisBroker]:
        self.cluster = Cluster(settings, reactor, clock or reactor,
                               parse_redis_url(settings.redis))
        return [RedisBroker(settings, owner, reactor, clock, token, on_fatal, place=place)
                for place in self.cluster.places]

    def health(self) -> str | None:
        """Why the slot map cannot be read, once; else which shards are down."""
        if self.cluster.error is not None:
            return f"redis unavailable: {self.cluster.error}"
        return super().health()
