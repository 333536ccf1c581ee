"""Counts every engine shares through Redis (``IBroker.share_counts``: each
Pusher app's open connections), one part of a ``RedisBroker``.

One hash per Redis (``PREFIX_counts``; with several shards, on the first):
a field per engine (its member id, ``OWNER.INCARNATION``), whose value is
the time until which the report stands (ms, the Redis server's clock: three
intervals ahead) and the engine's counts, as text:
``"EXPIRY NAME COUNT NAME COUNT..."``.  Each interval every engine runs
``COUNTS_SCRIPT``: it writes its own field, removes the fields whose time
has passed (an engine that died, or was cut off from Redis for three
intervals), and answers the sum of the others' counts.  An engine that
stops removes its field (``stop``); one that dies stops counting when its
field expires.  While Redis is away the engine keeps the others' counts as
last known.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred

from .counts import CountExchange
from .redis_context import MISSED_BEATS, Context

__all__ = ["COUNTS_SCRIPT", "Counts", "encode", "parse_totals"]

# KEYS: the counts hash.  ARGV: this engine's id, how long its report
# stands (ms), its counts as " NAME COUNT" pairs.  Returns the other live
# engines' totals as {name, count, name, count...}.
COUNTS_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[2])) .. ARGV[3])
local totals, names = {}, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local expiry, counts = string.match(fields[i + 1], '^(%d+)(.*)$')
  if not expiry or tonumber(expiry) < now then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif fields[i] ~= ARGV[1] then
    for name, count in string.gmatch(counts, ' (%S+) (%d+)') do
      if not totals[name] then
        totals[name] = 0
        names[#names + 1] = name
      end
      totals[name] = totals[name] + tonumber(count)
    end
  end
end
local out = {}
for _, name in ipairs(names) do
  out[#out + 1] = name
  out[#out + 1] = string.format('%d', totals[name])
end
return out
"""


def encode(counts: dict[str, int]) -> bytes:
    """A report as the script's text (names hold no space: ``check_counts``)."""
    return "".join(f" {name} {count}" for name, count in counts.items()).encode()


def parse_totals(answer) -> dict[str, int]:
    """The script's answer as a dict name -> count; ValueError when it is not."""
    if not isinstance(answer, list) or len(answer) % 2:
        raise ValueError(f"not a list of name, count pairs: {answer!r:.200}")
    return {(name.decode() if isinstance(name, bytes) else str(name)): int(count)
            for name, count in zip(answer[::2], answer[1::2])}


class Counts:
    """This engine's report in Redis (see the module docstring)."""

    def __init__(self, context: Context):
        self.context = context
        self.key = context.prefix + b"_counts"
        self.exchange: CountExchange | None = None
        self._started = False

    def share(self, report, learned, interval: float) -> None:
        self.exchange = CountExchange(self.context.clock, self._send, report, learned,
                                      interval)
        if self._started:
            self.exchange.start()

    def start(self) -> None:
        self._started = True
        if self.exchange is not None:
            self.exchange.start()

    def _send(self, counts: dict[str, int]) -> Deferred:
        ctx = self.context
        ttl_ms = int(MISSED_BEATS * self.exchange.interval * 1000)
        d = ctx.eval(COUNTS_SCRIPT, [self.key], [ctx.id_b, ttl_ms, encode(counts)])
        return d.addCallback(parse_totals)

    def stop(self) -> None:
        """No more reports; this engine's field goes (its connections are
        closed: they stop counting at once)."""
        self._started = False
        if self.exchange is None:
            return
        self.exchange.stop()
        ctx = self.context
        if ctx.cmd.protocol is not None:
            maybeDeferred(ctx.cmd.protocol.execute_command, "HDEL", self.key,
                          ctx.id_b).addErrback(lambda _: None)

