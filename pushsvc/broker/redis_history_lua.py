"""The history in Redis: ``history.History``'s rule in Lua, for the scripts of
``redis_scripts``.  No I/O.

Keys (``P`` is ``[redis] prefix``; ``history_keys(first)`` reads these ten
from ``KEYS[first]`` on, in this order; ``ctx.history_keys``):

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
- ``P_history_index`` (sorted set, every score 0): the channels' lists, one
  member ``CHANNEL \\xff POS`` (``POS`` in 16 digits) per position a
  channel lists, so that a channel's list is a range by name (ZRANGEBYLEX),
  oldest first.
- ``P_history_lost`` (hash): channel -> the newest position it let go of
  (its gaps).  A channel listed anew counts ``floor`` as let go of (before,
  unlisted, it did).  ``P_history_emptied`` (sorted set): channel -> the
  position whose going emptied its list; once ``floor`` passes it, the
  channel's mark says no more than ``floor`` and goes (as in ``History``).
  Every key but ``P_history`` expires ``ttl`` plus ``KEEP_MARGIN`` after
  the last message of all.

Declared keys.  Every key a call reads or writes is in its KEYS: the ten
above (and a publish's mailboxes, ``redis_scripts``).  A channel has no key
of its own, so letting go of a message listed by channels the call was not
handed (the oldest, or one of the channel holding the most) touches only
the shared keys: its members in the index, its channels' bytes and marks.
In a Redis Cluster all ten carry the prefix's hash tag: one slot.

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

__all__ = ["HISTORY_LUA"]

KEEP_MARGIN = 2000              # ms the keys outlive the last message's ttl
TICK = 1000                     # ms between the ticks that move the floor by time

# Needs ``str(n)`` (``redis_scripts._PRELUDE``).  ``S`` is the state of one
# script call: the keys ``H``, the limits, ``pos``, ``floor``, ``bytes`` and
# ``live`` (messages kept); ``save`` writes it back.
HISTORY_LUA = """
local function history_keys(first)
  return {hist = KEYS[first], log = KEYS[first + 1], frames = KEYS[first + 2],
          meta = KEYS[first + 3], refs = KEYS[first + 4], chans = KEYS[first + 5],
          ticks = KEYS[first + 6], index = KEYS[first + 7], lost = KEYS[first + 8],
          emptied = KEYS[first + 9], after = first + 10}
end

-- The keys a call declared after the history's, by name without the prefix
-- ('_mail:u' -> its key).
local function declared(H, prefix)
  local names = {}
  for k = H.after, #KEYS do names[string.sub(KEYS[k], #prefix + 1)] = KEYS[k] end
  return names
end

