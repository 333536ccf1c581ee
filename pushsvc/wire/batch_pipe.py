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
"""

from __future__ import annotations

from struct import pack

from twisted.protocols import amp

from ..twisted_private import amp_failed
from .amp_args import chunks, joined

__all__ = ["BatchPipe", "batch_box"]


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


class BatchPipe(amp.AMP):
    """An AMP protocol whose batch commands skip AMP's dispatch both ways.

    ``batches`` maps a batch command's name to the name of the method that
    takes its ``batch`` (the same method is the command's AMP responder).
    """

    batches: dict[bytes, str] = {}

    def send_batch(self, command: type[amp.Command], batch: bytes) -> None:
        """``callRemote(command, batch=batch)``, without building a box."""
        if amp_failed(self) or self.transport is None:
            return  # the pipe is gone: dropped, as callRemote drops it
        self.transport.write(batch_box(command.commandName, batch))

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
