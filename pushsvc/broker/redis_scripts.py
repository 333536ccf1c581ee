"""What a ``RedisBroker`` runs inside Redis, and the bytes it exchanges there.
No I/O.

The Lua scripts run atomically: ``PUBLISH_SCRIPT`` numbers, keeps and
publishes one call's messages (and keeps the stored ones of offline users in
their mailboxes), ``REPLAY_SCRIPT`` reads what a resuming session missed,
``TAKE_MAIL_SCRIPT`` empties a mailbox, ``HEARTBEAT_SCRIPT`` and
``MEMBERS_SCRIPT`` keep the member registry.  The Python functions build
their arguments and read their answers and the payloads subscribers get.

The history in Redis is ``history.History`` kept in these keys (``P`` is
``[redis] prefix``):

- ``P_history`` (hash): ``epoch`` (the numbering's name, set once with
  HSETNX and a fresh token: a Redis that lost its data gets a new one),
  ``pos`` (the last position given), ``floor`` (positions up to it are let go
  of), ``bytes`` (what the kept frames count), and the mailbox's byte
  windows (``mwin``, ``m0``, ``m1``, ``m2``).  No expiry.
- ``P_history_log`` (list): ``"TIME SIZE"`` of each kept message, oldest
  first: positions ``floor + 1`` to ``pos``; ``P_history_frames`` (hash):
  position -> ``ID \\xff FRAME`` (the frame without ``pos``; a frame is kept
  once however many channels it went to).  Messages go from the front when
  older than ``ttl``, or while ``bytes`` passes ``max_bytes`` (all but the
  newest): ``floor`` follows.
- ``P_h:CHANNEL`` (list): the positions of the channel's kept messages; at
  most ``max_per_channel`` (the oldest go first).  ``P_hl:CHANNEL``
  (string): the newest position the channel let go of (its gaps).  A
  channel listed anew counts ``floor`` as let go of (before, unlisted, it
  did).  Both expire ``ttl`` plus ``KEEP_MARGIN`` after the channel's last
  message; the log and frames likewise after the last message of all.
- ``P_mail:USER`` (list): ``"TIME ID \\xff FRAME"`` kept for an offline user;
  at most ``max_per_channel``, for ``ttl``.

0xFF never occurs in UTF-8, so it separates an id from its frame.
"""

from __future__ import annotations

import struct

from ..history import OVERHEAD
from ..wire.records import unpack_messages, unpack_publishes

MAGIC = b"PS2"
HEAD = struct.Struct("!3sH")    # magic, length of the publisher's id
SEQ = struct.Struct("!Q")       # the number of the publisher's script call
BASE = struct.Struct("!d")      # the call's first position (0: none), written by the script
REL = struct.Struct("!I")       # a count, then per record 1 + its index among the call's
                                # kept messages (its position is BASE + REL - 1), or 0
SEPARATOR = b"\xff"             # between an id and its frame
KEEP_MARGIN = 2000              # ms a channel's list outlives its last message's ttl