-- A channel's listing of position p in the index, and the bounds of its
-- listings there (a position's digits sort below 0xFF).
local function listing(channel, p)
  return channel .. '\\255' .. string.format('%016d', tonumber(p))
end
local function lower(channel) return '[' .. channel .. '\\255' end
local function upper(channel) return '(' .. channel .. '\\255\\255' end

-- The positions channel lists, oldest first (at most count of them).
local function listed(S, channel, count)
  local found
  if count then
    found = redis.call('ZRANGEBYLEX', S.H.index, lower(channel), upper(channel),
                       'LIMIT', 0, count)
  else
    found = redis.call('ZRANGEBYLEX', S.H.index, lower(channel), upper(channel))
  end
  for k, entry in ipairs(found) do found[k] = str(tonumber(string.sub(entry, #channel + 2))) end
  return found
end

local function listed_count(S, channel)
  return redis.call('ZLEXCOUNT', S.H.index, lower(channel), upper(channel))
end

local function epoch_of(H, candidate)
  if redis.call('HSETNX', H.hist, 'epoch', candidate) == 1 then
    redis.call('HSET', H.hist, 'pos', '0', 'floor', '0', 'bytes', '0')
    redis.call('DEL', H.log, H.frames, H.meta, H.refs, H.chans, H.ticks, H.index, H.lost,
               H.emptied)
    return candidate
  end
  return redis.call('HGET', H.hist, 'epoch')
end

-- The state; with nothing kept (all expired, or let go), every position
-- given so far is let go of, and no channel's mark says more.
local function open(H, prefix, now, ttl, max_n, max_bytes)
  local h = redis.call('HMGET', H.hist, 'pos', 'floor', 'bytes')
  local S = {H = H, prefix = prefix, now = now, ttl = ttl,
             max_n = max_n, max_bytes = max_bytes, keep = str(ttl + KEEP_MARGIN),
             pos = tonumber(h[1]) or 0, floor = tonumber(h[2]) or 0,
             bytes = tonumber(h[3]) or 0, live = redis.call('ZCARD', H.log),
             lost = {}}
  if S.live == 0 and (S.floor ~= S.pos or S.bytes ~= 0) then
    redis.call('DEL', H.frames, H.meta, H.refs, H.chans, H.index, H.lost, H.emptied)
    S.floor, S.bytes = S.pos, 0
  end
  return S
end

-- Written in bulk: cmd key items... (a few thousand at most per command).
local function bulk(cmd, key, items)
  for start = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, start, math.min(start + 999, #items)))
  end
end

-- The state, and the channels' new marks (false: the mark goes).
local function save(S)
  redis.call('HSET', S.H.hist, 'pos', str(S.pos), 'floor', str(S.floor),
             'bytes', str(S.bytes))
  local set, gone = {}, {}
  for channel, p in pairs(S.lost) do
    if p then
      set[#set + 1] = channel
      set[#set + 1] = p
    else
      gone[#gone + 1] = channel
    end
  end
  bulk('HSET', S.H.lost, set)
  bulk('HDEL', S.H.lost, gone)
  if #set > 0 then redis.call('PEXPIRE', S.H.lost, S.keep) end  -- a replay's too
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

-- The newest position channel let go of (0: none).
local function mark_of(S, channel)
  local p = S.lost[channel]
  if p == nil then p = redis.call('HGET', S.H.lost, channel) end
  return tonumber(p or 0) or 0
end

local function free(S, p, size)
  redis.call('HDEL', S.H.frames, p)
  redis.call('HDEL', S.H.meta, p)
  redis.call('ZREM', S.H.log, p)
  S.bytes, S.live = S.bytes - size, S.live - 1
end

-- channel's list lost one (of size bytes); true when it lists nothing now
local function shrunk(S, channel, size)
  if tonumber(redis.call('ZINCRBY', S.H.chans, -size, channel)) <= 0 then
    redis.call('ZREM', S.H.chans, channel)
    return true
  end
  return false
end

-- The oldest position off channel's list; its message goes when no channel
-- lists it any more.  A list emptied so waits in emptied until the floor
-- passes its mark.
local function unlist(S, channel)
  local p = listed(S, channel, 1)[1]
  if not p then
    redis.call('ZREM', S.H.chans, channel)
    return
  end
  redis.call('ZREM', S.H.index, listing(channel, p))
  mark(S, channel, p)
  local _, size, names = meta_of(S, p)
  if not size then return end
  if shrunk(S, channel, size) then redis.call('ZADD', S.H.emptied, p, channel) end
  if not string.find(names, '\\255', 1, true)  -- its one channel
     or redis.call('HEXISTS', S.H.refs, p) == 0 then  -- the last of several
    free(S, p, size)
  elseif redis.call('HINCRBY', S.H.refs, p, -1) < 2 then
    redis.call('HDEL', S.H.refs, p)
  end
end

-- The floor moved: the marks of the channels emptied before it, not listed
-- anew, say no more than it.
local function settle(S)
  local names = redis.call('ZRANGEBYSCORE', S.H.emptied, '-inf', S.floor)
  if #names == 0 then return end
  for _, channel in ipairs(names) do
    if not redis.call('ZSCORE', S.H.chans, channel) and mark_of(S, channel) <= S.floor then
      S.lost[channel] = false
    end
  end
  redis.call('ZREMRANGEBYSCORE', S.H.emptied, '-inf', S.floor)
end

-- The oldest kept message goes, from every channel that lists it (its
-- oldest); everything up to it is let go of.  With limit (a time): all
-- those of then or before, and the ticks of then or before move the floor.
local function drop_oldest(S, limit)
  local before = S.floor
  while true do
    local first = redis.call('ZRANGE', S.H.log, 0, 0)[1]
    if not first then break end
    local time, size, channels = meta_of(S, first)
    if limit and time and time > limit then break end
    if tonumber(first) > S.floor then S.floor = tonumber(first) end
    for channel in string.gmatch(channels or '', '[^\\255]+') do
      if redis.call('ZREM', S.H.index, listing(channel, first)) == 1 then
        if shrunk(S, channel, size) then
          S.lost[channel] = false  -- unlisted: the floor says it all
        else
          mark(S, channel, first)
        end
      end
    end
    redis.call('HDEL', S.H.refs, first)
    free(S, first, size or 0)
    if not limit then break end
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
  if S.floor > before then settle(S) end
end

local function expire(S)
  drop_oldest(S, S.now - S.ttl)
end

-- Past max_bytes, one message of the others goes (p was just kept on channels).
local function make_room(S, channels, p)
  local share = S.max_bytes / math.max(1, redis.call('ZCARD', S.H.chans))
  for _, channel in ipairs(channels) do
    local held = tonumber(redis.call('ZSCORE', S.H.chans, channel))
    if held and held > share and listed_count(S, channel) > 1 then
      return unlist(S, channel)
    end
  end
  local top = redis.call('ZREVRANGE', S.H.chans, 0, #channels, 'WITHSCORES')
  for k = 1, #top, 2 do
    if tonumber(top[k + 1]) <= share then break end
    if listed(S, top[k], 1)[1] ~= p then
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
    redis.call('ZADD', S.H.index, 0, listing(channel, p))
    -- listed anew: what went before went for it too
    if tonumber(redis.call('ZINCRBY', S.H.chans, size, channel)) == size
       and S.floor > mark_of(S, channel) then
      mark(S, channel, str(S.floor))
    end
    if listed_count(S, channel) > S.max_n then unlist(S, channel) end
  end
  while S.bytes > S.max_bytes and S.live > 1 do make_room(S, channels, p) end
end

-- After a call that kept messages: the state, this second's tick, and the
-- keys' expiry.
local function close(S)
  save(S)
  tick(S)
  local H = S.H
  for _, key in ipairs({H.log, H.frames, H.meta, H.refs, H.chans, H.ticks, H.index, H.lost,
                        H.emptied}) do
    redis.call('PEXPIRE', key, S.keep)
  end
end
""".replace("OVERHEAD", str(OVERHEAD)).replace("KEEP_MARGIN", str(KEEP_MARGIN)).replace(
    "TICK", str(TICK))

