"""The broker over several Redis shards: one ``RedisBroker`` per shard, each
channel on the shard ``redis_shards.shard_of`` names (the design is in
``redis_shards``).

``ShardedRedisBroker`` implements ``IBroker`` by handing each call to the
shard of its channel (``subscribe``, ``unsubscribe``, ``mail`` of
``user:U``), splitting a publish by shard, and sending commands through
shard 0.  Each shard's broker has its own connections, backoff, health,
queue and history; it hands what it receives to ``_Once`` (through its
``_FromShard``), which tags positions with the shard and gives each session
one copy of a message that went to several shards.  ``replay`` reads every
shard and merges (``redis_shards.merge``).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import Callable

from twisted.internet.defer import DeferredList, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ..cursor import SEPARATOR, Replayed, cursor, join_epochs, with_shard
from ..ids import owner
from ..protocol import Address
from ..reloadable import IReloadable
from ..routing import channels as route, worker_channel
from ..sessions import ALL
from .interface import IBroker, IReceiver, Message
from .redis import RedisBroker
from .redis_context import QUEUE_MAX_AGE
from .redis_shards import merge, shard_of, split, urls_of

__all__ = ["ShardedRedisBroker", "UnreadableHistory"]

_log = Logger()

ONCE_SECONDS = 2 * QUEUE_MAX_AGE   # how long a message of several shards is remembered
ONCE_MAX = 100_000                 # and how many at most (the oldest are forgotten)


class UnreadableHistory(Exception):
    """No shard's history could be read for a replay."""


@implementer(IReceiver)
class _Once:
    """The engine, behind the shards.  A message of one shard goes on as it
    comes (its ``pos`` tagged with the shard, with several); a message
    published on several reaches each session once, from the first copy
    that comes of those of its channels' shards (``redis_shards``): copy i
    goes to the sessions its channels on shard i select, but those an
    earlier copy reached.  Which copies came is remembered per id
    ``ONCE_SECONDS``, for at most ``ONCE_MAX`` messages."""

    def __init__(self, shards: int, clock):
        self.receiver = None
        self.clock = clock
        self.duplicates = 0
        self.tagged = shards > 1
        self._shard = lru_cache(maxsize=65536)(lambda channel: shard_of(channel, shards))
        self._seen: OrderedDict[str, tuple[float, set[int]]] = OrderedDict()

    def several(self, message: Message) -> set[int]:
        """The shards ``message`` was published on."""
        return {self._shard(channel) for channel in route(message.to)}

    def on(self, address: Address, shards: set[int]) -> Address:
        """The part of ``address`` whose channels are on ``shards``."""
        if address.all:
            return address if self._shard(ALL) in shards else Address()
        keep = self._shard
        return Address(
            session=tuple(s for s in address.session
                          if owner(s) and keep(worker_channel(owner(s))) in shards),
            user=tuple(u for u in address.user if keep(f"user:{u}") in shards),
            group=tuple(g for g in address.group if keep(f"group:{g}") in shards),
            tag=tuple(t for t in address.tag if keep(f"tag:{t}") in shards))

    def deliver(self, shard: int, message: Message, alone: bool = False) -> None:
        frame = with_shard(message.frame, shard) if self.tagged else message.frame
        several = self.several(message)
        if len(several) < 2:
            if frame is not message.frame:
                message = Message(message.id, message.to, frame, message.to_text)
            self.receiver.deliver(message, alone)
            return
        now = self.clock.seconds()
        seen = self._seen
        while seen and (len(seen) >= ONCE_MAX or next(iter(seen.values()))[0] < now - ONCE_SECONDS):
            seen.popitem(last=False)
        _, came = seen.setdefault(message.id, (now, set()))
        if shard in came:
            return
        if came:
            self.duplicates += 1
        to = Message(message.id, self.on(message.to, {shard}), frame)
        if came:
            self.receiver.deliver(to, alone, self.on(message.to, came))
        else:
            self.receiver.deliver(to, alone)
        came.add(shard)
        if came >= several:
            del seen[message.id]

    def perform(self, command):
        return self.receiver.perform(command)


@implementer(IReceiver)
class _FromShard:
    """What shard ``shard``'s broker hands on, to ``_Once``."""

    def __init__(self, once: _Once, shard: int):
        self.once = once
        self.shard = shard

    def deliver(self, message: Message, alone: bool = False) -> None:
        self.once.deliver(self.shard, message, alone)

    def perform(self, command):
        return self.once.perform(command)


