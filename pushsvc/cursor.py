"""Where a resuming client is in the history, one position per shard.  No I/O.

With one history (no Redis, or one Redis), ``welcome``'s ``epoch`` names it
and a ``msg`` frame's ``pos`` numbers the message in it; a ``resume`` sends
back the last ``pos`` and its epoch.  With N Redis shards (``redis_shards``)
each shard numbers its own messages: ``epoch`` is the N shards' epochs
joined by ``~``, a ``msg`` frame carries ``"shard": i`` right after its
``pos`` (the shard the position is on), and ``resume``'s ``since`` is a list
of N positions, the last ``pos`` the client got from each shard (0 for
none).  One shard's wire stays as it was: a number, no ``shard``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MAX_SHARDS", "Replayed", "SEPARATOR", "cursor", "join_epochs", "resume_problem", "shard_tag",
           "with_shard"]

SEPARATOR = "~"
_MSG_POS = b'{"op":"msg","pos":'
_SHARD = b'"shard":'


def join_epochs(epochs) -> str | None:
    """The ``epoch`` of a welcome from the shards' own (None for one not
    known yet gives an empty part); None when no shard has one."""
    epochs = list(epochs)
    if all(epoch is None for epoch in epochs):
        return None
    return SEPARATOR.join(epoch or "" for epoch in epochs)


def cursor(since, epoch: str, current: str | None) -> list[int | None]:
    """Per part of the ``current`` epoch, the position a client's resume
    (``since``: a number or one per part of its ``epoch``) had there, or
    None where that part is not the client's (an epoch changed, a shard
    never seen, or another number of shards)."""
    if current is None:
        return [None]
    parts = current.split(SEPARATOR)
    theirs = epoch.split(SEPARATOR)
    positions = list(since) if isinstance(since, (list, tuple)) else [since]
    if len(theirs) != len(parts) or len(positions) != len(parts):
        return [None] * len(parts)
    return [position if mine and mine == part else None
            for position, mine, part in zip(positions, theirs, parts)]


def with_shard(frame: bytes, shard: int) -> bytes:
    """A ``msg`` frame with a ``pos`` tagged with the shard it counts on
    (the frame as it is when it has no ``pos``)."""
    if not frame.startswith(_MSG_POS):
        return frame
    end = frame.index(b",", len(_MSG_POS)) + 1
    return b'%s"shard":%d,%s' % (frame[:end], shard, frame[end:])


def shard_tag(frame: bytes) -> int:
    """The shard a ``msg`` frame's ``pos`` counts on (0 when untagged)."""
    if not frame.startswith(_MSG_POS):
        return 0
    start = frame.index(b",", len(_MSG_POS)) + 1
    if not frame.startswith(_SHARD, start):
        return 0
    start += len(_SHARD)
    return int(frame[start:frame.index(b",", start)])


MAX_SHARDS = 256  # positions a resume may name (as [redis] cluster_shards at most)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def resume_problem(since, epoch, max_part: int) -> str | None:
    """What is wrong with a ``resume`` frame's ``since`` and ``epoch`` (None:
    nothing); each part of ``epoch`` is at most ``max_part`` long."""
    if isinstance(since, list):
        if not 1 <= len(since) <= MAX_SHARDS or not all(map(_whole, since)):
            return (f"'since' must be the last 'pos' received, a whole number >= 0, or "
                    f"one per shard (at most {MAX_SHARDS})")
    elif not _whole(since):
        return "'since' must be the last 'pos' received, a whole number >= 0"
    parts = len(since) if isinstance(since, list) else 1
    if (not isinstance(epoch, str) or len(epoch) > max_part * parts
            or epoch.count(SEPARATOR) != parts - 1):
        return "'epoch' must be the epoch of the welcome" + (
            f" (with {parts} parts joined by '{SEPARATOR}', as 'since' has {parts} positions)"
            if parts > 1 else "")
    return None


class Replayed(NamedTuple):
    """What a replay answers: the messages ``(id, frame)`` in order, the
    channels with a gap; with shards, the channels whose shard could not be
    read, and the ids of messages the client had (``redis_shards.merge``)."""
    messages: list
    gaps: list
    unavailable: list = []
    had: frozenset | set = frozenset()
