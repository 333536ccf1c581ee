"""The message records the hub and the workers (and Redis payloads) carry,
and ``Outbox``, which sends them in batches.  No AMP here.

Messages cross in batches: one ``PublishBatch`` per reactor turn from a worker
to the hub, one ``DeliverBatch`` per turn from the hub to each worker.  An AMP
box costs tens of microseconds of Python to build and as many to parse, once
per message and hop, which made the hub as busy as a worker; a batch costs one
box however many messages it holds, and its records are packed with ``struct``
length prefixes so that the hub can route them without decoding the addresses
or frames, and pass each on as the very bytes it received.
"""

from __future__ import annotations

import struct
from typing import Iterable, Iterator

from twisted.logger import Logger

_log = Logger()


# A batch is records one after the other, nothing around them.
#
#   message record  (DeliverBatch):  !III lengths of id, to, frame; id; to; frame
#   publish record  (PublishBatch):  !I channel count; per channel !I length and
#                                    its UTF-8; then a message record
#
# ``to`` is the address as JSON text, ``frame`` the encoded ``msg`` frame.  The
# hub reads only the channels and hands on the message record as it came.
# The channel count's two high bits are flags: STORE (keep it for offline
# users) and RELAY (a Redis node's worker relays, while Redis is away, a
# message it has delivered to its own sessions already: the hub hands it on
# to the node's other workers only, and neither numbers nor keeps it).
# Text is UTF-8 with lone surrogates allowed (JSON can name them).

_U32 = struct.Struct("!I")
STORE = 0x80000000  # in a publish record's channel count: keep it for offline users
RELAY = 0x40000000  # ... or: for the other workers only, not numbered (Redis is away)
_FLAGS = STORE | RELAY
_LENGTHS = struct.Struct("!III")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def pack_publish(channels: Iterable[str], msg_id: str, to: bytes, frame: bytes,
                 store: bool = False) -> bytes:
    """One publish record: ``channels``, then the message record; ``store``
    rides in the channel count's high bit (``STORE``)."""
    names = [_utf8(c) for c in channels]
    parts = [_U32.pack(len(names) | (STORE if store else 0))]
    for name in names:
        parts += (_U32.pack(len(name)), name)
    parts.append(pack_message(msg_id, to, frame))
    return b"".join(parts)


def as_relay(record: bytes) -> bytes:
    """A publish record with the ``RELAY`` flag set (see above)."""
    (count,) = _U32.unpack_from(record)
    return _U32.pack(count | RELAY) + record[_U32.size:]


def pack_message(msg_id: str | bytes, to: bytes, frame: bytes) -> bytes:
    """One message record (the hub's, for a replay); the id as text or UTF-8."""
    raw_id = msg_id if isinstance(msg_id, bytes) else _utf8(msg_id)
    return b"".join((_LENGTHS.pack(len(raw_id), len(to), len(frame)), raw_id, to, frame))


def message_parts(record) -> tuple[bytes, bytes]:
    """The raw id and the frame of one message record."""
    id_size, to_size, _ = _LENGTHS.unpack_from(record)
    start = _LENGTHS.size
    return bytes(record[start:start + id_size]), bytes(record[start + id_size + to_size:])


def reframe(record, frame: bytes) -> bytes:
    """``record`` with ``frame`` in place of its own."""
    id_size, to_size, _ = _LENGTHS.unpack_from(record)
    head = _LENGTHS.size + id_size + to_size
    return b"".join((_LENGTHS.pack(id_size, to_size, len(frame)), record[_LENGTHS.size:head],
                     frame))


def unpack_publishes(batch: bytes, with_flags: bool = False) -> Iterator[tuple]:
    """Each publish record of ``batch``: (channels, its message record), and
    its flags third (``STORE``, ``RELAY``: 0 for none) when ``with_flags``.

    The message record is a view into ``batch`` (no copy): ``b"".join`` of
    such views is a ``DeliverBatch``.
    """
    view, pos, end = memoryview(batch), 0, len(batch)
    while pos < end:
        (count,) = _U32.unpack_from(batch, pos)
        flags, count = count & _FLAGS, count & ~_FLAGS
        pos += 4
        channels = []
        for _ in range(count):
            (size,) = _U32.unpack_from(batch, pos)
            pos += 4
            channels.append(str(view[pos:pos + size], "utf-8", "surrogatepass"))
            pos += size
        start = pos
        id_size, to_size, frame_size = _LENGTHS.unpack_from(batch, pos)
        pos += _LENGTHS.size + id_size + to_size + frame_size
        _check(pos, end)
        yield (channels, view[start:pos], flags) if with_flags else (channels, view[start:pos])


def unpack_messages(batch: bytes) -> Iterator[tuple[str, bytes, bytes]]:
    """Each message record of ``batch``: (id, to, frame)."""
    pos, end = 0, len(batch)
    while pos < end:
        id_size, to_size, frame_size = _LENGTHS.unpack_from(batch, pos)
        pos += _LENGTHS.size
        msg_id = str(batch[pos:pos + id_size], "utf-8", "surrogatepass")
        pos += id_size
        to = batch[pos:pos + to_size]
        pos += to_size
        frame = batch[pos:pos + frame_size]
        pos += frame_size
        _check(pos, end)
        yield msg_id, to, frame


def _check(pos: int, end: int) -> None:
    if pos > end:
        raise ValueError(f"truncated batch: a record ends at byte {pos} of {end}")


class Outbox:
    """Records queued per peer, sent as one batch per peer: at the end of the
    reactor turn they were queued in (``clock.callLater(0)``), or at once by
    ``flush``.  ``send(peer, batch)`` sends one batch."""

    def __init__(self, clock, send):
        self.clock = clock
        self.send = send
        self.queued: dict = {}
        self._call = None

    def add(self, peer, record) -> None:
        self.queued.setdefault(peer, []).append(record)
        if self._call is None:
            self._call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        queued, self.queued = self.queued, {}
        for peer, records in queued.items():
            try:
                self.send(peer, b"".join(records))
            except Exception:  # one peer's failure must not cost the others theirs
                _log.failure("sending a batch of {count} messages failed",
                             count=len(records))
