"""The lean path's request reader (pushsvc/http/lean_reader.py) without
sockets: where each request ends, what goes to twisted.web, and the limits."""

from __future__ import annotations

from twisted.trial import unittest

from pushsvc.http.lean_reader import HAND_OFF, INVALID, NEED_MORE, RequestReader, Whole


def head(method: str = "POST", path: str = "/api/push", version: str = "1.1",
         headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: x"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(body: bytes, **headers: str) -> bytes:
    return head(headers={"Content-Length": str(len(body)), **headers}) + body


def chunked(*pieces: bytes, trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return head(headers={"Transfer-Encoding": "chunked"}) + body + b"0\r\n" + trailers + b"\r\n"


class Target(tuple):
    """What the tests' ``accept`` makes of a head: (method, url), not an upgrade."""
    upgrade = False


class ReaderTests(unittest.TestCase):

    def reader(self, wanted=True, max_head=16384, max_headers=500, max_body=1000):
        self.heads = []

        def accept(method, url, headers):
            self.heads.append((method, url, headers))
            return Target((method, url)) if wanted else None
        return RequestReader(accept, max_head, max_headers, max_body)

    def read_all(self, reader, data: bytes, step: int | None = None) -> list:
        """Feed ``data`` ``step`` bytes at a time (all at once without),
        keeping what is not used as a connection does; the outcomes that
        are not NEED_MORE, with the bytes left at the end."""
        out, buffer = [], b""
        step = step or len(data) or 1
        for i in range(0, len(data), step):
            buffer += data[i:i + step]
            while buffer:
                outcome, used = reader.read(buffer)
                if outcome is HAND_OFF:
                    return out + [(HAND_OFF, buffer)]
                buffer = buffer[used:]
                if outcome is NEED_MORE:
                    break
                out.append(outcome)
                if outcome is INVALID:
                    return out
        return out + ([(NEED_MORE, buffer)] if buffer else [])

    def test_a_request_whole_at_once_and_byte_by_byte(self):
        data = post(b'{"to":{"all":true},"data":1}')
        for step in (None, 1, 7):
            reader = self.reader()
            self.assertEqual(self.read_all(reader, data, step),
                             [Whole((b"POST", b"/api/push"), b'{"to":{"all":true},"data":1}',
                                    False)])

    def test_pipelined_requests_are_read_one_at_a_time(self):
        """Each ``read`` takes exactly one request's bytes, whatever follows."""
        data = post(b"a") + head("GET", "/healthz") + post(b"") + chunked(b"x\r\n\r\ny", b"z") \
            + post(b"bb")
        for step in (None, 1, 3, 10):
            reader = self.reader()
            self.assertEqual([(w.target, w.body) for w in self.read_all(reader, data, step)], [
                ((b"POST", b"/api/push"), b"a"), ((b"GET", b"/healthz"), b""),
                ((b"POST", b"/api/push"), b""), ((b"POST", b"/api/push"), b"x\r\n\r\nyz"),
                ((b"POST", b"/api/push"), b"bb")], step)

    def test_chunked_bodies_with_extensions_and_trailers(self):
        data = (head(headers={"Transfer-Encoding": "chunked"})
                + b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n" + post(b"n"))
        for step in (None, 1, 2, 5):
            whole = self.read_all(self.reader(), data, step)
            self.assertEqual([w.body for w in whole], [b"abc", b"n"], step)

    def test_what_goes_to_twisted_web(self):
        """Anything but plain HTTP/1.1 GET or POST, heads llhttp refuses, and
        heads over the limits, from the first byte of the request."""
        cases = [
            head("HEAD", "/healthz"), head("PUT"), head(version="1.0"),
            head(headers={"Expect": "100-continue", "Content-Length": "1"}) + b"x",
            head("GET", "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"}),
            head(headers={"Transfer-Encoding": "gzip, chunked"}),
            head(headers={"Content-Length": "1", "Transfer-Encoding": "chunked"}),
            head(headers={"Content-Length": "1x"}),
            head(headers={"Content-Length": "1", "content-length": "2"}),
            head("GET", "http://x/api/push"),
            b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            head(headers={"X-Big": "b" * 20_000}),
            head(headers={f"X-{i}": "1" for i in range(501)}),
            b"GET /" + b"a" * 17_000,             # no end of head in sight
        ]
        for data in cases:
            reader = self.reader()
            self.assertEqual(self.read_all(reader, post(b"1") + data),
                             [Whole((b"POST", b"/api/push"), b"1", False), (HAND_OFF, data)],
                             data[:60])
        self.assertEqual(self.read_all(self.reader(wanted=False), head("GET", "/metrics")),
                         [(HAND_OFF, head("GET", "/metrics"))])

    def test_after_a_hand_off_the_reader_starts_afresh(self):
        reader = self.reader()
        self.assertEqual(reader.read(b"GARBAGE\r\n\r\n"), (HAND_OFF, 0))
        self.assertEqual(reader.read(post(b"1")), (Whole((b"POST", b"/api/push"), b"1", False),
                                                   len(post(b"1"))))

    def test_a_head_is_not_taken_until_whole(self):
        reader = self.reader()
        data = post(b"")
        for i in range(len(data)):
            self.assertEqual(reader.read(data[:i]), (NEED_MORE, 0))
        self.assertEqual(self.heads, [])

    def test_bodies_over_the_limit_are_read_and_dropped(self):
        for data in (post(b"x" * 1001), chunked(b"x" * 600, b"y" * 600)):
            reader = self.reader()
            self.assertEqual(self.read_all(reader, data + post(b"ok"), 100),
                             [Whole((b"POST", b"/api/push"), b"", True),
                              Whole((b"POST", b"/api/push"), b"ok", False)])
        reader = self.reader()
        self.assertEqual(self.read_all(reader, post(b"x" * 1000)),
                         [Whole((b"POST", b"/api/push"), b"x" * 1000, False)])

    def test_malformed_chunked_bodies_are_invalid(self):
        for body in (b"zz\r\n", b"3\r\nabcd\r\n", b"5\nabcde\n0\n\n", b"-1\r\n"):
            data = head(headers={"Transfer-Encoding": "chunked"}) + body + b"0\r\n\r\n"
            self.assertEqual(self.read_all(self.reader(), post(b"1") + data),
                             [Whole((b"POST", b"/api/push"), b"1", False), INVALID], body)

    def test_headers_reach_accept_as_sent(self):
        reader = self.reader()
        self.read_all(reader, head(headers={"Authorization": "Bearer k", "X-A": "  b  "}))
        self.assertEqual(self.heads[0][2], [(b"Host", b"x"), (b"Authorization", b"Bearer k"),
                                            (b"X-A", b"b  ")])