@implementer(IBroker, IReloadable)
class ShardedRedisBroker:
    """IBroker through N Redis shards (``settings.redis``: their URLs, in
    the same order on every node); the arguments are ``RedisBroker``'s."""

    def __init__(self, settings, owner: str, reactor, clock=None, token: str | None = None,
                 on_fatal: Callable[[str], None] | None = None):
        self.shards = self._brokers(settings, owner, reactor, clock, token, on_fatal)
        self._once = _Once(len(self.shards), clock or reactor)

    @staticmethod
    def _brokers(settings, owner, reactor, clock, token, on_fatal) -> list[RedisBroker]:
        """One ``RedisBroker`` per shard (a Redis Cluster's: ``redis_cluster``)."""
        return [RedisBroker(settings, owner, reactor, clock, token, on_fatal, url=url)
                for url in urls_of(settings.redis)]

    def _of(self, channel: str) -> RedisBroker:
        return self.shards[self._once._shard(channel)]

    # -- what the engine and the tests read -----------------------------------

    @property
    def owner(self) -> str:
        return self.shards[0].owner

    @property
    def closed(self) -> bool:
        return all(shard.closed for shard in self.shards)

    @property
    def subscriptions(self) -> set[str]:
        return set().union(*(shard.subscriptions for shard in self.shards))

    @property
    def counters(self) -> dict[str, int]:
        total = {"duplicates": self._once.duplicates}
        for shard in self.shards:
            for name, value in shard.counters.items():
                total[name] = total.get(name, 0) + value
        return total

    @property
    def members(self) -> list[str]:
        return self.shards[0].members

    @property
    def epoch(self) -> str | None:
        """The shards' epochs joined by ``~`` (``cursor``)."""
        return join_epochs(shard.epoch for shard in self.shards)

    @property
    def on_member(self):
        return self.shards[0].on_member

    @on_member.setter
    def on_member(self, callback) -> None:
        for shard in self.shards:
            shard.on_member = callback

    # -- life cycle -------------------------------------------------------

    def attach(self, receiver):
        self._once.receiver = receiver
        for n, shard in enumerate(self.shards):
            shard.attach(_FromShard(self._once, n))

    def use_hub(self, hub) -> None:
        for shard in self.shards:
            shard.use_hub(hub)

    def health(self) -> str | None:
        """None when every shard carries messages both ways, else which do
        not and why."""
        down = [f"shard {n} of {len(self.shards)}: {reason}"
                for n, reason in enumerate(shard.health() for shard in self.shards)
                if reason is not None]
        return "; ".join(down) or None

    def configure(self, settings) -> None:
        for shard in self.shards:
            shard.configure(settings)

    def watch_occupancy(self, wanted, announce, active=lambda: True) -> None:
        """Each shard decides for its channels (``RedisBroker.watch_occupancy``)."""
        for shard in self.shards:
            shard.watch_occupancy(wanted, announce, active)

    def timed(self, observe: Callable[[float], None]) -> None:
        for shard in self.shards:
            shard.timed(observe)

    def close(self):
        return DeferredList([shard.close() for shard in self.shards],
                            consumeErrors=True).addCallback(lambda _: None)

    # -- IBroker ----------------------------------------------------------

    def subscribe(self, channel):
        return self._of(channel).subscribe(channel)

    def unsubscribe(self, channel):
        self._of(channel).unsubscribe(channel)

    def publish(self, channels, message, store=False):
        """On each shard, with its channels."""
        for n, names in split(channels, len(self.shards)).items():
            self.shards[n].publish(names, message, store)
        return succeed(None)

    def command(self, command):
        for shard in self.shards[1:]:  # a command never overtakes a message before it
            shard._publisher.flush()
        return self.shards[0].command(command)

    def member(self, group, user, session, joined, info=None):
        """On the shard of the group's channel."""
        return self._of(f"group:{group}").member(group, user, session, joined, info)

    def share_counts(self, report, learned, interval):
        """Through shard 0, as commands."""
        self.shards[0].share_counts(report, learned, interval)

    def replay(self, channels, since, epoch):
        """Each shard's replay of its channels from the client's position
        there, merged (``redis_shards.merge``): a ``Replayed``.  Fails only
        when no shard can be read."""
        current = SEPARATOR.join(shard.epoch or "" for shard in self.shards)
        positions = cursor(since, epoch or "", current)
        theirs = (epoch or "").split(SEPARATOR)
        asked = split(sorted(set(channels)), len(self.shards))
        order = sorted(asked)
        reads = []
        for n in order:
            if positions[n] is None:  # every kept message, every channel a gap
                reads.append(self.shards[n].replay(asked[n], 0, SEPARATOR))
            else:
                reads.append(self.shards[n].replay(asked[n], positions[n], theirs[n]))

        def read(results):
            answers = {}
            for n, (ok, result) in zip(order, results):
                if not ok:  # (one line per resume while a shard is away)
                    _log.warn("the history of shard {shard} cannot be read: {why}",
                              shard=n, why=result.getErrorMessage())
                answers[n] = result if ok else None
            if all(answer is None for answer in answers.values()):
                raise UnreadableHistory("no shard's history can be read now")
            return Replayed(*merge(answers, asked))
        return DeferredList(reads, consumeErrors=True).addCallback(read)

    def mail(self, user):
        return self._of(f"user:{user}").mail(user)

    def deliver_relayed(self, message: Message, alone: bool = False) -> None:
        """A relay from the hub: to the shards of its channels, which
        remember it until their Redis copy comes (``_Once`` lets one by)."""
        for n in sorted(self._once.several(message)):
            self.shards[n].deliver_relayed(message, alone)
