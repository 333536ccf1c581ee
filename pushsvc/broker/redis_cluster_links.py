"""The connections of a Redis Cluster's logical shards: one pair per master,
shared by the shards it holds (``redis_cluster`` has the map).

``Place`` is one logical shard as its ``RedisBroker`` sees it (``place=``):
its key prefix (its hash tag), and two links, ``_ShardLink``, that look like
``redis_link._Link``s.  A shard link is up while the master holding the
shard's slot is connected: its ``protocol`` is then, for commands, a
``_Commands`` bound to that master (scripts sharded and run there only,
other commands following MOVED and ASK), and for the subscriber the
master's subscriber connection (SSUBSCRIBE).  When the slot moves or its master goes, the links go down and
come up on the new master: the broker subscribes everything again there, and
its queue waits for the peers to be back, as after any outage.

``_Node`` is one master: two ``redis_link._Link``s (commands, and a
``_ShardSubscriber``), telling the places it holds when they come and go, and
handing each shard channel's messages and confirmations to the place its
hash tag names.
"""

from __future__ import annotations

import txredisapi
from twisted.internet.defer import DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from .redis_link import CommandProtocol, NotRun, _Link, _Server, _Subscriber
from .redis_scripts import SHARDED
from .redis_url import RedisURL

__all__ = ["Place"]

_log = Logger()

REDIRECTS = 2          # MOVED or ASK followed for one call, at most
REFUSALS = ("CLUSTERDOWN", "TRYAGAIN")   # a master that cannot serve the slot now
REDIRECTIONS = ("MOVED", "ASK")           # the slot is elsewhere, or on its way there


class Place:
    """Logical shard ``index`` of ``cluster``: ``prefix`` (``{TAG}``) starts
    its keys and channels, all in ``slot``; ``node`` is the address of the
    master holding it, as last known (None: none)."""

    def __init__(self, cluster, index: int, prefix: str, slot: int):
        self.cluster, self.index, self.prefix, self.slot = cluster, index, prefix, slot
        self.prefix_b = prefix.encode()
        self.url = cluster.url
        self.broker = None
        self.node: tuple[str, int] | None = None
        self.dirty = False        # the server dropped a subscription: subscribe again
        self.refused = False      # its master refused a command for now (REFUSALS)
        # Declared by every script call, never written: while the slot
        # migrates Redis refuses the call (TRYAGAIN, ASK) rather than run it
        # on keys half moved.
        self.fence = self.prefix_b + b"_fence"
        self.cmd = _ShardLink(self, "commands")
        self.sub = _ShardLink(self, "subscriber")
        self.sub.SUBSCRIBE, self.sub.UNSUBSCRIBE = b"SSUBSCRIBE", b"SUNSUBSCRIBE"

    def bind(self, broker):
        """The broker's server, command link and subscriber link."""
        self.broker = broker
        return self, self.cmd, self.sub

    def close(self):
        """The broker is done with its links (``RedisBroker.close``)."""
        return self.cluster.release(self)

    def wants(self, key: bytes) -> bool:
        """Does the broker still subscribe to shard channel ``key``?"""
        rest = key[len(self.prefix_b):]
        if rest == b"_cmd" or rest.startswith(b"_reply:"):
            return True
        return rest.decode("utf-8", "surrogatepass") in self.broker.subscriptions

    def unavailable(self, error: str) -> None:
        """Its master cannot serve it now (the cluster is down, its slot
        migrates or has moved): its command link is down (what is published
        waits in the queue, a refused publish first) until a slot map with
        every slot held (``redis_cluster``), where it is then."""
        self.refused = True
        self.cmd.down(error)
        self.cluster.refresh_soon()

    def connect(self, node: "_Node | None", reason: str | None) -> None:
        """Down where it was (for ``reason``; None: it was nowhere); up on
        ``node`` as far as its links are."""
        if reason is not None:
            self.cmd.down(reason)
            self.sub.down(reason)
        if node is not None:
            node.offer(self)


class _ShardLink:
    """One of a place's two links, as a ``RedisBroker`` uses a ``_Link``."""

    SUBSCRIBE, UNSUBSCRIBE = _Link.SUBSCRIBE, _Link.UNSUBSCRIBE

    def __init__(self, place: Place, name: str):
        self.place, self.name = place, name
        self.url = place.url
        self.protocol = None
        self.error: str | None = None
        self.stopped = False

    def start(self) -> None:
        self.place.cluster.start()

    def stop(self):
        self.stopped = True
        self.protocol = None
        return succeed(None)

    def ping(self, now: float) -> None:
        node = self.place.cluster.nodes.get(self.place.node)
        if node is not None:
            node.sub.ping(now)

    def up(self, protocol) -> None:
        """Up on ``protocol`` (a ``_Commands`` or a subscriber): once per
        connection; a new one first takes the old one down."""
        if self.stopped or self.raw(self.protocol) is self.raw(protocol):
            return
        if self.protocol is not None:
            self.down("a new connection")
        self.protocol, self.error = protocol, None
        self.place.broker._link_up(self)

    @staticmethod
    def raw(protocol):
        return protocol.proto if isinstance(protocol, _Commands) else protocol

    def down(self, reason: str) -> None:
        """Tell the broker, when it was up or the reason is news."""
        if self.stopped or (self.protocol is None and reason == self.error):
            return
        self.protocol, self.error = None, reason
        self.place.broker._link_down(self, reason)


