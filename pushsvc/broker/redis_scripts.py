"""What a ``RedisBroker`` runs inside Redis, and the bytes it exchanges there.
No I/O.

The Lua scripts run atomically: ``PUBLISH_SCRIPT`` numbers, keeps and
publishes one call's messages (and keeps the stored ones of offline users in
their mailboxes), ``REPLAY_SCRIPT`` reads what a resuming session missed,
``TAKE_MAIL_SCRIPT`` empties a mailbox, ``HEARTBEAT_SCRIPT`` and
``MEMBERS_SCRIPT`` keep the member registry.  The Python functions build
their arguments and read their answers and the payloads subscribers get.

The history in Redis is ``history.History`` kept in the keys, and by the
rule, of ``redis_history_lua``.  A user's mailbox is ``P_mail:USER`` (list):
``"TIME ID \\xff FRAME"`` kept for an offline user; at most
``max_per_channel``, for ``ttl``.

0xFF never occurs in UTF-8, so it separates an id from its frame.
"""

from __future__ import annotations

import struct

from ..history import OVERHEAD
from ..wire.records import unpack_messages, unpack_publishes
from .redis_history_lua import HISTORY_LUA

MAGIC = b"PS2"
HEAD = struct.Struct("!3sH")    # magic, length of the publisher's id
SEQ = struct.Struct("!Q")       # the number of the publisher's script call
BASE = struct.Struct("!d")      # the call's first position (0: none), written by the script
REL = struct.Struct("!I")       # a count, then per record 1 + its index among the call's
                                # kept messages (its position is BASE + REL - 1), or 0
SEPARATOR = b"\xff"             # between an id and its frame

