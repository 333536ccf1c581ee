"""Recent messages, kept for clients that come back (``resume``).  No I/O.

One keeper numbers every message it sees with its *position*: 1, 2, 3, ...
in the order messages arrive, across all channels (the hub of a pool, the one
process with ``--workers 0``).  A message that goes to a channel which keeps
history (``user:``, ``group:``, ``tag:`` and ``all``; not the per-worker
channels of session-addressed messages) is kept, with its frame carrying its
position (``"pos"``), until it is ``ttl`` seconds old, or its channel holds
``max_messages`` newer ones, or all kept frames pass ``max_bytes`` (the oldest
go first).

A client delivered its messages in order has seen everything of its channels
up to the last position it got, so one number says where it stands:
``replay(channels, since)`` gives the kept messages of those channels after
``since``, each once, in order, and the channels that lost a message after
``since`` (their *gaps*: the client must resync those from the application).
The ``epoch`` names this keeper's numbering; a client from another epoch has
gaps everywhere.
"""

from __future__ import annotations

from collections import deque
from heapq import heappop, heappush
from typing import Any

from zope.interface import implementer

from .frames import is_message, with_position
from .ids import new_incarnation
from .reloadable import IReloadable
from .sessions import ALL

KEPT_KINDS = ("user:", "group:", "tag:")


def kept_channels(channels) -> tuple[str, ...]:
    """Those of ``channels`` that keep history (not the workers' own)."""
    return tuple([c for c in channels if c == ALL or c.startswith(KEPT_KINDS)])


# A kept message: [position, id, frame, time, channels, lists]: ``lists``
# counts the channels that still list it; at 0 its frame is let go at once
# (``None``), and the entry waits, empty, for its turn at the front.  Lists,
# not objects: the hub keeps one per message at tens of thousands a second.
_POSITION, _ID, _FRAME, _TIME, _CHANNELS, _LISTS = range(6)

OVERHEAD = 200  # bytes counted per kept message besides its frame

# Kept messages looked at, oldest first, for one of a channel over its share
# of the memory before the oldest of all is let go (``History._make_room``).
SCAN = 64


def in_order(found) -> list[tuple[Any, bytes]]:
    """Kept messages gathered from several channels, as (position, id,
    frame): each once (by position, and by id), oldest first, as (id, frame).
    What a replay answers, whoever keeps the history (``History``, Redis)."""
    by_position = {position: (msg_id, frame) for position, msg_id, frame in found}
    seen: set = set()
    out = []
    for position in sorted(by_position):
        entry = by_position[position]
        if entry[0] not in seen:
            seen.add(entry[0])
            out.append(entry)
    return out


