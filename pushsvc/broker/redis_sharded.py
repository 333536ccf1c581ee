"""The broker over several Redis shards: one ``RedisBroker`` per shard, each
channel on the shard ``redis_shards.shard_of`` names (the design is in
``redis_shards``).

``ShardedRedisBroker`` implements ``IBroker`` by handing each call to the
shard of its channel (``subscribe``, ``unsubscribe``, ``mail`` of
``user:U``), splitting a publish by shard, and sending commands through
shard 0.  Each shard's broker has its own connections, backoff, health,
queue and history; it hands what it receives to ``_Once``, which drops the
second copy of a message that went to several shards.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import Callable

from twisted.internet.defer import DeferredList, succeed
from zope.interface import implementer

from ..reloadable import IReloadable
from ..routing import channels as route
from .interface import IBroker, IReceiver, Message
from .redis import RedisBroker
from .redis_context import QUEUE_MAX_AGE
from .redis_shards import shard_of, split, urls_of

__all__ = ["ShardedRedisBroker"]

ONCE_SECONDS = 2 * QUEUE_MAX_AGE   # how long a message of several shards is remembered
ONCE_MAX = 100_000                 # and how many at most (the oldest are forgotten)


@implementer(IReceiver)
class _Once:
    """The engine, behind the shards: a message published on several shards
    reaches it once (its id is remembered ``ONCE_SECONDS``, at most
    ``ONCE_MAX`` of them)."""

    def __init__(self, shards: int, clock):
        self.receiver = None
        self.clock = clock
        self.duplicates = 0
        self._shard = lru_cache(maxsize=65536)(lambda channel: shard_of(channel, shards))
        self._seen: OrderedDict[str, float] = OrderedDict()

    def several(self, message: Message) -> set[int]:
        """The shards ``message`` was published on."""
        return {self._shard(channel) for channel in route(message.to)}

    def deliver(self, message: Message, alone: bool = False) -> None:
        if len(self.several(message)) > 1:
            now = self.clock.seconds()
            seen = self._seen
            while seen and (len(seen) >= ONCE_MAX
                            or next(iter(seen.values())) < now - ONCE_SECONDS):
                seen.popitem(last=False)
            if message.id in seen:
                self.duplicates += 1
                return
            seen[message.id] = now
        self.receiver.deliver(message, alone)

    def perform(self, command):
        return self.receiver.perform(command)


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
        """None: positions are per shard, and a resume across shards is not
        done yet (``redis_shards``)."""
        return None

    # -- life cycle -------------------------------------------------------

    def attach(self, receiver):
        self._once.receiver = receiver
        for shard in self.shards:
            shard.attach(self._once)

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

    def replay(self, channels, since, epoch):
        """Every channel a gap: not across shards yet (``redis_shards``)."""
        return succeed(([], sorted(set(channels))))

    def mail(self, user):
        return self._of(f"user:{user}").mail(user)

    def deliver_relayed(self, message: Message, alone: bool = False) -> None:
        """A relay from the hub: to the shards of its channels, which
        remember it until their Redis copy comes (``_Once`` lets one by)."""
        for n in sorted(self._once.several(message)):
            self.shards[n].deliver_relayed(message, alone)
