"""The history in Redis: ``history.History``'s rule in Lua, for the scripts of
``redis_scripts``.  No I/O.

Keys (``P`` is ``[redis] prefix``; ``history_keys(first)`` reads the first
seven from ``KEYS[first]`` on, in this order; a call declares after them the
lists and marks of its own channels, ``channel_keys``):

- ``P_history`` (hash, no expiry): ``epoch`` (the numbering's name, set once
  with HSETNX and a fresh token: a Redis that lost its data gets a new one),
  ``pos`` (the last position given), ``floor`` (every position up to it is
  let go of), ``bytes`` (what the kept messages count), and the mailbox's
  byte windows (``mwin``, ``m0``, ``m1``, ``m2``).
- ``P_history_log`` (sorted set): the positions of the kept messages, scored
  by position; ``P_history_frames`` (hash): position -> ``ID \\xff FRAME``
  (the frame without ``pos``, once however many channels it went to);
  ``P_history_meta`` (hash): position -> ``TIME SIZE CHANNELS`` (channels
  joined by 0xFF); ``P_history_refs`` (hash): position -> how many channels
  list it, for those listed by two or more.
- ``P_history_chans`` (sorted set): channel -> the bytes its list holds (a
  message counts in full for each of its channels); its size is the number
  of channels listed.
- ``P_history_ticks`` (list): ``TIME POS``, at most one per second: every
  position up to ``POS`` was given at ``TIME`` or before, so once ``TIME``
  is older than ``ttl``, ``floor`` reaches ``POS`` (messages let go of early
  leave no other trace of their time).
- ``P_h:CHANNEL`` (list): the positions the channel lists, oldest first;
  ``P_hl:CHANNEL`` (string): the newest position it let go of (its gaps).
  A channel listed anew counts ``floor`` as let go of (before, unlisted, it
  did).  Both expire ``ttl`` plus ``KEEP_MARGIN`` after the channel's last
  message; the other keys but ``P_history`` after the last message of all.

Declared keys.  A call passes in KEYS every key it reads or writes that it
can name beforehand: the seven above, and ``P_h:C`` and ``P_hl:C`` of each
channel ``C`` it keeps a message on or replays (``ckey`` finds them by name).
The one exception is the channels of the messages a call lets go of (the
oldest, or one of the channel holding the most): they are read from the
kept messages inside the call, so no caller can know them, and ``ckey``
names their keys with the prefix, which holds the hash tag in a Redis
Cluster: the same slot as the declared keys.  (Redis 7.0 runs such a call;
in a cluster it refuses it only while the slot migrates, and
``redis_cluster_links`` declares a key that never exists so that Redis then
refuses the whole call before it runs, never half of it.)

The rule, as ``History``'s: a message is let go when older than ``ttl``
(oldest first: ``floor`` follows), or as soon as no channel lists it any
more (a channel lists at most ``max_per_channel``).  While the kept
messages count more than ``max_bytes`` (a message counts its body, its
channels and ``OVERHEAD``), one of them is let go: the oldest of one of the
new message's channels that holds more than its share (``max_bytes`` / the
channels listed), else the oldest of the channel holding the most, if that
is more than its share, else the oldest of all.  Each step costs a few
commands per channel of the message it lets go, and each message is kept
and let go once: a publish costs what it keeps, plus what it lets go.
"""

from __future__ import annotations

from ..history import OVERHEAD

__all__ = ["HISTORY_LUA", "channel_keys"]

KEEP_MARGIN = 2000              # ms a channel's list outlives its last message's ttl
TICK = 1000                     # ms between the ticks that move the floor by time

