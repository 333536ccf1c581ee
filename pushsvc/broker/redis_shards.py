"""Channels spread over several independent Redis instances (issue 15).  No I/O.

Design.  ``[redis] urls`` (or ``--redis`` with several URLs, separated by
spaces) names N instances, the *shards*, in an order that must be the same
on every node.  Each channel lives on one shard, ``shard_of(channel, N)``:
Lamping and Veach's jump consistent hash of the first 8 bytes of the
channel's BLAKE2b digest, so that growing N to N + 1 moves about 1 / (N + 1)
of the channels, all to the new shard, and every process of every node
agrees without talking.  On its shard a channel has its subscription, its
``PUBLISH``, its history list and mark, and for ``user:U`` the mailbox of
``U``; each shard is a whole ``RedisBroker`` of its own (two connections,
reconnect and resubscribe, history, members and queue), composed by
``redis_sharded.ShardedRedisBroker``:

- a message on channels of several shards is published on each with those
  channels; each session gets it once, from the first copy of its own
  channels' shards (below);
- one shard away degrades its channels only: the others' messages, replays
  and mailboxes go on; ``/healthz`` names the shard;
- commands and the member registry go through shard 0 (every engine is a
  member there too).

Resume (issue 15, point 3).  Each shard numbers its own kept messages and
has its own epoch; order holds per shard.  The wire (``cursor``): the
welcome's ``epoch`` is the shards' epochs joined by ``~``; a ``msg`` frame's
``pos`` is tagged ``"shard": i``; ``resume``'s ``since`` is one position per
shard.  Two rules make that exact:

- a copy from shard i goes only to the sessions its channels *on shard i*
  select (the first copy to come for each; ``redis_sharded``), so a client
  that holds a message tagged i is on one of its channels there, and its
  position on i says which of that shard's messages it had;
- ``merge`` replays each shard from the client's position there (from 0 with
  every channel a gap where the epoch part changed), drops a message another
  shard shows the client had (on one of its channels there, with no gap, not
  replayed: so at or below the client's position), and writes the rest once
  each, in an order that keeps every shard's (so every channel's).

A shard that cannot be read answers its channels ``unavailable``; the
others replay.
"""

from __future__ import annotations

import json
from hashlib import blake2b

from ..cursor import with_shard
from ..protocol import Address
from ..routing import channels as route

__all__ = ["interleave", "jump_hash", "merge", "shard_of", "split", "urls_of"]

_JUMP = 2862933555777941757
_MASK = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """The bucket in ``range(buckets)`` of 64-bit ``key`` (jump consistent hash)."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * _JUMP + 1) & _MASK
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_of(channel: str, shards: int) -> int:
    """The shard of engine channel ``channel`` among ``shards``."""
    if shards == 1:
        return 0
    digest = blake2b(channel.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), shards)


def split(channels, shards: int) -> dict[int, list[str]]:
    """``channels`` by shard, each shard's in their given order."""
    out: dict[int, list[str]] = {}
    for channel in channels:
        out.setdefault(shard_of(channel, shards), []).append(channel)
    return out


def urls_of(value: str) -> list[str]:
    """The URLs of a ``--redis`` value: one, or several separated by spaces."""
    return value.split()


def merge(answers: dict, asked: dict[int, list[str]]):
    """One replay from the shards': ``answers`` by shard, each ``(messages,
    gaps)`` as ``RedisBroker.replay`` gives them or None (not read), for the
    channels ``asked`` of it.  Returns (messages, gaps, channels unavailable,
    ids the client had); messages as ``(id, frame)``, each frame tagged with
    the shard it is written from."""
    present: dict[str, set[int]] = {}
    frames: dict[str, bytes] = {}
    for n, answer in answers.items():
        for msg_id, frame in answer[0] if answer else ():
            present.setdefault(msg_id, set()).add(n)
            frames.setdefault(msg_id, frame)
    exact = {n: set(asked[n]).difference(answer[1])
             for n, answer in answers.items() if answer is not None}
    had = set()
    for msg_id, frame in frames.items():
        to = route(Address.from_json(json.loads(frame)["to"]))
        if any(n not in present[msg_id] and not to.isdisjoint(channels)
               for n, channels in exact.items()):
            had.add(msg_id)
    sequences = {n: [(i, f) for i, f in answer[0] if i not in had]
                 for n, answer in answers.items() if answer is not None}
    messages = [(msg_id, with_shard(frame, n)) for n, msg_id, frame in interleave(sequences)]
    gaps = sorted({c for answer in answers.values() if answer for c in answer[1]})
    unavailable = sorted(c for n, answer in answers.items() if answer is None
                         for c in asked[n])
    return messages, gaps, unavailable, had


def interleave(sequences: dict[int, list]) -> list:
    """The items ``(id, x)`` of several sequences as one, each id once as
    ``(sequence, id, x)``: an id comes when it heads every sequence holding
    it (the lowest such sequence's), so each sequence's order holds; where
    they disagree, the lowest sequence's head comes first."""
    holders: dict[str, list[int]] = {}
    for n, items in sequences.items():
        for msg_id, _ in items:
            holders.setdefault(msg_id, []).append(n)
    heads = dict.fromkeys(sequences, 0)
    done: set[str] = set()
    out = []

    def head(n):
        items, k = sequences[n], heads[n]
        while k < len(items) and items[k][0] in done:
            k += 1
        heads[n] = k
        return items[k][0] if k < len(items) else None

    while True:
        live = [n for n in sorted(sequences) if head(n) is not None]
        if not live:
            return out
        n = next((n for n in live
                  if all(head(m) == head(n) for m in holders[head(n)])), live[0])
        msg_id, x = sequences[n][heads[n]]
        out.append((n, msg_id, x))
        done.add(msg_id)
