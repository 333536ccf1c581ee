"""The presence tally in Redis: ``tally.MemberTally``'s rule as Lua scripts,
run atomically, so each first and last session of a user in a group is
decided once however the engines of every node interleave.  No I/O.

Keys (``P`` is the engine's prefix, which carries a Redis Cluster shard's
hash tag, so that every key of a call is in one slot; a group's keys are in
the shard of its channel ``group:G``):

- ``P_presence:G`` (hash): user -> how many entries it has in group G;
- ``P_presence_of:MEMBER`` (set): the entries an engine (its member id)
  holds, each ``G \\xff USER \\xff SESSION``;
- ``P_presence_holders`` (sorted set): member id -> the time (ms, Redis's
  clock) until which it is alive: every call of the member and its
  heartbeat (``BEAT_SCRIPT``) push it ``ttl`` ahead (the heartbeat's three
  intervals, as for ``P_members``).

Every key of a call is in the slot of the prefix's hash tag.  ``BEAT_SCRIPT``
and ``SYNC_SCRIPT`` touch keys they do not declare: the sets of the members
they sweep and the hashes of the groups of the entries they find (in the
data, not in their arguments), as ``redis_history_lua`` lets go of the
lists of the channels of a message it finds.

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
-- hash: the entry's group's key (derived from the prefix, ARGV[3], when nil).
local function add(mine, entry, hash)
  if redis.call('SADD', mine, entry) == 0 then return false end
  local group, user = parts(entry)
  hash = hash or (ARGV[3] .. '_presence:' .. group)
  return redis.call('HINCRBY', hash, user, 1) == 1
end
local function remove(mine, entry, hash)
  if redis.call('SREM', mine, entry) == 0 then return false end
  local group, user = parts(entry)
  hash = hash or (ARGV[3] .. '_presence:' .. group)
  if redis.call('HINCRBY', hash, user, -1) > 0 then return false end
  redis.call('HDEL', hash, user)
  return true
end
"""

# KEYS: holders, this member's set, the group's hash.  ARGV: member id, ttl
# (ms), prefix, "1" (joined) or "0" (left), the entry.  Returns 1 for a
# transition (the user's first entry in the group, or its last), else 0.
CHANGE_SCRIPT = _PRELUDE + """
redis.call('ZADD', KEYS[1], str(now_ms() + tonumber(ARGV[2])), ARGV[1])
local changed
if ARGV[4] == '1' then changed = add(KEYS[2], ARGV[5], KEYS[3])
else changed = remove(KEYS[2], ARGV[5], KEYS[3]) end
return changed and 1 or 0
"""

# KEYS: holders, this member's set.  ARGV: member id, ttl (ms), prefix, how
# many entries the member thinks it holds.  Keeps it alive, sweeps up to
# SWEEP_MAX members whose time has passed, and returns {1 when the member
# holds that many entries else 0, group, user, group, user...}: the users
# whose last entry went with a swept member.
BEAT_SCRIPT = _PRELUDE + """
local prefix = ARGV[3]
local now = now_ms()
redis.call('ZADD', KEYS[1], str(now + tonumber(ARGV[2])), ARGV[1])
local out = {0}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. str(now),
                                   'LIMIT', 0, SWEEP_MAX)) do
  local theirs = prefix .. '_presence_of:' .. member
  for _, entry in ipairs(redis.call('SMEMBERS', theirs)) do
    if remove(theirs, entry) then
      local group, user = parts(entry)
      out[#out + 1] = group
      out[#out + 1] = user
    end
  end
  redis.call('ZREM', KEYS[1], member)
end
if redis.call('SCARD', KEYS[2]) == tonumber(ARGV[4]) then out[1] = 1 end
return out
""".replace("SWEEP_MAX", str(SWEEP_MAX))

# KEYS: holders, this member's set.  ARGV: member id, ttl (ms), prefix, N,
# the N entries the member holds, then the entries whose leave it could not
# tell Redis.  Makes its set those N entries, and returns each transition as
# {"+" or "-", entry, ...}; a left entry whose user has no entry in its group
# any more counts as its last (Redis lost the entry meanwhile: a restart).
SYNC_SCRIPT = _PRELUDE + """
redis.call('ZADD', KEYS[1], str(now_ms() + tonumber(ARGV[2])), ARGV[1])
local last = 4 + tonumber(ARGV[4])
local wanted, gone = {}, {}
for j = 5, last do wanted[ARGV[j]] = true end
local out = {}
for _, entry in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not wanted[entry] and remove(KEYS[2], entry) then
    out[#out + 1] = '-'
    out[#out + 1] = entry
    local group, user = parts(entry)
    gone[group .. '\\255' .. user] = true
  end
end
for j = 5, last do
  if add(KEYS[2], ARGV[j]) then
    out[#out + 1] = '+'
    out[#out + 1] = ARGV[j]
  end
end
for j = last + 1, #ARGV do
  local group, user = parts(ARGV[j])
  local key = group .. '\\255' .. user
  if not gone[key]
      and not redis.call('HGET', ARGV[3] .. '_presence:' .. group, user) then
    gone[key] = true
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


def group_key(prefix: bytes, group: str) -> bytes:
    """The hash of ``group``'s members: user -> entries."""
    return prefix + b"_presence:" + utf8(group)


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
