"""The bytes the load tool writes and reads, with no I/O.

Speed matters here more than anywhere else in the project: a generator process
reads every frame that thousands of clients receive, so ``FrameReader.feed``
parses only frame headers and takes the sequence number of a pushed message
from a fixed place near the end of the frame.  Only the clients chosen as
samples decode their frames as JSON; they also take the latency and check that
the fixed place is still right.

What the benchmark pushes is one JSON string, ``data`` of the ``msg`` frame,
which the server writes last in the frame::

    {"op":"msg","id":"...","to":{"group":"b10000"},"data":"000000042 1732500000.123456"}

the message's sequence number (9 digits) and the time it was sent
(``time.time()``, 17 characters).
"""

from __future__ import annotations

import base64
import hashlib
import json

# -- the pushed data -----------------------------------------------------------

SEQ_DIGITS = 9


def push_data(seq: int, sent: float) -> str:
    """The ``data`` of message ``seq`` sent at ``sent`` (a time.time() value)."""
    return f"{seq:0{SEQ_DIGITS}d} {sent:017.6f}"


def parse_push_data(data: object) -> tuple[int, float] | None:
    """``(seq, sent)`` from a ``data`` value, or None if it is not one of ours."""
    if not isinstance(data, str) or len(data) != SEQ_DIGITS + 18 or data[SEQ_DIGITS] != " ":
        return None
    try:
        return int(data[:SEQ_DIGITS]), float(data[SEQ_DIGITS + 1:])
    except ValueError:
        return None


# Where the data sits, counted back from the end of a msg frame's payload
# (which ends with '..."data":"SSSSSSSSS TTTTTTTTTTTTTTTTT"}').
_SEP = 20                       # the space
_SEQ = _SEP + SEQ_DIGITS        # first digit of the sequence number
MSG_PREFIX = b'{"op":"msg",'
# A pushed message as a Pusher client gets it (--protocol pusher): the server
# names a push without an event "message", and writes ``data`` last too.
PUSHER_PREFIX = b'{"event":"message",'


# -- WebSocket -----------------------------------------------------------------

