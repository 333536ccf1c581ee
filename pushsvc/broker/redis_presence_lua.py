"""The presence tally in Redis: ``tally.MemberTally``'s rule as Lua scripts,
run atomically, so each first and last session of a user in a group is
decided once however the engines of every node interleave.  No I/O.

Keys (``P`` is the engine's prefix, which carries a Redis Cluster shard's
hash tag; a group's entries are in the shard of its channel ``group:G``):

- ``P_presence`` (hash): ``G \\xff USER`` -> how many entries the user has
  in group G;
- ``P_presence_of`` (sorted set, every score 0): ``MEMBER \\xff ENTRY`` per
  entry an engine (its member id) holds, each entry ``G \\xff USER \\xff
  SESSION``: a member's entries are a range by name (ZRANGEBYLEX);
- ``P_presence_holders`` (sorted set): member id -> the time (ms, Redis's
  clock) until which it is alive: every call of the member and its
  heartbeat (``BEAT_SCRIPT``) push it ``ttl`` ahead (the heartbeat's three
  intervals, as for ``P_members``).

Every call declares these three keys, in this order (``presence_keys``),
and touches no other: sweeping another member's entries reads and writes
ranges and fields of these keys, whatever groups it finds there.

``CHANGE_SCRIPT`` adds or removes one entry; ``BEAT_SCRIPT`` keeps the
member alive, sweeps the members that are not (each of their entries
removed, the users whose last entry went returned to the sweeper, which
announces them) and says whether the member's entries are those it thinks
it holds; ``SYNC_SCRIPT`` makes them so (after an outage, or a sweep of a
member that was only slow), returning each transition it made.
"""

from __future__ import annotations

from typing import Any

SEPARATOR = b"\xff"     # never in UTF-8: between a group, a user and a session
SWEEP_MAX = 16          # dead members swept by one heartbeat

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function str(n) return string.format('%d', n) end
local function parts(entry)
  local a = string.find(entry, '\\255', 1, true)
  local b = string.find(entry, '\\255', a + 1, true)
  return string.sub(entry, 1, a - 1), string.sub(entry, a + 1, b - 1)
end
-- The entry's field in the counts: 'G \\xff USER'.
local function field(entry)
  local a = string.find(entry, '\\255', 1, true)
  return string.sub(entry, 1, string.find(entry, '\\255', a + 1, true) - 1)
end
-- A member's entries: the range after 'MEMBER \\xff' (an entry's group, user
-- and session hold no 0xFF, so it sorts below three 0xFF bytes).
local function range(member)
  return '[' .. member .. '\\255', '(' .. member .. '\\255\\255\\255\\255'