class _Commands:
    """A place's command connection: ``eval``, ``publish`` and
    ``execute_command`` as txredisapi's, on the master holding its slot; a
    master that refuses for now (CLUSTERDOWN, TRYAGAIN) takes the place's
    command link down (``Place.unavailable``) and the call fails as
    ``NotRun``.

    Scripts, in their sharded form, declare ``Place.fence`` too and run on
    that master only: a MOVED or ASK is a refusal.  Run where the slot goes
    while its subscribers are still where it was (or not yet subscribed
    there), a publish would reach nobody; refused, it waits in the
    publisher's queue until this place is up where the slot is now and the
    peers have registered there again, so subscribed.  Other commands
    follow a MOVED or ASK to a master this process is connected to (else
    they fail as a lost connection)."""

    def __init__(self, place: Place, proto):
        self.place, self.proto = place, proto

    def eval(self, script, keys, args):
        sharded, keys = SHARDED.get(script, script), [*keys, self.place.fence]
        return self._call(lambda p: p.eval(sharded, keys, args), left=0)

    def publish(self, channel, message):
        return self._call(lambda p: p.execute_command("SPUBLISH", channel, message))

    def execute_command(self, *args):
        return self._call(lambda p: p.execute_command(*args))

    def _call(self, send, proto=None, left: int = REDIRECTS):
        """``send(protocol)``, following ``left`` redirections at most (0:
        a redirection is a refusal)."""
        d = maybeDeferred(send, proto or self.proto)

        def redirected(failure):
            failure.trap(txredisapi.ResponseError)
            kind, _, where = str(failure.value).partition(" ")
            if kind in REFUSALS or (kind in REDIRECTIONS and not left and proto is None):
                self.place.unavailable(str(failure.value))
                raise NotRun(str(failure.value))
            if kind not in REDIRECTIONS or not left:
                return failure
            cluster = self.place.cluster
            cluster.refresh_soon()
            slot, _, address = where.partition(" ")
            host, _, port = address.rpartition(":")
            node = cluster.nodes.get((host.strip("[]"), int(port or 0)))
            if node is None or node.cmd.protocol is None:
                raise txredisapi.ConnectionError(
                    f"{kind} to {address} (slot {slot}): not connected there yet")
            if kind == "ASK":
                node.cmd.protocol.execute_command("ASKING").addErrback(lambda _: None)
            return self._call(send, node.cmd.protocol, left - 1)
        return d.addErrback(redirected)


class _ShardSubscriber(_Subscriber):
    """The subscriber of one master: a SUNSUBSCRIBE the server sends (its
    slot moved) or an error (a MOVED) makes the cluster look again."""

    def replyReceived(self, reply):
        node = self.link.broker
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"sunsubscribe":
            node.dropped(reply[1])
        elif isinstance(reply, txredisapi.ResponseError):
            node.refused(str(reply))
        else:
            super().replyReceived(reply)


class _Node:
    """One master of the cluster (``address``): its two links, shared by the
    places it holds."""

    def __init__(self, cluster, address: tuple[str, int]):
        self.cluster, self.address = cluster, address
        url = RedisURL((address,), 0, None, cluster.url.username, cluster.url.password)
        server = _Server(cluster.reactor, url, cluster.timeout)
        self.where = f"node {address[0]}:{address[1]}"
        self.cmd = _Link(self, "commands", server, CommandProtocol, None,
                         cluster.clock, cluster.timeout)
        self.sub = _Link(self, "subscriber", server, _ShardSubscriber, None,
                         cluster.clock, cluster.timeout)

    def start(self) -> None:
        self.cmd.start()
        self.sub.start()

    def stop(self):
        return DeferredList([self.cmd.stop(), self.sub.stop()], consumeErrors=True)

    def places(self) -> list[Place]:
        return [p for p in self.cluster.places if p.node == self.address]

    def offer(self, place: Place) -> None:
        """``place`` is held here: up as far as this node's links are."""
        if self.cmd.protocol is not None:
            place.cmd.up(_Commands(place, self.cmd.protocol))
        if self.sub.protocol is not None:
            place.sub.up(self.sub.protocol)

    def _place(self, key: bytes) -> Place | None:
        return self.cluster.by_prefix.get(key[:key.find(b"}") + 1])

    # -- what its links tell it (redis_link.LinkOwner) -----------------------

    def _link_up(self, link: _Link) -> None:
        for place in self.places():
            if link is self.cmd:
                place.cmd.up(_Commands(place, link.protocol))
            else:
                place.sub.up(link.protocol)

    def _link_down(self, link: _Link, reason: str) -> None:
        for place in self.places():
            (place.cmd if link is self.cmd else place.sub).down(f"{reason} at {self.where}")
        self.cluster.refresh_soon()  # was it a failover?

    def _received(self, channel: bytes, payload: bytes) -> None:
        place = self._place(channel)
        if place is not None and place.broker is not None:
            place.broker._received(channel, payload)

    def _confirmed(self, key: bytes) -> None:
        place = self._place(key)
        if place is not None and place.broker is not None:
            place.broker._confirmed(key)

    def dropped(self, key: bytes) -> None:
        """The server unsubscribed ``key`` (or confirms an unsubscription)."""
        place = self._place(key)
        if place is None or place.broker is None:
            return
        if place.wants(key):
            place.dirty = True
            self.cluster.refresh_soon()
        else:  # the confirmation of the broker's own SUNSUBSCRIBE
            place.broker._unsubscribed(key)

    def refused(self, error: str) -> None:
        """An error on the subscriber: a MOVED names the slot that moved."""
        kind, _, rest = error.partition(" ")
        if kind == "MOVED":
            slot = rest.partition(" ")[0]
            for place in self.places():
                if str(place.slot) == slot:
                    place.dirty = True
        else:
            _log.warn("redis cluster {where} refused a subscription: {error}",
                      where=self.where, error=error)
        self.cluster.refresh_soon()
