"""Raw TCP clients for tests that send what no well-behaved client would:
hand-made HTTP requests and WebSocket frames (masked, fragmented, truncated,
invalid), read back as bytes, parsed just enough to assert on."""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10

WAIT = 10.0  # seconds a test waits for the server before it fails


def handshake(path: str = "/ws", headers: dict[str, str] | None = None) -> bytes:
    """A WebSocket opening handshake request."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_request(method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def frame(payload: bytes, opcode: int = TEXT, fin: bool = True,
          length: int | None = None) -> bytes:
    """One client frame, masked as clients must.  ``length`` overrides the
    length written in the header (to claim more than is sent)."""
    length = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(value: Any) -> bytes:
    return frame(json.dumps(value).encode())


class RawClient(Protocol):
    """Writes what it is told; keeps everything it reads."""

    def __init__(self):
        self.data = b""
        self.lost = Deferred()
        self._waiters: list[tuple[Any, Deferred]] = []

    def dataReceived(self, data):
        self.data += data
        self._check()

    reset = False  # the connection ended with a reset (ECONNRESET), not a FIN

    def connectionLost(self, reason):
        self.reset = reason.check(ConnectionLost) is not None and "reset" in str(reason.value).lower() \
            or reason.check(ConnectionResetError) is not None
        self._check()
        for _, d in self._waiters:
            d.callback(None)
        self._waiters = []
        self.lost.callback(None)

    def _check(self):
        still = []
        for condition, d in self._waiters:
            if condition():
                d.callback(None)
            else:
                still.append((condition, d))
        self._waiters = still

    def wait_for(self, condition, timeout: float = WAIT) -> Deferred:
        """Fires when ``condition()`` holds after some bytes arrive, or at
        close; fails with TimeoutError after ``timeout`` seconds."""
        d = Deferred()
        if condition() or self.lost.called:
            d.callback(None)
        else:
            self._waiters.append((condition, d))
            d.addTimeout(timeout, reactor)
        return d

    def wait_lost(self, timeout: float = WAIT) -> Deferred:
        """Fires when the connection is gone; TimeoutError after ``timeout`` s."""
        return self.wait_for(lambda: False, timeout)

    # -- what came back ----------------------------------------------------

    @property
    def head(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[0]

    @property
    def status(self) -> int | None:
        """The HTTP status of the answer, once its head has arrived."""
        if b"\r\n\r\n" not in self.data:
            return None
        return int(self.head.split(b" ", 2)[1])

    def complete(self) -> bool:
        """The whole HTTP answer has arrived (for a 101, its head)."""
        if self.status is None:
            return False
        if self.status == 101:
            return True
        rest = self.data.split(b"\r\n\r\n", 1)[1]
        length = self.header("content-length")
        if length is not None:
            return len(rest) >= int(length)
        return rest.endswith(b"0\r\n\r\n")

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    @property
    def body(self) -> Any:
        """The answer's body as JSON (content-length or chunked)."""
        rest = self.data.split(b"\r\n\r\n", 1)[1]
        if (self.header("transfer-encoding") or "").lower() == "chunked":
            out = b""
            while rest:
                size, _, rest = rest.partition(b"\r\n")
                size = int(size, 16)
                if not size:
                    break
                out, rest = out + rest[:size], rest[size + 2:]
            rest = out
        return json.loads(rest)

    def frames(self) -> list[tuple[int, bytes]]:
        """The server's WebSocket frames after a 101 answer: (opcode, payload)."""
        data = self.data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.data else b""
        out = []
        while len(data) >= 2:
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            offset = 2
            if length == 126:
                length, offset = struct.unpack("!H", data[2:4])[0], 4
            elif length == 127:
                length, offset = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < offset + length:
                break
            out.append((opcode, data[offset:offset + length]))
            data = data[offset + length:]
        return out

    def json_frames(self) -> list[Any]:
        return [json.loads(p) for op, p in self.frames() if op == TEXT]

    @property
    def close_code(self) -> int | None:
        for op, payload in self.frames():
            if op == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    def has_close(self) -> bool:
        return self.close_code is not None

    def welcomed(self) -> bool:
        return any(f.get("op") == "welcome" for f in self.json_frames())


async def answer_close(client: RawClient) -> int | None:
    """Wait for the server's close frame, answer it as a client must, wait
    until the server drops the connection; the close code."""
    await client.wait_for(client.has_close)
    if not client.lost.called:
        client.transport.write(frame(b"\x03\xe8", CLOSE))
    await client.wait_lost()
    return client.close_code


async def connect_raw(port: int, first: bytes = b"") -> RawClient:
    """A raw client connected to 127.0.0.1:``port`` that has written ``first``."""
    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    if first:
        client.transport.write(first)
    return client


async def open_raw(port: int, headers: dict[str, str] | None = None) -> RawClient:
    """A raw client past the WebSocket handshake, with its welcome."""
    client = await connect_raw(port, handshake(headers=headers))
    await client.wait_for(client.welcomed)
    assert client.welcomed(), client.data[:300]
    return client
