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
  channels; an engine subscribed on several of them gets it once (the
  facade drops the later copies by id);
- one shard away degrades its channels only: the others' messages, replays
  and mailboxes go on; ``/healthz`` names the shard;
- commands and the member registry go through shard 0 (every engine is a
  member there too).

Resume (issue 15, point 3, not done yet).  Each shard numbers its own kept
messages and has its own epoch, and order holds per shard only.  A client's
cursor must become one position per shard: the smallest wire change is
``welcome``'s ``epoch`` as the shards' epochs joined by ``~`` (one string,
as now; equal to today's with one shard), ``msg`` frames carrying
``"shard": i`` beside ``pos`` when N > 1, and ``resume``'s ``since`` either
a number (one shard) or a list of N numbers (the last ``pos`` the client got
from each shard, 0 for none).  The server would replay each shard from its
own ``since`` (``History.replay`` per shard, merged per channel), and report
gaps only for channels of the shards whose epoch part differs.  Until then a
sharded broker has no epoch: ``welcome`` carries none, and a ``resume``
answers every channel as a gap.
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["jump_hash", "shard_of", "split", "urls_of"]

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
