"""What a ``RedisBroker`` subscribes to, in Redis and in its node's hub.

Channels.  An engine channel ``C`` (``user:U``, ``group:G``, ``tag:T``,
``all``, ``worker:NODE.WORKER``) is the Redis channel ``PREFIX + C``; besides
them each broker subscribes to ``PREFIX_cmd`` (cluster commands) and to its
own ``PREFIX_reply:ID``.  A broker subscribes to ``C`` when its engine's first
local session wants it and unsubscribes when the last one leaves, so Redis
sends each process only what its sessions need.  ``SUBSCRIBE`` and
``UNSUBSCRIBE`` (``SSUBSCRIBE`` and ``SUNSUBSCRIBE`` in a Redis Cluster: the
subscriber link names them) are written straight to the subscriber
connection, and Redis's confirmations are counted per channel.

At reconnect the subscriber subscribes every channel again (txredisapi does
not), and only once every confirmation is in is the broker healthy and does
it register again in ``_members`` (``on_ready``).  While the subscriber is
away ``subscribe`` fires at once (or once the hub has the channel): the
channel is subscribed in Redis when it is back.

The hub.  A pool worker's broker also has the AMP pipe to its master (``use_hub``),
whose hub routes messages between the workers of a node without Redis.  The
hub's subscription table follows this engine's subscriptions *always* (one
``Subscribe``/``Unsubscribe`` per channel change, beside the Redis one;
``subscribe`` fires once both stand), so that it is right whichever worker
notices the outage first.

Occupancy.  Each confirmation of a ``SUBSCRIBE`` or ``UNSUBSCRIBE`` (and
the end of a resubscription, and a lost connection) is told to
``occupancy`` (``redis_occupancy.Occupancy``), which syncs the Pusher
channels it watches (channel_occupied/vacated across nodes).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred, DeferredList

from ..wire.hub_commands import Subscribe, Unsubscribe
from .redis_context import Context
from .redis_link import _command
from .redis_occupancy import Occupancy

__all__ = ["Subscriptions"]

_RESUBSCRIBE = object()  # an expected confirmation of a resubscription


class Subscriptions:
    """This engine's subscriptions (``context.channels``) in Redis and in
    the hub; ``on_ready()`` once a new subscriber connection has every
    channel again (``context.sub_ready``); what Redis confirms is told to
    ``occupancy`` (``redis_occupancy.Occupancy``)."""

    def __init__(self, context: Context, on_ready: Callable[[], None]):
        self.context = context
        self.on_ready = on_ready
        self.occupancy = Occupancy(context)
        self._expect: dict[bytes, deque] = {}   # SUBSCRIBE confirmations awaited
        self._resubscribing = 0

    def subscribe(self, channel: str) -> Deferred | None:
        """A Deferred firing once Redis confirms, and the node's hub (a pool
        worker) routes the channel here too; while the subscriber is away,
        at once (None) or once the hub does: the channel is subscribed in
        Redis when it is back."""
        ctx = self.context
        ctx.channels.add(channel)
        hub = None if ctx.hub is None else ctx.to_hub(Subscribe, channels=[channel])
        proto = ctx.sub.protocol
        if proto is None:
            return hub
        key = ctx.key(channel)
        d = Deferred()
        self._expect.setdefault(key, deque()).append(d)
        proto.transport.write(_command(ctx.sub.SUBSCRIBE, key))
        if hub is None:
            return d
        return DeferredList([d, hub]).addCallback(lambda _: None)

    def unsubscribe(self, channel: str) -> None:
        ctx = self.context
        ctx.channels.discard(channel)
        if ctx.hub is not None:
            ctx.to_hub(Unsubscribe, channels=[channel])
        self.occupancy.leaving(channel)
        proto = ctx.sub.protocol
        if proto is not None:
            proto.transport.write(_command(ctx.sub.UNSUBSCRIBE, ctx.key(channel)))

    def follow_hub(self) -> None:
        """The hub (just set in ``context.hub``) learns every channel this
        engine subscribes to; from now on it follows each change."""
        if self.context.channels:
            self.context.to_hub(Subscribe, channels=sorted(self.context.channels))

    def standing(self, channel: str) -> Deferred:
        """A Deferred firing once the last ``subscribe(channel)`` stands in
        Redis (at once when none is awaited)."""
        ready = Deferred()
        waiting = [d for d in self._expect.get(self.context.key(channel), ())
                   if d is not _RESUBSCRIBE]
        if waiting:
            waiting[-1].addBoth(lambda result: (ready.callback(None), result)[1])
        else:
            ready.callback(None)
        return ready

    def resubscribe(self, proto) -> None:
        """Subscribe everything again on a new subscriber connection."""
        ctx = self.context
        keys = [ctx.cmd_key, ctx.reply_key] + [ctx.key(c) for c in ctx.channels]
        for key in keys:
            self._expect.setdefault(key, deque()).append(_RESUBSCRIBE)
        self._resubscribing = len(keys)
        proto.transport.write(b"".join(_command(ctx.sub.SUBSCRIBE, key) for key in keys))

    def confirmed(self, key: bytes) -> None:
        """Redis confirmed a SUBSCRIBE of ``key``."""
        waiting = self._expect.get(key)
        if not waiting:
            return
        item = waiting.popleft()
        if not waiting:
            del self._expect[key]
        if item is not _RESUBSCRIBE:
            item.callback(None)
            self.occupancy.subscribed(self._channel(key))
            return
        self._resubscribing -= 1
        if self._resubscribing == 0 and self.context.sub.protocol is not None:
            self.context.sub_ready = True
            self.occupancy.resubscribed()
            self.on_ready()

    def unconfirmed(self, key: bytes) -> None:
        """Redis confirmed an UNSUBSCRIBE of ``key``."""
        self.occupancy.unsubscribed(self._channel(key))

    def _channel(self, key: bytes) -> str:
        return key[len(self.context.prefix):].decode("utf-8", "surrogatepass")

    def lost(self) -> None:
        """The subscriber connection went: degraded, the subscriptions that
        wait for Redis stand now (they are made again at reconnect)."""
        self.context.sub_ready = False
        self._resubscribing = 0
        self.occupancy.lost()
        expected, self._expect = self._expect, {}
        for waiting in expected.values():
            for d in waiting:
                if d is not _RESUBSCRIBE:
                    d.callback(None)