# Needs ``str(n)`` (``redis_scripts._PRELUDE``).  ``S`` is the state of one
# script call: the keys ``H``, the limits, ``pos``, ``floor``, ``bytes`` and
# ``live`` (messages kept); ``save`` writes it back.
HISTORY_LUA = """
local function history_keys(first)
  return {hist = KEYS[first], log = KEYS[first + 1], frames = KEYS[first + 2],
          meta = KEYS[first + 3], refs = KEYS[first + 4], chans = KEYS[first + 5],
          ticks = KEYS[first + 6], after = first + 7}
end

-- The keys a call declared after the history's, by name without the prefix
-- ('_h:group:g' -> its key).
local function declared(H, prefix)
  local names = {}
  for k = H.after, #KEYS do names[string.sub(KEYS[k], #prefix + 1)] = KEYS[k] end
  return names
end

-- Channel's list (kind '_h:') or mark ('_hl:'): declared for the call's own
-- channels; a channel of a message the call lets go of is named here, in
-- the prefix's slot.
local function ckey(S, kind, channel)
  return S.names[kind .. channel] or (S.prefix .. kind .. channel)
end

local function epoch_of(H, candidate)
  if redis.call('HSETNX', H.hist, 'epoch', candidate) == 1 then
    redis.call('HSET', H.hist, 'pos', '0', 'floor', '0', 'bytes', '0')
    redis.call('DEL', H.log, H.frames, H.meta, H.refs, H.chans, H.ticks)
    return candidate
  end
  return redis.call('HGET', H.hist, 'epoch')
end

-- The state; with nothing kept (all expired, or let go), every position
-- given so far is let go of.
local function open(H, prefix, now, ttl, max_n, max_bytes)
  local h = redis.call('HMGET', H.hist, 'pos', 'floor', 'bytes')
  local S = {H = H, prefix = prefix, names = declared(H, prefix), now = now, ttl = ttl,
             max_n = max_n, max_bytes = max_bytes, keep = str(ttl + KEEP_MARGIN),
             pos = tonumber(h[1]) or 0, floor = tonumber(h[2]) or 0,
             bytes = tonumber(h[3]) or 0, live = redis.call('ZCARD', H.log),
             lost = {}, touched = {}}
  if S.live == 0 and (S.floor ~= S.pos or S.bytes ~= 0) then
    redis.call('DEL', H.frames, H.meta, H.refs, H.chans)
    S.floor, S.bytes = S.pos, 0
  end
  return S
end

-- The state, and the channels' new marks.
local function save(S)
  redis.call('HSET', S.H.hist, 'pos', str(S.pos), 'floor', str(S.floor),
             'bytes', str(S.bytes))
  for channel, p in pairs(S.lost) do
    redis.call('SET', ckey(S, '_hl:', channel), p, 'PX', S.keep)
  end
end

-- Positions up to S.pos were given by now: this second's tick says so.
local function tick(S)
  local entry = str(S.now) .. ' ' .. str(S.pos)
  local last = redis.call('LINDEX', S.H.ticks, -1)
  if last and math.floor(tonumber(string.match(last, '^%d+')) / TICK)
              == math.floor(S.now / TICK) then
    redis.call('LSET', S.H.ticks, -1, entry)
  else
    redis.call('RPUSH', S.H.ticks, entry)
  end
end

-- time, size, channels (joined) of kept message p; nil if not kept
local function meta_of(S, p)
  local m = redis.call('HGET', S.H.meta, p)
  if not m then return nil end
  local a = string.find(m, ' ', 1, true)
  local b = string.find(m, ' ', a + 1, true)
  return tonumber(string.sub(m, 1, a - 1)), tonumber(string.sub(m, a + 1, b - 1)),
         string.sub(m, b + 1)
end

-- channel let go of position p (written by save)
local function mark(S, channel, p)
  S.lost[channel] = p
end

local function free(S, p, size)
  redis.call('HDEL', S.H.frames, p)
  redis.call('HDEL', S.H.meta, p)
  redis.call('ZREM', S.H.log, p)
  S.bytes, S.live = S.bytes - size, S.live - 1
end

-- channel's list lost its front (of size bytes): at 0 it lists nothing
local function shrunk(S, channel, size)
  if tonumber(redis.call('ZINCRBY', S.H.chans, -size, channel)) <= 0 then
    redis.call('ZREM', S.H.chans, channel)
  end
end

-- The oldest position off channel's list; its message goes when no channel
-- lists it any more.
local function unlist(S, channel)
  local p = redis.call('LPOP', ckey(S, '_h:', channel))
  if not p then
    redis.call('ZREM', S.H.chans, channel)
    return
  end
  mark(S, channel, p)
  local _, size, names = meta_of(S, p)
  if not size then return end
  shrunk(S, channel, size)
  if not string.find(names, '\\255', 1, true)  -- its one channel
     or redis.call('HEXISTS', S.H.refs, p) == 0 then  -- the last of several
    free(S, p, size)
  elseif redis.call('HINCRBY', S.H.refs, p, -1) < 2 then
    redis.call('HDEL', S.H.refs, p)
  end
end

-- The oldest kept message goes, from every channel that lists it (their
-- front); everything up to it is let go of.  With limit (a time): all
-- those of then or before, and the ticks of then or before move the floor.
local function drop_oldest(S, limit)
  while true do
    local first = redis.call('ZRANGE', S.H.log, 0, 0)[1]
    if not first then break end
    local time, size, channels = meta_of(S, first)
    if limit and time and time > limit then break end
    for channel in string.gmatch(channels or '', '[^\\255]+') do
      local key = ckey(S, '_h:', channel)
      local front = redis.call('LINDEX', key, 0)
      if front == first then
        redis.call('LPOP', key)
        mark(S, channel, first)
        shrunk(S, channel, size)
      elseif not front then
        redis.call('ZREM', S.H.chans, channel)
      end
    end
    redis.call('HDEL', S.H.refs, first)
    free(S, first, size or 0)
    if tonumber(first) > S.floor then S.floor = tonumber(first) end
    if not limit then return end
  end
  while limit do
    local t = redis.call('LINDEX', S.H.ticks, 0)
    if not t then break end
    local space = string.find(t, ' ', 1, true)
    if tonumber(string.sub(t, 1, space - 1)) > limit then break end
    redis.call('LPOP', S.H.ticks)
    local p = tonumber(string.sub(t, space + 1))
    if p > S.floor then S.floor = p end
  end
end

local function expire(S)
  drop_oldest(S, S.now - S.ttl)
end

-- Past max_bytes, one message of the others goes (p was just kept on channels).
local function make_room(S, channels, p)
  local share = S.max_bytes / math.max(1, redis.call('ZCARD', S.H.chans))
  for _, channel in ipairs(channels) do
    local held = tonumber(redis.call('ZSCORE', S.H.chans, channel))
    if held and held > share and redis.call('LLEN', ckey(S, '_h:', channel)) > 1 then
      return unlist(S, channel)
    end
  end
  local top = redis.call('ZREVRANGE', S.H.chans, 0, #channels, 'WITHSCORES')
  for k = 1, #top, 2 do
    if tonumber(top[k + 1]) <= share then break end
    if redis.call('LINDEX', ckey(S, '_h:', top[k]), 0) ~= p then
      return unlist(S, top[k])
    end
  end
  drop_oldest(S)
end

-- Keep a message (body) on channels: the next position.
local function keep(S, body, channels)
  S.pos = S.pos + 1
  local p = str(S.pos)
  local names = table.concat(channels, '\\255')
  local size = #body + #names + OVERHEAD
  redis.call('HSET', S.H.frames, p, body)
  redis.call('HSET', S.H.meta, p, str(S.now) .. ' ' .. str(size) .. ' ' .. names)
  redis.call('ZADD', S.H.log, S.pos, p)
  if #channels > 1 then redis.call('HSET', S.H.refs, p, #channels) end
  S.bytes, S.live = S.bytes + size, S.live + 1
  for _, channel in ipairs(channels) do
    local len = redis.call('RPUSH', ckey(S, '_h:', channel), p)
    -- listed anew: what went before went for it too
    if len == 1 and S.floor > (tonumber(S.lost[channel] or
                                        redis.call('GET', ckey(S, '_hl:', channel))) or 0) then
      mark(S, channel, str(S.floor))
    end
    S.touched[channel] = true
    redis.call('ZINCRBY', S.H.chans, size, channel)
    if len > S.max_n then unlist(S, channel) end
  end
  while S.bytes > S.max_bytes and S.live > 1 do make_room(S, channels, p) end
end

-- After a call that kept messages: the state, this second's tick, and the
-- keys' expiry.
local function close(S)
  save(S)
  tick(S)
  for channel in pairs(S.touched) do
    redis.call('PEXPIRE', ckey(S, '_h:', channel), S.keep)
    redis.call('PEXPIRE', ckey(S, '_hl:', channel), S.keep)
  end
  local H = S.H
  for _, key in ipairs({H.log, H.frames, H.meta, H.refs, H.chans, H.ticks}) do
    redis.call('PEXPIRE', key, S.keep)
  end
end
""".replace("OVERHEAD", str(OVERHEAD)).replace("KEEP_MARGIN", str(KEEP_MARGIN)).replace(
    "TICK", str(TICK))


def channel_keys(prefix: bytes, channels) -> list[bytes]:
    """The keys a call declares for its own ``channels`` (engine channels,
    each once): each one's list and mark, ``P_h:C`` and ``P_hl:C``."""
    keys = []
    for channel in channels:
        name = channel.encode("utf-8", "surrogatepass")
        keys += [prefix + b"_h:" + name, prefix + b"_hl:" + name]
    return keys
