"""The message traffic of an AMP pipe, without AMP's per-command machinery.

``PublishBatch`` (worker -> hub) and ``DeliverBatch`` (hub -> worker) carry
nearly all the traffic between the master and its workers: a box a reactor
turn each way, each a fire-and-forget command with one ``BigBytes``
argument.  Through AMP's generic machinery a box costs about 7 us to send
(``callRemote``: argument objects to strings, an ``AmpBox``, its sorted
serialization) and 26 us to receive (the responder's lookup, argument
parsing, a Deferred, and the serialization of an answer nobody asked for):
with one message a box, a tenth of a unicast push's CPU across the three
processes it crosses.

``BatchPipe`` writes such a box itself (``send_batch``, the same bytes
``callRemote`` writes) and hands a received one straight to its responder
method; every other command, and a batch box it cannot read, goes through
AMP as before.  Order is kept: both ways share the one pipe and its parser.

It also reads the boxes off the pipe itself (``read_boxes``: a loop over
the buffer, where AMP's parser makes two calls through its state machine
per key and per value, a quarter of the hub's CPU): the same boxes, the
same limit on a key's length (AMP's: 255 bytes; over it the pipe is cut,
as AMP cuts it).
"""

from __future__ import annotations

from struct import pack, unpack_from

from twisted.protocols import amp

from ..twisted_private import amp_failed
from .amp_args import chunks, joined

__all__ = ["BatchPipe", "batch_box", "read_boxes"]


def batch_box(command: bytes, batch: bytes) -> bytes:
    """The AMP box of fire-and-forget ``command`` with ``batch`` as its one
    ``BigBytes`` argument ``batch``, as AMP serializes it."""
    parts = chunks(batch)
    pairs = [(b"_command", command), (b"batch", b"%d" % len(parts))]
    pairs += [(b"batch.%d" % i, chunk) for i, chunk in enumerate(parts)]
    out = []
    for key, value in sorted(pairs):
        out += (pack("!H", len(key)), key, pack("!H", len(value)), value)
    out.append(b"\x00\x00")
    return b"".join(out)


def read_boxes(data: bytes) -> tuple[list[amp.AmpBox], int, bool]:
    """The whole AMP boxes at the start of ``data``, the bytes they take, and
    whether a key longer than AMP allows comes next (the pipe is then cut)."""
    boxes, start, end = [], 0, len(data)
    while True:
        box, pos = amp.AmpBox(), start
        while pos + 2 <= end:
            (length,) = unpack_from("!H", data, pos)
            pos += 2
            if not length:
                break  # the end of the box
            if length > amp.MAX_KEY_LENGTH:
                return boxes, start, True
            if pos + length + 2 > end:
                return boxes, start, False
            key = data[pos:pos + length]
            (size,) = unpack_from("!H", data, pos + length)
            pos += length + 2
            if pos + size > end:
                return boxes, start, False
            box[key] = data[pos:pos + size]
            pos += size
        else:
            return boxes, start, False
        boxes.append(box)
        start = pos


class BatchPipe(amp.AMP):
    """An AMP protocol whose batch commands skip AMP's dispatch both ways.

    ``batches`` maps a batch command's name to the name of the method that
    takes its ``batch`` (the same method is the command's AMP responder).
    """

    batches: dict[bytes, str] = {}
    _unread = b""  # the start of a box yet to come whole
    _cut = False   # a key over AMP's limit came: nothing more is read

    def send_batch(self, command: type[amp.Command], batch: bytes) -> None:
        """``callRemote(command, batch=batch)``, without building a box."""
        if amp_failed(self) or self.transport is None:
            return  # the pipe is gone: dropped, as callRemote drops it
        self.transport.write(batch_box(command.commandName, batch))

    def dataReceived(self, data):
        if self.innerProtocol is not None:  # AMP switched protocols (pushsvc never does)
            super().dataReceived(data)
            return
        if self._cut:
            return
        if self._unread:
            data = self._unread + data
        boxes, used, too_long = read_boxes(data)
        self._unread = data[used:]
        receiver = self.boxReceiver
        for box in boxes:
            receiver.ampBoxReceived(box)
        if too_long:
            self._cut = True
            self.lengthLimitExceeded(len(data))  # as AMP: cut, and said why

    def ampBoxReceived(self, box):
        method = self.batches.get(box.get(b"_command"))
        if method is not None and b"_ask" not in box:
            try:
                batch = joined(b"batch", box)
            except (KeyError, ValueError):
                pass  # AMP reads it, and answers a malformed box its own way
            else:
                getattr(self, method)(batch)
                return
        super().ampBoxReceived(box)