WS_KEY = base64.b64encode(b"pushsvc-bench-01").decode("ascii")
WS_ACCEPT = base64.b64encode(hashlib.sha1(
    (WS_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode("ascii")).digest())

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class FrameError(Exception):
    """The server sent something the benchmark cannot take as a valid answer."""


def handshake_request(host: str, port: int, path: str = "/ws") -> bytes:
    """The opening handshake every client sends (they all use the same key)."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode("ascii")


def check_handshake(head: bytes) -> None:
    """Raise FrameError unless ``head`` (up to the blank line) accepts the upgrade."""
    if not head.startswith(b"HTTP/1.1 101 ") or WS_ACCEPT not in head:
        status = head.split(b"\r\n", 1)[0]
        raise FrameError(f"handshake refused: {status!r}")


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final client frame.  Clients must mask; the key 0 leaves the payload as is."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def server_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A final unmasked frame, as the server writes it (for tests)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


class Tally:
    """The messages one generator's clients received during one workload.

    A delivery is a (client, message) pair: ``seen`` has one byte for each,
    ``span`` messages per client (``slots`` clients), or one byte per message
    when every client shares slot 0 (unicast: each message goes to one client).
    Messages numbered ``seq0`` .. ``seq0 + span - 1`` belong to the workload.
    """

    def __init__(self, seq0: int = 0, span: int = 0, slots: int = 1):
        self.seq0 = seq0
        self.span = span
        self.seen = bytearray(span * slots)
        self.received = 0     # msg frames
        self.dupes = 0        # a delivery seen again
        self.stray = 0        # a msg frame no client of this workload expected
        self.latencies: list[float] = []   # seconds, from the sampled clients
        self.last = 0.0       # time.time() of the last msg frame

    @property
    def unique(self) -> int:
        return self.received - self.dupes - self.stray

    def summary(self) -> dict:
        return {"received": self.received, "unique": self.unique, "dupes": self.dupes,
                "stray": self.stray, "latencies": self.latencies, "last": self.last}


class FrameReader:
    """Parses the frames of one client connection.

    ``feed`` counts msg frames into the tally and returns every other frame as
    ``(first byte, payload)`` (replies, close, ping).  A reader with
    ``sample`` set decodes each msg frame as JSON and records its latency;
    the others only read the sequence number.  ``base`` is the client's first
    byte in ``tally.seen``; ``span`` is 0 for a client that expects nothing.
    """

    __slots__ = ("buf", "tally", "base", "span", "sample", "prefix")

    def __init__(self, tally: Tally | None = None, base: int = 0, span: int = 0,
                 sample: bool = False, prefix: bytes = MSG_PREFIX):
        self.buf = b""
        self.prefix = prefix  # how a pushed message's frame starts
        self.expect(tally or Tally(), base, span, sample)

    def expect(self, tally: Tally, base: int, span: int, sample: bool) -> None:
        self.tally = tally
        self.base = base
        self.span = span
        self.sample = sample

    def feed(self, data: bytes, now: float) -> list[tuple[int, bytes]]:
        if self.buf:
            data = self.buf + data
        tally = self.tally
        seen, base, span, seq0 = tally.seen, self.base, self.span, tally.seq0
        fast = not self.sample
        prefix = self.prefix
        other = []
        msgs = dupes = stray = 0
        pos, end = 0, len(data)
        while end - pos >= 2:
            n = data[pos + 1]
            if n < 126:
                start = pos + 2
            elif n == 126:
                if end - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            else:
                raise FrameError("the server sent a masked frame")
            stop = start + n
            if stop > end:
                break
            if data[pos] == 0x81 and data.startswith(prefix, start):
                msgs += 1
                if fast:
                    k = -1
                    if data[stop - _SEP] == 32:
                        try:
                            k = int(data[stop - _SEQ:stop - _SEP]) - seq0
                        except ValueError:
                            pass
                    if 0 <= k < span:
                        if seen[base + k]:
                            dupes += 1
                        else:
                            seen[base + k] = 1
                    else:
                        stray += 1
                else:
                    self._sampled(data[start:stop], now)
            else:
                other.append((data[pos], data[start:stop]))
            pos = stop
        self.buf = data[pos:]
        if msgs:
            tally.received += msgs
            tally.dupes += dupes
            tally.stray += stray
            tally.last = now
        return other

    def _sampled(self, payload: bytes, now: float) -> None:
        tally = self.tally
        parsed = parse_push_data(json.loads(payload).get("data"))
        if parsed is None:
            tally.stray += 1
            return
        seq, sent = parsed
        if payload[-_SEP] != 32 or int(payload[-_SEQ:-_SEP]) != seq:
            raise FrameError(f"the data is not where the fast path reads it: {payload!r}")
        k = seq - tally.seq0
        if not 0 <= k < self.span:
            tally.stray += 1
            return
        if tally.seen[self.base + k]:
            tally.dupes += 1
            return
        tally.seen[self.base + k] = 1
        tally.latencies.append(now - sent)


# -- HTTP/1.1 ------------------------------------------------------------------

def http_request(method: str, path: str, host: str, body: bytes = b"",
                 api_key: str | None = None) -> bytes:
    """A keep-alive request; ``body`` is JSON."""
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" \
        if method == "POST" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{length}\r\n".encode(
        "ascii") + body


class ResponseReader:
    """Splits a stream of HTTP/1.1 responses (Content-Length or chunked bodies)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Every response completed by ``data``, as ``(status, body)``."""
        self.buf += data
        done = []
        while True:
            parsed = self._one()
            if parsed is None:
                return done
            status, body, used = parsed
            done.append((status, body))
            self.buf = self.buf[used:]

    def _one(self) -> tuple[int, bytes, int] | None:
        buf = self.buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = buf[:head_end].lower()
        try:
            status = int(head[9:12])
        except ValueError:
            raise FrameError(f"not an HTTP response: {buf[:40]!r}")
        pos = head_end + 4
        if b"\r\ntransfer-encoding: chunked" in head:
            body = []
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(buf[pos:line_end].split(b";")[0], 16)
                if size == 0:
                    if buf.find(b"\r\n", line_end + 2) != line_end + 2:
                        return None     # trailers are not used by the server
                    return status, b"".join(body), line_end + 4
                if len(buf) < line_end + 2 + size + 2:
                    return None
                body.append(buf[line_end + 2:line_end + 2 + size])
                pos = line_end + 2 + size + 2
        marker = b"\r\ncontent-length:"
        at = head.find(marker)
        length = 0
        if at >= 0:
            length = int(head[at + len(marker):].split(b"\r\n", 1)[0])
        if len(buf) < pos + length:
            return None
        return status, buf[pos:pos + length], pos + length