@implementer(IReloadable)
class History:
    """The kept messages of one keeper; ``ttl`` 0 keeps nothing.

    Memory is shared fairly: a message that no channel lists any more (past
    its channels' ``max_messages``) is let go at once, and when the kept
    bytes pass ``max_bytes`` the message let go is the oldest of a channel
    holding more than its share (``max_bytes`` / the channels listed), if
    the new message is on one, else the oldest of all.  So a flood on some
    channels pushes out their own messages first, not a quiet channel's.
    """

    def __init__(self, ttl: float, max_messages: int, max_bytes: int,
                 epoch: str | None = None):
        """``max_messages`` per channel, ``max_bytes`` in all."""
        self.ttl = ttl
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.epoch = epoch or new_incarnation()
        self.position = 0   # the last position given
        self.floor = 0      # positions up to here may be gone from channels no longer listed
        self.bytes = 0      # of the frames still listed, with OVERHEAD each
        self._entries: deque[list] = deque()           # every message, oldest first
        self._empty = 0                                # entries let go, waiting in _entries
        self._channels: dict[str, deque[list]] = {}   # each channel's, oldest first
        self._channel_bytes: dict[str, int] = {}       # what each channel's list holds
        self._dropped: dict[str, int] = {}  # a channel's newest position let go of
        self._emptied: list[tuple[int, str]] = []  # (position, channel) of lists emptied

    @classmethod
    def from_settings(cls, settings) -> "History":
        return cls(settings.ttl, settings.max_per_channel, settings.max_memory)

    def configure(self, settings) -> None:
        """New limits (a reload); what is kept stays, and goes by the new ones."""
        self.ttl, self.max_messages, self.max_bytes = (
            settings.ttl, settings.max_per_channel, settings.max_memory)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        """How many messages are kept (listed by a channel)."""
        return len(self._entries) - self._empty

    def record(self, kept: tuple[str, ...], msg_id, frame: bytes, now: float) -> bytes:
        """Keep a message published on channels of which ``kept`` keep history
        (``kept_channels``); its frame as clients get it (with its position
        when it is kept, else as it came).  Only ``msg`` frames are kept.

        ``msg_id`` is kept as given (the hub keeps it as UTF-8 bytes) and
        given back by ``replay``.
        """
        if not kept or not self.enabled or not is_message(frame):
            return frame
        entries = self._entries
        if entries and entries[0][_TIME] <= now - self.ttl:
            self.expire(now)
        self.position += 1
        frame = with_position(frame, self.position)
        size = len(frame) + OVERHEAD
        entry = [self.position, msg_id, frame, now, kept, len(kept)]
        entries.append(entry)
        self.bytes += size
        lists, sizes = self._channels, self._channel_bytes
        for name in kept:
            listed = lists.get(name)
            if listed is None:
                listed = lists[name] = deque()
                if self.floor > self._dropped.get(name, 0):
                    # unlisted, it had lost what the keeper let go of
                    self._dropped[name] = self.floor
            listed.append(entry)
            sizes[name] = sizes.get(name, 0) + size
            if len(listed) > self.max_messages:
                self._unlist(name)
        while self.bytes > self.max_bytes and len(self) > 1:
            self._make_room(kept)
        if self._empty > len(entries) // 2 + 64:
            self._compact()
        return frame

    def _make_room(self, kept: tuple[str, ...]) -> None:
        """Let go of one message: the oldest of a channel of ``kept`` that
        holds more than its share of the memory; else the oldest message of
        any channel over its share (among the oldest SCAN); else the oldest
        of all."""
        share = self.max_bytes // max(1, len(self._channels))
        sizes, lists = self._channel_bytes, self._channels
        for name in kept:
            listed = lists.get(name)
            if listed and len(listed) > 1 and sizes.get(name, 0) > share:
                self._unlist(name)
                return
        looked = 0
        for entry in self._entries:
            if entry[_FRAME] is None:
                continue
            for name in entry[_CHANNELS]:
                listed = lists.get(name)
                if listed and listed[0] is entry and sizes.get(name, 0) > share:
                    self._unlist(name)
                    return
            looked += 1
            if looked >= SCAN:
                break
        self._drop_oldest()

    def _unlist(self, name: str) -> None:
        """Take the oldest message off channel ``name``'s list; let it go
        when no channel lists it any more."""
        listed = self._channels[name]
        entry = listed.popleft()
        self._dropped[name] = entry[_POSITION]
        size = len(entry[_FRAME]) + OVERHEAD
        self._channel_bytes[name] -= size
        entry[_LISTS] -= 1
        if entry[_LISTS] == 0:
            self._let_go(entry, size)
        if not listed:  # what it lost counts until the floor passes it
            del self._channels[name], self._channel_bytes[name]
            heappush(self._emptied, (entry[_POSITION], name))

    def _let_go(self, entry: list, size: int) -> None:
        self.bytes -= size
        entry[_FRAME] = None
        self._empty += 1

    def _forget(self, name: str) -> None:
        del self._channels[name]
        self._channel_bytes.pop(name, None)
        self._dropped.pop(name, None)

    def _compact(self) -> None:
        """Drop the entries let go from ``_entries`` (they only wait there)."""
        self._entries = deque(e for e in self._entries if e[_FRAME] is not None)
        self._empty = 0

    def expire(self, now: float) -> None:
        """Let go of every message older than ``ttl``."""
        limit = now - self.ttl
        while self._entries and self._entries[0][_TIME] <= limit:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        entry = self._entries.popleft()
        position = self.floor = entry[_POSITION]
        while self._emptied and self._emptied[0][0] <= position:
            name = heappop(self._emptied)[1]
            if name not in self._channels and self._dropped.get(name, 0) <= position:
                self._dropped.pop(name, None)
        if entry[_FRAME] is None:  # let go already
            self._empty -= 1
            return
        size = len(entry[_FRAME]) + OVERHEAD
        for name in entry[_CHANNELS]:
            listed = self._channels.get(name)
            if listed is None:
                continue
            if listed and listed[0] is entry:
                listed.popleft()
                self._channel_bytes[name] -= size
                self._dropped[name] = position
            if not listed:
                self._forget(name)
        self._let_go(entry, size)
        self._empty -= 1

    def replay(self, channels, since: int, epoch: str | None,
               now: float) -> tuple[list[tuple[Any, bytes]], list[str]]:
        """The kept messages of ``channels`` after position ``since``, each once,
        oldest first, as (id, frame); and the channels (sorted) that lost one
        after ``since``.

        A client of another ``epoch`` (or of none: the keeper restarted since
        it connected) gets every kept message of its channels, and every
        channel as a gap (what the old epoch kept is gone).  A position this
        keeper never gave gets nothing and every channel as a gap.
        """
        channels = sorted(set(channels))
        other = epoch != self.epoch
        if not self.enabled or (since > self.position and not other):
            return [], channels
        if other:
            since = 0
        self.expire(now)
        found = []
        gaps = []
        for name in channels:
            listed = self._channels.get(name)
            lost = max(self._dropped.get(name, 0), 0 if listed is not None else self.floor)
            if lost > since:
                gaps.append(name)
            for entry in reversed(listed or ()):
                if entry[_POSITION] <= since:
                    break
                found.append((entry[_POSITION], entry[_ID], entry[_FRAME]))
        return in_order(found), channels if other else gaps


