"""Reading HTTP/1.1 requests off a connection's bytes with llhttp (through
httptools), one request at a time, for the lean path of the API (lean.py).

``RequestReader.read(data)`` looks at the bytes from the start of a request
and answers one of:

- ``(Whole, used)``: a whole request (its head taken by ``accept`` and its
  body), the first ``used`` bytes of ``data``;
- ``(NEED_MORE, used)``: not whole yet; ``used`` body bytes were taken (a
  head is never taken in part: it stays in ``data`` until it is whole);
- ``(HAND_OFF, 0)``: a request for twisted.web, from its first byte: a head
  that ``accept`` does not want, that is not plain HTTP/1.1 GET or POST, that
  is larger than the limits or that llhttp finds malformed (twisted.web then
  answers it as it always has);
- ``(INVALID, used)``: a body whose chunked framing is not valid.

llhttp does not say where in a buffer a message ended, so the reader never
gives it bytes past the end of the request: a head ends at the first CRLF
CRLF, a Content-Length body after its length, and a chunked body can only end
at a CRLF CRLF (its last chunk and trailers), so chunked bytes go to llhttp
up to each CRLF CRLF in turn.  The reader is pure: no sockets, no clock.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import httptools

NEED_MORE = "need more"
HAND_OFF = "hand off"
INVALID = "invalid"

END_OF_HEAD = b"\r\n\r\n"


class Whole(NamedTuple):
    """A request read whole: what ``accept`` made of its head, its body (empty
    when over the limit) and whether the body was over the limit."""
    target: Any
    body: bytes
    too_large: bool


class _Overrun(Exception):
    """llhttp began a second message: the reader fed it too far (a bug)."""


class _Message:
    """llhttp's callbacks, and what they have seen of the request being read."""

    def __init__(self, max_body: int):
        self.max_body = max_body
        self.clear()

    def clear(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = self.complete = False
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Overrun()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.size += len(body)
        if self.size > self.max_body:
            self.too_large, self.body = True, []
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class RequestReader:
    """One connection's requests, one at a time.

    ``accept(method, url, headers)`` gets each head that is plain HTTP/1.1
    GET or POST (``headers`` a list of (name, value) as sent) and returns
    what to serve it with, or None to leave it to twisted.web; what it
    returns says by its ``upgrade`` whether it is for an Upgrade request
    (a WebSocket handshake), which ends at its head.  A head over
    ``max_head`` bytes (request line and headers with their line ends) or
    ``max_headers`` headers is left to twisted.web, which applies its own
    count of the same limits; a body over ``max_body`` bytes is read and
    dropped.
    """

    def __init__(self, accept: Callable[[bytes, bytes, list], Any], max_head: int,
                 max_headers: int, max_body: int):
        self.accept = accept
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_body = max_body
        self._reset()

    def _reset(self) -> None:
        # llhttp holds the message's callbacks, which do not refer back to
        # the reader: no reference cycle, so a connection's reader and
        # parser go with it, without the garbage collector.
        self._msg = _Message(self.max_body)
        self._parser = httptools.HttpRequestParser(self._msg)
        self._next_message()

    def _next_message(self) -> None:
        self._target = None           # what accept returned; None between heads
        self._scanned = 0             # bytes of a partial head with no CRLF CRLF
        self._chunked = False
        self._left = 0                # Content-Length bytes still to come
        self._tail = b""              # the last 3 chunked bytes given to llhttp
        self._msg.clear()

    # -- reading ------------------------------------------------------------

    def read(self, data: bytes) -> tuple[Any, int]:
        """What the bytes from the start of ``data`` hold (module docstring).
        After NEED_MORE, ``data`` is the same bytes, less the ``used`` ones, and more."""
        pos, msg = 0, self._msg
        if self._target is None:
            pos = self._read_head(data)
            if pos <= 0:
                return (NEED_MORE if pos == 0 else HAND_OFF), 0
        try:
            while not msg.complete and pos < len(data):
                end = self._body_end(data, pos)
                self._parser.feed_data(data[pos:end])
                if self._chunked:
                    self._tail = (self._tail + data[max(pos, end - 3):end])[-3:]
                else:
                    self._left -= end - pos
                pos = end
        except httptools.HttpParserError:
            self._reset()
            return INVALID, len(data)
        if not msg.complete:
            return NEED_MORE, pos
        whole = Whole(self._target, b"".join(msg.body), msg.too_large)
        self._next_message()
        return whole, pos

    def _read_head(self, data: bytes) -> int:
        """The head's length once it is whole and accepted; 0 while it is
        not whole; -1 for twisted.web."""
        end = data.find(END_OF_HEAD, self._scanned)
        if end < 0:
            # A head trickling in is not searched again from its start.
            self._scanned = max(0, len(data) - len(END_OF_HEAD) + 1)
            return -1 if len(data) > self.max_head else 0
        end += len(END_OF_HEAD)
        if end > self.max_head:
            return -1
        upgrade, msg = False, self._msg
        try:
            self._parser.feed_data(data[:end])
        except httptools.HttpParserUpgrade:  # llhttp stops after an Upgrade request's head
            upgrade = True
        except httptools.HttpParserError:
            self._reset()
            return -1
        target = self._accept() if msg.head_done else None
        if target is None or upgrade is not target.upgrade:
            self._reset()
            return -1
        if upgrade:  # no body: the connection is the WebSocket's next
            msg.complete = True
        self._target = target
        msg.head_done = False
        return end

    def _accept(self) -> Any:
        parser, msg = self._parser, self._msg
        headers = msg.headers
        if (parser.get_http_version() != "1.1" or parser.get_method() not in (b"GET", b"POST")
                or len(headers) > self.max_headers or not msg.url.startswith(b"/")):
            return None
        for name, value in headers:
            lower = name.lower()
            if lower == b"transfer-encoding":
                if value.strip(b" \t").lower() != b"chunked":
                    return None
                self._chunked = True
            elif lower == b"content-length":
                self._left = int(value)  # llhttp checked: digits, one of them
            elif lower == b"expect":
                return None  # 100-continue: twisted.web's
        if self._left > self.max_body:
            msg.too_large = True
        return self.accept(parser.get_method(), msg.url, headers)

    def _body_end(self, data: bytes, pos: int) -> int:
        """Where to stop giving ``data`` (from ``pos``) to llhttp."""
        if not self._chunked:
            return min(len(data), pos + self._left)
        window = self._tail + data[pos:]
        found = window.find(END_OF_HEAD)
        if found < 0:
            return len(data)
        return pos + found + len(END_OF_HEAD) - len(self._tail)
