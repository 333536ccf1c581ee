"""Pusher's ``channel_occupied``/``channel_vacated`` across Redis nodes:
Redis says when a channel gets its first subscriber and loses its last.

Why Redis.  A node knows only its own members of a group; Redis knows how
many engines, cluster-wide, subscribe to the group's channel (each engine
subscribes while it has a member, and a dead engine's subscriptions go with
its connection): ``PUBSUB NUMSUB`` (``SHARDNUMSUB`` in a Redis Cluster).

The marker.  ``PREFIX_occupied`` is a hash, one per shard (in a Redis
Cluster, per logical shard: its hash tag keeps it in the channels' slot):
a field per watched channel announced occupied.  ``SYNC_SCRIPT`` changes
it atomically and says what changed.  After Redis confirms an engine's
``SUBSCRIBE`` of a watched channel, the engine asks it to set the field if
missing (``channel_occupied``; whatever the count: the engine's own leave,
if it came already, is synced right after); after an ``UNSUBSCRIBE``, to
make the field match the subscriber count (no subscriber and a field:
``channel_vacated``).  Each engine's syncs run in the order of its
confirmations, one call at a time, and each leaves the field as Redis's
count is at that instant (or was an instant before), so the events
alternate, occupied then vacated, once per transition however joins and
leaves on different nodes interleave, announced by the engine whose
script made the change.  A vacancy shorter than a script call (one node's
last member leaves as another node's joins) may be seen by no script:
neither event is announced.

What no sync follows.  An engine that dies (or whose subscriber
connection breaks) leaves fields whose subscribers Redis dropped with it.
The sweep: every ``SWEEP_BEATS`` heartbeats, the live member with the
smallest id (one per shard) runs ``SWEEP_SCRIPT`` over the hash, in
batches of ``BATCH``: a field without subscribers is stamped with the
time, and one still without them at a sweep at least half an interval
later goes (``channel_vacated``); a field with subscribers loses its
stamp.  So a node that reconnects within about a sweep interval (a short
Redis outage, a blip) is not announced vacated and occupied again.  What
an outage left undone is settled when the subscriber is back: the
engine syncs every watched channel it subscribes to, and those it left
meanwhile; a sync that fails is tried again at the next heartbeat.

Which channels: ``watch(wanted, announce, active)`` names them (Pusher
app groups whose webhooks want the events: ``pusher/webhook_sender.py``);
no other subscription costs a round trip.  A process that stops or
retires (``active()`` false) syncs and sweeps nothing more: what its
closing connections vacate is announced by a live node's sweep, not lost
with the webhooks it would have queued at its stop.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .redis_context import Context, RepeatedError

__all__ = ["Occupancy", "SWEEP_BEATS", "BATCH"]

_log = Logger()

SWEEP_BEATS = 5     # heartbeats between sweeps (10 s with the default 2 s beat)
BATCH = 200         # channels per script call

_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the marker hash.  ARGV: NUMSUB or SHARDNUMSUB, the prefix, then
# (kind, channel) pairs, in the order the engine saw them: 'S' after its own
# SUBSCRIBE was confirmed (the field is set if missing: it has a subscriber,
# or had one an instant ago, and the engine's own leave is synced after
# this), 'C' to match the count (after an UNSUBSCRIBE, or when settling).
# Returns {channel, '1' (occupied) or '0' (vacated), ...} for each field it
# added or removed.
SYNC_SCRIPT = """
local out = {}
for i = 3, #ARGV - 1, 2 do
  local kind, channel = ARGV[i], ARGV[i + 1]
  local n = 1
  if kind ~= 'S' then n = redis.call('PUBSUB', ARGV[1], ARGV[2] .. channel)[2] end
  if n > 0 then
    local mark = redis.call('HGET', KEYS[1], channel)
    if not mark then
      redis.call('HSET', KEYS[1], channel, '0')
      out[#out + 1] = channel
      out[#out + 1] = '1'
    elseif mark ~= '0' then
      redis.call('HSET', KEYS[1], channel, '0')
    end
  elseif redis.call('HDEL', KEYS[1], channel) == 1 then
    out[#out + 1] = channel
    out[#out + 1] = '0'
  end
end
return out
"""

# KEYS: the marker hash.  ARGV: NUMSUB or SHARDNUMSUB, the prefix, the HSCAN
# cursor, the batch, the grace (ms).  Returns {next cursor, vacated channels...}.
SWEEP_SCRIPT = _NOW + """
local page = redis.call('HSCAN', KEYS[1], ARGV[3], 'COUNT', ARGV[4])
local out = {page[1]}
local fields = page[2]
for i = 1, #fields, 2 do
  local channel, mark = fields[i], fields[i + 1]
  local n = redis.call('PUBSUB', ARGV[1], ARGV[2] .. channel)[2]
  if n > 0 then
    if mark ~= '0' then redis.call('HSET', KEYS[1], channel, '0') end
  elseif mark == '0' then
    redis.call('HSET', KEYS[1], channel, string.format('%d', now))
  elseif now - tonumber(mark) >= tonumber(ARGV[5]) then
    redis.call('HDEL', KEYS[1], channel)
    out[#out + 1] = channel
  end
end
return out
"""


def changes(answer) -> list[tuple[str, bool]]:
    """``SYNC_SCRIPT``'s answer as ``(channel, occupied)`` pairs."""
    return [(_text(answer[i]), answer[i + 1] in (b"1", "1"))
            for i in range(0, len(answer) - 1, 2)]


def _text(raw) -> str:
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)


class Occupancy:
    """The occupied/vacated part of one ``RedisBroker`` (one shard):
    ``subscribed``/``unsubscribed`` when Redis confirms, ``leaving`` for an
    ``UNSUBSCRIBE`` sent, ``lost`` and ``resubscribed`` for the subscriber
    connection, ``beat(live)`` at every heartbeat."""

    def __init__(self, context: Context):
        self.context = context
        self.wanted: Callable[[str], bool] | None = None
        self.announce: Callable[[str, bool], None] | None = None
        self.active: Callable[[], bool] = lambda: True
        self.key = context.prefix + b"_occupied"
        cluster = context.sub.SUBSCRIBE == b"SSUBSCRIBE"
        self.numsub = b"SHARDNUMSUB" if cluster else b"NUMSUB"
        self._queue: deque[tuple[bytes, str]] = deque()  # (kind, channel) to sync
        self._leaving: set[str] = set()     # UNSUBSCRIBE sent, not confirmed
        self._settling = False
        self._sweeping = False
        self._last_sweep: float | None = None
        self._error = RepeatedError("the occupied channels in redis")

    def watch(self, wanted: Callable[[str], bool], announce: Callable[[str, bool], None],
              active: Callable[[], bool] = lambda: True) -> None:
        """Sync the channels ``wanted(channel)`` names; ``announce(channel,
        occupied)`` each change this engine's scripts make.  Once
        ``active()`` is false (the process stops) nothing more is synced or
        swept here: the live nodes' sweep announces what it leaves."""
        self.wanted, self.announce, self.active = wanted, announce, active

    def _watches(self, channel: str) -> bool:
        return self.wanted is not None and self.active() and self.wanted(channel)

    # -- what the subscriptions tell it ---------------------------------------

    def subscribed(self, channel: str) -> None:
        """Redis confirmed this engine's ``SUBSCRIBE`` of ``channel``."""
        if self._watches(channel):
            self._queue.append((b"S", channel))
            self.settle()

    def leaving(self, channel: str) -> None:
        """An ``UNSUBSCRIBE`` of ``channel`` was sent (or will not be, the
        subscriber being away: Redis has dropped it already)."""
        if self._watches(channel):
            if self.context.sub.protocol is None:
                self._queue.append((b"C", channel))
            else:
                self._leaving.add(channel)

    def unsubscribed(self, channel: str) -> None:
        """Redis confirmed an ``UNSUBSCRIBE`` of ``channel``."""
        self._leaving.discard(channel)
        if self._watches(channel):
            self._queue.append((b"C", channel))
            self.settle()

    def lost(self) -> None:
        """The subscriber connection went: Redis dropped every subscription,
        and the confirmations awaited will not come."""
        self._queue.extend((b"C", channel) for channel in sorted(self._leaving))
        self._leaving.clear()

    def resubscribed(self) -> None:
        """The subscriber has every channel again: sync the watched ones."""
        if self.wanted is None or not self.active():
            return
        fresh = {channel for channel in self.context.channels if self.wanted(channel)}
        # A later check of a channel stands for an earlier one (flapping
        # connections do not grow the queue).
        self._queue = deque(item for item in self._queue
                            if item[0] == b"S" or item[1] not in fresh)
        self._queue.extend((b"C", channel) for channel in sorted(fresh))
        self.settle()

    # -- syncing and sweeping ---------------------------------------------------

    def settle(self) -> None:
        """Run ``SYNC_SCRIPT`` for what waits, in order, one call at a time,
        while both connections are up (else at the next beat)."""
        ctx = self.context
        if (self._settling or not self._queue or ctx.closed or not ctx.sub_ready
                or ctx.cmd.protocol is None or not self.active()):
            return
        self._settling = True
        batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
        args = [self.numsub, ctx.prefix]
        for kind, channel in batch:
            args += (kind, channel)
        d = ctx.eval(SYNC_SCRIPT, [self.key], args)
        d.addCallbacks(self._synced, self._sync_failed, errbackArgs=(batch,))

    def _synced(self, answer) -> None:
        self._settling = False
        self._error.ok()
        for channel, occupied in changes(answer):
            self._announce(channel, occupied)
        self.settle()

    def _sync_failed(self, failure, batch: list[tuple[bytes, str]]) -> None:
        self._settling = False
        self._queue.extendleft(reversed(batch))  # again, first, at the next beat
        self._error.failed(failure, "syncing the occupied channels in redis")

    def beat(self, live: list[str]) -> None:
        """A heartbeat: settle what waits; sweep when this member is the
        first of ``live`` and a sweep is due."""
        self.settle()
        ctx = self.context
        if (self.wanted is None or not self.active() or self._sweeping
                or ctx.health() is not None):
            return
        now = ctx.clock.seconds()
        every = SWEEP_BEATS * ctx.interval
        if self._last_sweep is None:
            self._last_sweep = now  # a first sweep one interval after the start
        if now - self._last_sweep < every or not live or min(live) != ctx.id:
            return
        self._last_sweep = now
        self._sweeping = True
        Deferred.fromCoroutine(self._sweep(int(every * 500))).addBoth(self._swept)

    async def _sweep(self, grace_ms: int) -> None:
        ctx = self.context
        cursor = b"0"
        while True:
            answer = await ctx.eval(SWEEP_SCRIPT, [self.key],
                                    [self.numsub, ctx.prefix, cursor, BATCH, grace_ms])
            cursor = answer[0]
            for raw in answer[1:]:
                self._announce(_text(raw), False)
            if cursor in (b"0", "0", 0):
                return

    def _swept(self, result) -> None:
        self._sweeping = False
        if result is not None:  # a Failure
            self._error.failed(result, "sweeping the occupied channels in redis")

    def _announce(self, channel: str, occupied: bool) -> None:
        try:
            self.announce(channel, occupied)
        except Exception:
            _log.failure("announcing {channel} occupied={occupied} failed",
                         channel=channel, occupied=occupied)