@implementer(IReloadable)
class Mailbox:
    """Messages kept for users with no session anywhere (pushes with
    ``"store": true``), until the user connects or ``ttl`` passes; at most
    ``max_messages`` per user (the oldest go first) and ``max_bytes`` in all
    (past it nothing more is kept until some goes)."""

    def __init__(self, ttl: float, max_messages: int, max_bytes: int):
        self.ttl = ttl
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.bytes = 0
        self._boxes: dict[str, deque[tuple[float, str, bytes]]] = {}
        self._order: deque[tuple[float, str]] = deque()  # (time, user), oldest first

    @classmethod
    def from_settings(cls, settings) -> "Mailbox":
        return cls(settings.ttl, settings.max_per_channel, settings.max_memory)

    configure = History.configure

    def put(self, user: str, msg_id: str, frame: bytes, now: float) -> bool:
        """Keep a message for ``user``; False when it is not kept (no room)."""
        self.expire(now)
        if self.ttl <= 0 or self.bytes + len(frame) + OVERHEAD > self.max_bytes:
            return False
        box = self._boxes.setdefault(user, deque())
        box.append((now, msg_id, frame))
        self._order.append((now, user))
        # Entries taken or pushed out early leave their place here: compact
        # once they outnumber the kept ones (at most bytes / OVERHEAD of them).
        if len(self._order) > 2 * (self.bytes // OVERHEAD) + 1024:
            self._order = deque(sorted((t, u) for u, b in self._boxes.items() for t, _, _ in b))
        self.bytes += len(frame) + OVERHEAD
        if len(box) > self.max_messages:
            self.bytes -= len(box.popleft()[2]) + OVERHEAD
        return True

    def take(self, user: str, now: float) -> list[tuple[str, bytes]]:
        """Everything kept for ``user``, oldest first, as (id, frame); the box empties."""
        self.expire(now)
        box = self._boxes.pop(user, ())
        self.bytes -= sum(len(frame) + OVERHEAD for _, _, frame in box)
        return [(msg_id, frame) for _, msg_id, frame in box]

    def expire(self, now: float) -> None:
        limit = now - self.ttl
        while self._order and self._order[0][0] <= limit:
            _, user = self._order.popleft()
            box = self._boxes.get(user)
            while box and box[0][0] <= limit:
                self.bytes -= len(box.popleft()[2]) + OVERHEAD
            if box is not None and not box:
                del self._boxes[user]

    def __len__(self) -> int:
        return sum(map(len, self._boxes.values()))