end
local function entries_of(member)
  local found = redis.call('ZRANGEBYLEX', KEYS[2], range(member))
  for k, held in ipairs(found) do found[k] = string.sub(held, #member + 2) end
  return found
end
local function add(member, entry)
  if redis.call('ZADD', KEYS[2], 0, member .. '\\255' .. entry) == 0 then return false end
  return redis.call('HINCRBY', KEYS[3], field(entry), 1) == 1
end
local function remove(member, entry)
  if redis.call('ZREM', KEYS[2], member .. '\\255' .. entry) == 0 then return false end
  local f = field(entry)
  if redis.call('HINCRBY', KEYS[3], f, -1) > 0 then return false end
  redis.call('HDEL', KEYS[3], f)
  return true
end
"""

# KEYS: the three (``presence_keys``).  ARGV: member id, ttl (ms), "1"
# (joined) or "0" (left), the entry.  Returns 1 for a transition (the user's
# first entry in the group, or its last), else 0.
CHANGE_SCRIPT = _PRELUDE + """
redis.call('ZADD', KEYS[1], str(now_ms() + tonumber(ARGV[2])), ARGV[1])
local changed
if ARGV[3] == '1' then changed = add(ARGV[1], ARGV[4])
else changed = remove(ARGV[1], ARGV[4]) end
return changed and 1 or 0
"""

# KEYS: the three.  ARGV: member id, ttl (ms), how many entries the member
# thinks it holds.  Keeps it alive, sweeps up to SWEEP_MAX members whose
# time has passed, and returns {1 when the member holds that many entries
# else 0, group, user, group, user...}: the users whose last entry went
# with a swept member.
BEAT_SCRIPT = _PRELUDE + """
local now = now_ms()
redis.call('ZADD', KEYS[1], str(now + tonumber(ARGV[2])), ARGV[1])
local out = {0}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. str(now),
                                   'LIMIT', 0, SWEEP_MAX)) do
  for _, entry in ipairs(entries_of(member)) do
    if remove(member, entry) then
      local group, user = parts(entry)
      out[#out + 1] = group
      out[#out + 1] = user
    end
  end
  redis.call('ZREM', KEYS[1], member)
end
if redis.call('ZLEXCOUNT', KEYS[2], range(ARGV[1])) == tonumber(ARGV[3]) then
  out[1] = 1
end
return out
""".replace("SWEEP_MAX", str(SWEEP_MAX))

# KEYS: the three.  ARGV: member id, ttl (ms), N, the N entries the member
# holds, then the entries whose leave it could not tell Redis.  Makes its
# entries those N, and returns each transition as {"+" or "-", entry, ...};
# a left entry whose user has no entry in its group any more counts as its
# last (Redis lost the entry meanwhile: a restart).
SYNC_SCRIPT = _PRELUDE + """
local member = ARGV[1]
redis.call('ZADD', KEYS[1], str(now_ms() + tonumber(ARGV[2])), member)
local last = 3 + tonumber(ARGV[3])
local wanted, gone = {}, {}
for j = 4, last do wanted[ARGV[j]] = true end
local out = {}
for _, entry in ipairs(entries_of(member)) do
  if not wanted[entry] and remove(member, entry) then
    out[#out + 1] = '-'
    out[#out + 1] = entry
    gone[field(entry)] = true
  end
end
for j = 4, last do
  if add(member, ARGV[j]) then
    out[#out + 1] = '+'
    out[#out + 1] = ARGV[j]
  end
end
for j = last + 1, #ARGV do
  local f = field(ARGV[j])
  if not gone[f] and redis.call('HEXISTS', KEYS[3], f) == 0 then
    gone[f] = true
    out[#out + 1] = '-'
    out[#out + 1] = ARGV[j]
  end
end
return out
"""

# KEYS: holders.  ARGV: member id.  The member stops (a close): any other
# member's next heartbeat sweeps what it still holds.
STOP_SCRIPT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then redis.call('ZADD', KEYS[1], 0, ARGV[1]) end
return 0
"""


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def presence_keys(prefix: bytes) -> list[bytes]:
    """The three keys every call declares, in the scripts' order."""
    return [prefix + b"_presence_holders", prefix + b"_presence_of", prefix + b"_presence"]


def entry(group: str, user: str, session: str) -> bytes:
    """One session of ``user`` in ``group``, as the scripts keep it."""
    return SEPARATOR.join((utf8(group), utf8(user), utf8(session)))


def parse_entry(raw: bytes) -> tuple[str, str, str]:
    """(group, user, session) of an entry."""
    group, user, session = raw.split(SEPARATOR, 2)
    return tuple(str(part, "utf-8", "surrogatepass") for part in (group, user, session))


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)


def parse_beat(answer) -> tuple[bool, list[tuple[str, str]]]:
    """``BEAT_SCRIPT``'s answer: (the member's entries are in step, the
    (group, user) whose last entry was swept)."""
    rest = answer[1:]
    return (int(answer[0]) == 1,
            [(_text(rest[k]), _text(rest[k + 1])) for k in range(0, len(rest), 2)])


def parse_sync(answer) -> list[tuple[bool, bytes]]:
    """``SYNC_SCRIPT``'s answer: (joined, entry) of each transition."""
    return [(_text(answer[k]) == "+", bytes(answer[k + 1]))
            for k in range(0, len(answer), 2)]