# -- Lua ----------------------------------------------------------------------

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function str(n) return string.format('%d', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: the history's ten (``redis_history_lua``), the mailboxes of the stored
# messages' users (``mail_key``).  ARGV: ttl (ms, 0 = keep nothing),
# max_per_channel, max_bytes, an epoch candidate, the prefix, the payload head,
# K, S; then K kept messages as (body, channel count, channels...), S stored
# messages as (body, user count, users...), then (Redis channel, payload
# body) pairs.  Numbers and keeps the K messages (positions
# base .. base + K - 1, in order), keeps each stored one for each of its users
# that nobody subscribes to, and PUBLISHes each payload as head .. base ..
# body.  Returns {base or 0, epoch or false}.
PUBLISH_SCRIPT = _PRELUDE + HISTORY_LUA + """
local H = history_keys(1)
local ttl, max_n, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix, head = ARGV[5], ARGV[6]
local kept, stored = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local i = 9
local base, epoch = 0, false
if kept > 0 then
  epoch = epoch_of(H, ARGV[4])
  local S = open(H, prefix, now, ttl, max_n, max_bytes)
  expire(S)
  base = S.pos + 1
  for _ = 1, kept do
    local channels = {}
    for j = i + 2, i + 1 + tonumber(ARGV[i + 1]) do channels[#channels + 1] = ARGV[j] end
    keep(S, ARGV[i], channels)
    i = i + 2 + #channels
  end
  close(S)
end
if stored > 0 then
  -- Mailbox bytes put in the last three ttl windows stay under max_bytes: an
  -- entry lives less than two ttl (aged ones go at the next put).
  local h = redis.call('HMGET', KEYS[1], 'mwin', 'm0', 'm1', 'm2')
  local win, m0, m1, m2 = tonumber(h[1]) or now, tonumber(h[2]) or 0,
                          tonumber(h[3]) or 0, tonumber(h[4]) or 0
  local steps = math.floor((now - win) / ttl)
  if steps >= 3 then win, m0, m1, m2 = now, 0, 0, 0
  elseif steps == 2 then win, m0, m1, m2 = win + 2 * ttl, 0, 0, m0
  elseif steps == 1 then win, m0, m1, m2 = win + ttl, 0, m0, m1 end
  local time = str(now) .. ' '
  local names = declared(H, prefix)
  for _ = 1, stored do
    local body, count = ARGV[i], tonumber(ARGV[i + 1])
    local size = #body + OVERHEAD
    for j = i + 2, i + 1 + count do
      local user = ARGV[j]
      local online = redis.call('PUBSUB', 'NUMSUB', prefix .. 'user:' .. user)[2]
      if online == 0 and m0 + m1 + m2 + size <= max_bytes then
        m0 = m0 + size
        local key = assert(names['_mail:' .. user], 'a mailbox not declared')
        while true do  -- what is older than ttl goes
          local first = redis.call('LINDEX', key, 0)
          if not first then break end
          local space = string.find(first, ' ', 1, true)
          if tonumber(string.sub(first, 1, space - 1)) > now - ttl then break end
          redis.call('LPOP', key)
        end
        if redis.call('RPUSH', key, time .. body) > max_n then redis.call('LPOP', key) end
        redis.call('PEXPIRE', key, str(ttl))
      end
    end
    i = i + 2 + count
  end
  redis.call('HSET', KEYS[1], 'mwin', str(win), 'm0', str(m0), 'm1', str(m1), 'm2', str(m2))
end
local tail = struct.pack('>d', base)
for j = i, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[j], head .. tail .. ARGV[j + 1])
end
return {base, epoch}
""".replace("OVERHEAD", str(OVERHEAD))

# KEYS: the history's ten (``redis_history_lua``).
# ARGV: ttl (ms), max_bytes, prefix, epoch, since, channels...  The kept
# messages of the channels after since, each once, by position, and the
# channels that let go of one after since: {1, epoch, gap count, gaps...,
# position, body, ...}; for another epoch the same from position 0, with 2
# first; {0, epoch or false} for a position never given or no history.
REPLAY_SCRIPT = _PRELUDE + HISTORY_LUA + """
local H = history_keys(1)
local ttl, max_bytes, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local since = tonumber(ARGV[5])
local epoch = redis.call('HGET', H.hist, 'epoch')
if not epoch then return {0, false} end
local S = open(H, prefix, now_ms(), ttl, 0, max_bytes)
expire(S)
save(S)
local other = epoch ~= ARGV[4]
if other then since = 0 elseif since > S.pos then return {0, epoch} end
local wanted, gapped = {}, {}
for j = 6, #ARGV do
  local channel = ARGV[j]
  local positions = listed(S, channel)
  local lost = mark_of(S, channel)
  if #positions == 0 and S.floor > lost then lost = S.floor end
  for _, p in ipairs(positions) do
    p = tonumber(p)
    if p <= S.floor then  -- let go of, yet listed: a list that outlived its keys
      if p > lost then lost = p end
    elseif p > since then
      wanted[p] = wanted[p] or {}
      table.insert(wanted[p], channel)
    end
  end
  if lost > since then gapped[channel] = true end
end
local positions = {}
for p in pairs(wanted) do positions[#positions + 1] = p end
table.sort(positions)
local found = {}
for start = 1, #positions, 1000 do
  local fields = {}
  for k = start, math.min(start + 999, #positions) do fields[#fields + 1] = str(positions[k]) end
  local bodies = redis.call('HMGET', H.frames, unpack(fields))
  for k, field in ipairs(fields) do
    if bodies[k] then
      found[#found + 1] = field
      found[#found + 1] = bodies[k]
    else  -- listed, yet not kept: lost to its channels
      for _, channel in ipairs(wanted[tonumber(field)]) do gapped[channel] = true end
    end
  end
end
local out = {other and 2 or 1, epoch, 0}
for j = 6, #ARGV do
  if gapped[ARGV[j]] then out[#out + 1] = ARGV[j] end
end
out[3] = #out - 3
for _, v in ipairs(found) do out[#out + 1] = v end
return out
"""

# KEYS: a mailbox.  ARGV: ttl (ms).  Its entries younger than ttl, oldest first,
# as bodies; the mailbox is emptied.
TAKE_MAIL_SCRIPT = _PRELUDE + """
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
if #entries == 0 then return {} end
redis.call('DEL', KEYS[1])
local limit = now_ms() - tonumber(ARGV[1])
local out = {}
for _, entry in ipairs(entries) do
  local space = string.find(entry, ' ', 1, true)
  if tonumber(string.sub(entry, 1, space - 1)) > limit then
    out[#out + 1] = string.sub(entry, space + 1)
  end
end
return out
"""

# KEYS: members, node claim, the history's ten; ARGV: member id, ttl (ms), node
# token, "1" to register, an epoch candidate.  Claims the node name unless
# another process holds it, registers the member, forgets expired ones, makes
# sure the history has an epoch; returns {claimed, holder, live members, epoch}.
HEARTBEAT_SCRIPT = _PRELUDE + HISTORY_LUA + """
local now = now_ms()
local ttl = tonumber(ARGV[2])
local holder = redis.call('GET', KEYS[2])
local claimed = 1
if holder and holder ~= ARGV[3] then
  claimed = 0
else
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
  holder = ARGV[3]
end
if claimed == 1 and ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return {claimed, holder, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf'),
        epoch_of(history_keys(3), ARGV[5])}
"""

# KEYS: members; ARGV: "" or a time T (ms), ttl (ms).  With "": {now, the live
# members}.  With T: {T, the members that have registered since T}.
MEMBERS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == '' then
  return {now, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')}
end
local since = tonumber(ARGV[1])
return {since, redis.call('ZRANGEBYSCORE', KEYS[1], since + tonumber(ARGV[2]), '+inf')}
"""

# In a Redis Cluster (``redis_cluster``) a logical shard's channels are shard
# channels (SSUBSCRIBE): the publish script publishes with SPUBLISH and asks
# whether a user is online with PUBSUB SHARDNUMSUB, in the slot of its keys.
SHARDED = {PUBLISH_SCRIPT: PUBLISH_SCRIPT.replace("'PUBLISH'", "'SPUBLISH'").replace(
    "'PUBSUB', 'NUMSUB'", "'PUBSUB', 'SHARDNUMSUB'")}
assert all(s.count("'SPUBLISH'") == 1 and s.count("'SHARDNUMSUB'") == 1
           for s in SHARDED.values())


# -- the bytes ------------------------------------------------------------------

def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def mail_key(prefix: bytes, user: str) -> bytes:
    """The key of the mailbox of ``user``."""
    return prefix + b"_mail:" + utf8(user)


def body(msg_id: str, frame: bytes) -> bytes:
    """What Redis keeps of a message: its id and its frame (without ``pos``)."""
    return utf8(msg_id) + SEPARATOR + frame


def parse_body(raw: bytes) -> tuple[str, bytes]:
    """(id, frame) of a kept body."""
    msg_id, _, frame = raw.partition(SEPARATOR)
    return str(msg_id, "utf-8", "surrogatepass"), frame


def payload_head(origin: bytes, seq: int) -> bytes:
    """The start of each payload of one script call (the script adds BASE)."""
    return HEAD.pack(MAGIC, len(origin)) + origin + SEQ.pack(seq)


def payload_body(rels: list[int], records: list[bytes]) -> bytes:
    """The part of a payload the publisher writes after the head: how many
    messages, each one's index among the call's kept messages (1, 2, ...; 0
    when not kept), then their publish records (``wire.records.pack_publish``)."""
    return b"".join([REL.pack(len(rels)), *map(REL.pack, rels), *records])


def parse_payload(payload: bytes) -> tuple[bytes, int, list[tuple[bool, int | None, str,
                                                                   bytes, bytes]]]:
    """(origin, call number, messages) of one payload; each message as
    (on several channels, position or None, id, to, frame as published).

    Raises ValueError (or struct.error) when it is not a pushsvc payload.
    """
    magic, size = HEAD.unpack_from(payload)
    if magic != MAGIC:
        raise ValueError("not a pushsvc payload")
    start = HEAD.size
    origin = payload[start:start + size]
    start += size
    (seq,) = SEQ.unpack_from(payload, start)
    start += SEQ.size
    (base,) = BASE.unpack_from(payload, start)
    base = int(base)
    start += BASE.size
    (count,) = REL.unpack_from(payload, start)
    start += REL.size
    rels = struct.unpack_from(f"!{count}I", payload, start)
    start += REL.size * count
    records = list(unpack_publishes(payload[start:]))
    if len(records) != count:
        raise ValueError(f"{len(records)} records where the payload says {count}")
    messages = []
    for rel, (channels, rec) in zip(rels, records):
        msg_id, to, frame = next(unpack_messages(rec))
        position = base + rel - 1 if base and rel else None
        messages.append((len(channels) > 1, position, msg_id, bytes(to), bytes(frame)))
    return origin, seq, messages


def parse_replay(answer) -> tuple[int, list[str], list[tuple[int, bytes]]]:
    """REPLAY_SCRIPT's answer: (0 nothing read, 1 the client's epoch or 2
    another; gaps; [(position, body)])."""
    if not answer or int(answer[0]) == 0:
        return 0, [], []
    count = int(answer[2])
    gaps = [str(g, "utf-8", "surrogatepass") for g in answer[3:3 + count]]
    rest = answer[3 + count:]
    return int(answer[0]), gaps, [(int(rest[k]), rest[k + 1]) for k in range(0, len(rest), 2)]