# -- Lua ----------------------------------------------------------------------

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function str(n) return string.format('%d', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# The history's numbering and what it lets go of; ``hist``, ``log`` and
# ``frames`` are the three keys above.
_HISTORY = """
local function epoch_of(hist, log, frames, candidate)
  if redis.call('HSETNX', hist, 'epoch', candidate) == 1 then
    redis.call('HSET', hist, 'pos', '0', 'floor', '0', 'bytes', '0')
    redis.call('DEL', log, frames)
    return candidate
  end
  return redis.call('HGET', hist, 'epoch')
end

local function first_of(log)
  local entry = redis.call('LINDEX', log, 0)
  local space = string.find(entry, ' ', 1, true)
  return tonumber(string.sub(entry, 1, space - 1)), tonumber(string.sub(entry, space + 1))
end

-- The state after letting go of what is older than ttl (ms) and, past
-- max_bytes, of the oldest but the newest: pos, floor, bytes, count.
local function expire(hist, log, frames, now, ttl, max_bytes)
  local h = redis.call('HMGET', hist, 'pos', 'floor', 'bytes')
  local pos, floor, bytes = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0
  local n = redis.call('LLEN', log)
  if n ~= pos - floor then  -- expired (or evicted) whole: nothing kept is left
    redis.call('DEL', log, frames)
    floor, bytes, n = pos, 0, 0
  end
  while n > 0 do
    local time, size = first_of(log)
    if time > now - ttl and (bytes <= max_bytes or n == 1) then break end
    redis.call('LPOP', log)
    floor = floor + 1
    redis.call('HDEL', frames, str(floor))
    bytes, n = bytes - size, n - 1
  end
  return pos, floor, bytes, n
end
"""

# KEYS: history, log, frames.  ARGV: ttl (ms, 0 = keep nothing), max_per_channel,
# max_bytes, an epoch candidate, the prefix, the payload head, K, S; then K kept
# messages as (body, channel count, channels...), S stored messages as (body, user
# count, users...), then (Redis channel, payload body) pairs.  Numbers and keeps
# the K messages (positions base .. base + K - 1, in order), keeps each stored one
# for each of its users that nobody subscribes to, and PUBLISHes each payload as
# head .. base .. body.  Returns {base or 0, epoch or false}.
PUBLISH_SCRIPT = _PRELUDE + _HISTORY + """
local ttl, max_n, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix, head = ARGV[5], ARGV[6]
local kept, stored = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local i = 9
local base, epoch = 0, false
if kept > 0 then
  epoch = epoch_of(KEYS[1], KEYS[2], KEYS[3], ARGV[4])
  local pos, floor, bytes, n = expire(KEYS[1], KEYS[2], KEYS[3], now, ttl, max_bytes)
  base = pos + 1
  local lost, touched = {}, {}
  local time = str(now) .. ' '
  for _ = 1, kept do
    local body, count = ARGV[i], tonumber(ARGV[i + 1])
    local size = #body + OVERHEAD
    pos = pos + 1
    local p = str(pos)
    redis.call('HSET', KEYS[3], p, body)
    redis.call('RPUSH', KEYS[2], time .. str(size))
    bytes, n = bytes + size, n + 1
    for j = i + 2, i + 1 + count do
      local channel = ARGV[j]
      local key = prefix .. '_h:' .. channel
      local len = redis.call('RPUSH', key, p)
      if not touched[channel] then
        touched[#touched + 1] = channel
        touched[channel] = true
        if len == 1 and floor > 0 then  -- listed anew: what went before went for it too
          local was = tonumber(redis.call('GET', prefix .. '_hl:' .. channel)) or 0
          if floor > was then lost[channel] = floor end
        end
      end
      if len > max_n then lost[channel] = tonumber(redis.call('LPOP', key)) end
    end
    i = i + 2 + count
  end
  while bytes > max_bytes and n > 1 do  -- past the byte budget the oldest go
    local _, size = first_of(KEYS[2])
    redis.call('LPOP', KEYS[2])
    floor = floor + 1
    redis.call('HDEL', KEYS[3], str(floor))
    bytes, n = bytes - size, n - 1
  end
  redis.call('HSET', KEYS[1], 'pos', str(pos), 'floor', str(floor), 'bytes', str(bytes))
  local keep = str(ttl + KEEP_MARGIN)
  redis.call('PEXPIRE', KEYS[2], keep)
  redis.call('PEXPIRE', KEYS[3], keep)
  for _, channel in ipairs(touched) do
    local key = prefix .. '_h:' .. channel
    while true do  -- positions let go of by age or memory leave the channel too
      local first = redis.call('LINDEX', key, 0)
      if not first or tonumber(first) > floor then break end
      redis.call('LPOP', key)
      lost[channel] = tonumber(first)
    end
    redis.call('PEXPIRE', key, keep)
    if lost[channel] then
      redis.call('SET', prefix .. '_hl:' .. channel, str(lost[channel]), 'PX', keep)
    end
  end
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
  for _ = 1, stored do
    local body, count = ARGV[i], tonumber(ARGV[i + 1])
    local size = #body + OVERHEAD
    for j = i + 2, i + 1 + count do
      local user = ARGV[j]
      local online = redis.call('PUBSUB', 'NUMSUB', prefix .. 'user:' .. user)[2]
      if online == 0 and m0 + m1 + m2 + size <= max_bytes then
        m0 = m0 + size
        local key = prefix .. '_mail:' .. user
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
""".replace("OVERHEAD", str(OVERHEAD)).replace("KEEP_MARGIN", str(KEEP_MARGIN))

# KEYS: history, log, frames.  ARGV: ttl (ms), max_bytes, prefix, epoch, since,
# channels...  The kept messages of the channels after since, each once, by
# position, and the channels that let go of one after since: {1, epoch, gap
# count, gaps..., position, body, ...}; for another epoch the same from
# position 0, with 2 first; {0, epoch or false} for a position never given or
# no history.
REPLAY_SCRIPT = _PRELUDE + _HISTORY + """
local ttl, max_bytes, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local since = tonumber(ARGV[5])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {0, false} end
local pos, floor, bytes = expire(KEYS[1], KEYS[2], KEYS[3], now_ms(), ttl, max_bytes)
redis.call('HSET', KEYS[1], 'floor', str(floor), 'bytes', str(bytes))
local other = epoch ~= ARGV[4]
if other then since = 0 elseif since > pos then return {0, epoch} end
local wanted, gaps = {}, {}
for j = 6, #ARGV do
  local channel = ARGV[j]
  local listed = redis.call('LRANGE', prefix .. '_h:' .. channel, 0, -1)
  local lost = floor
  if #listed > 0 then
    lost = tonumber(redis.call('GET', prefix .. '_hl:' .. channel)) or 0
    for _, p in ipairs(listed) do
      p = tonumber(p)
      if p <= floor then
        if p > lost then lost = p end
      elseif p > since then
        wanted[p] = true
      end
    end
  end
  if lost > since then gaps[#gaps + 1] = channel end
end
local positions = {}
for p in pairs(wanted) do positions[#positions + 1] = p end
table.sort(positions)
local out = {other and 2 or 1, epoch, #gaps}
for _, channel in ipairs(gaps) do out[#out + 1] = channel end
for start = 1, #positions, 1000 do
  local fields = {}
  for k = start, math.min(start + 999, #positions) do fields[#fields + 1] = str(positions[k]) end
  local bodies = redis.call('HMGET', KEYS[3], unpack(fields))
  for k, field in ipairs(fields) do
    if bodies[k] then
      out[#out + 1] = field
      out[#out + 1] = bodies[k]
    end
  end
end
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

# KEYS: members, node claim, history, log, frames; ARGV: member id, ttl (ms), node
# token, "1" to register, an epoch candidate.  Claims the node name unless
# another process holds it, registers the member, forgets expired ones, makes
# sure the history has an epoch; returns {claimed, holder, live members, epoch}.
HEARTBEAT_SCRIPT = _PRELUDE + _HISTORY + """
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
        epoch_of(KEYS[3], KEYS[4], KEYS[5], ARGV[5])}
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


# -- the bytes ------------------------------------------------------------------

def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


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
