"""The lean path of the HTTP API (pushsvc/http/lean.py) over real loopback
sockets: the same answers as twisted.web byte for byte, keep-alive,
pipelining, chunked bodies, the hand-off to twisted.web in the middle of a
connection and back, and bad input on a connection that is also serving."""

from __future__ import annotations

import gc
import json
import re

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from pushsvc.http import PushChannel
from pushsvc.http.lean_request import LeanRequest
from tests import raw
from tests.helpers import ServerTestCase, eventually, run

KEY = "k1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def request(method: str, path: str, body: bytes | None = None, close: bool = False,
            headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if close:
        lines.append("Connection: close")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def push(data, to=None, **kw) -> bytes:
    body = json.dumps({"to": to or {"group": "g"}, "data": data}).encode()
    return request("POST", "/api/push", body, headers=AUTH, **kw)


def answers(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The whole answers in ``data`` (Content-Length bodies): (status, head, body)."""
    out = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            out.append((status, head, b""))
            break
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
        if len(rest) < length:
            break
        out.append((status, head, rest[:length]))
        data = rest[length:]
    return out


def normalised(data: bytes) -> bytes:
    """An answer without what changes from run to run: the date and message ids."""
    data = re.sub(rb"(?m)^Date: [^\r]*\r\n", b"", data)
    return re.sub(rb'"(id|ids)":(\[[^\]]*\]|"[^"]*")', rb'"\1":"X"', data)


class LeanTestCase(ServerTestCase):

    async def begin(self, **settings):
        self.start_server(**{"api_keys": [KEY], **settings})
        self.served = []  # the lean requests, by path
        process = LeanRequest.process

        def counted(request, *a):
            self.served.append(request.path)
            return process(request, *a)
        self.patch(LeanRequest, "process", counted)
        self.watcher = await self.client(user="w", groups=("g",))

    async def connect(self, first: bytes = b"") -> raw.RawClient:
        """A raw client, cut off at the end of the test if still there."""
        client = await raw.connect_raw(self.port, first)
        self.raw_clients = getattr(self, "raw_clients", set()) | {client}
        self.addCleanup(self.drop, client)
        return client

    async def drop(self, client: raw.RawClient) -> None:
        """Cut ``client`` off; the server lets go of its connection (the
        watcher's and the other raw clients' still count per address)."""
        if not client.lost.called:
            client.transport.abortConnection()
        await client.wait_lost()
        self.raw_clients.discard(client)
        await eventually(lambda: self.server.site.api.per_ip.held("127.0.0.1")
                         <= 1 + len(self.raw_clients), what="the server let go of the connection")

    async def tick(self) -> None:
        """A push and its answer: what clients wrote before has arrived."""
        await self.push({"group": "tick"}, 0, headers=AUTH)

    async def exchange(self, data: bytes, count: int, step: int | None = None):
        """Send ``data`` (``step`` bytes a write) on one connection; the first
        ``count`` answers, and the client."""
        client = await self.connect()
        for i in range(0, len(data), step or len(data)):
            client.transport.write(data[i:i + (step or len(data))])
        await client.wait_for(lambda: len(answers(client.data)) >= count)
        return answers(client.data), client


class SameAnswersTests(LeanTestCase):

    CASES = [
        push(1), push("x" * 100, {"user": "w"}),
        request("POST", "/api/batch", b'{"messages":[{"to":{"group":"g"},"data":1},'
                b'{"to":{"user":"w"},"data":2}]}', headers=AUTH),
        request("GET", "/api/groups", headers=AUTH), request("GET", "/api/groups/g", headers=AUTH),
        request("GET", "/api/users/w", headers=AUTH), request("GET", "/api/stats", headers=AUTH),
        request("POST", "/api/join", b'{"user":"nobody","group":"h"}', headers=AUTH),
        request("GET", "/healthz"),
        request("POST", "/api/push", b'{"to":', headers=AUTH),
        request("POST", "/api/push", b"x" * 70_000, headers=AUTH),
        request("POST", "/api/push", b"{}"),
        request("POST", "/api/push", b"{}", headers={"Authorization": "Bearer nope"}),
        request("GET", "/api/nowhere", headers=AUTH), request("GET", "/api/users", headers=AUTH),
        request("GET", "/api/push", headers=AUTH), request("GET", "/api/users/%ff", headers=AUTH),
        request("GET", "/api/groups/a%20b?x=1", headers=AUTH),
        request("POST", "/api/push", b'{"to":{"room":1},"data":1}', headers=AUTH),
        push(2, close=True),
    ]

    async def answer(self, case: bytes, lean: bool) -> bytes:
        self.patch(PushChannel, "lean", lean)
        got, client = await self.exchange(case, 1)
        self.assertEqual(len(got), 1)
        await self.drop(client)
        return normalised(client.data)

    @run
    async def test_every_answer_is_the_one_twisted_web_gives(self):
        """Each request on a connection of its own, on the lean path and
        then with twisted.web serving all: the same bytes (but the date and
        message ids), every request served by the lean path."""
        await self.begin(server_header="pushsvc")
        for i, case in enumerate(self.CASES):
            lean = await self.answer(case, True)
            web = await self.answer(case, False)
            self.assertEqual(lean, web, case[:60])
            self.assertEqual(len(self.served), i + 1)
            self.assertIn(b"\r\nServer: pushsvc\r\n", lean)


class KeepAliveTests(LeanTestCase):

    @run
    async def test_pipelined_requests_are_answered_in_order(self):
        """Pushes, a command and reads pipelined in one write, and again a
        few bytes at a time: answered in order, the messages delivered in
        order, the join seen by the push after it."""
        await self.begin()
        data = b"".join(push(i) for i in range(30))
        data += request("POST", "/api/join", b'{"user":"w","group":"late"}', headers=AUTH)
        data += push("late", {"group": "late"}) + request("GET", "/api/groups/late", headers=AUTH)
        for step in (None, 7):
            got, client = await self.exchange(data, 33, step)
            self.assertEqual([s for s, _, _ in got], [202] * 30 + [200, 202, 200])
            self.assertEqual([m["user"] for m in json.loads(got[-1][2])["members"]], ["w"])
            await self.drop(client)
        await self.watcher.barrier()
        self.assertEqual([m["data"] for m in self.watcher.messages],
                         [*range(30), "late"] * 2)
        self.assertEqual(len(self.served), 66)

    @run
    async def test_requests_behind_one_that_waits_stop_the_reading(self):
        """While a command waits for its round trip, the requests pipelined
        behind it wait too; past 16 KiB of them the connection is not read
        until the command is answered, then all are served in order."""
        await self.begin()
        waiting = Deferred()
        run_command = self.engine.run
        self.patch(self.engine, "run", lambda command: waiting.addCallback(
            lambda _: run_command(command)))
        client = await self.connect(request("POST", "/api/join", b'{"user":"w","group":"x"}',
                                            headers=AUTH))
        await eventually(lambda: len(self.served) == 1, what="the command arrived")
        from twisted.internet import reactor
        channel, = [c for c in gc.get_objects() if isinstance(c, PushChannel)
                    and c._current is not None]
        for i in range(200):
            client.transport.write(push(i))
        await eventually(lambda: channel.transport not in reactor.getReaders(),
                         what="the connection is no longer read")
        self.assertLess(len(channel._buffer), 32_768)
        waiting.callback(None)
        await client.wait_for(lambda: len(answers(client.data)) == 201)
        self.assertEqual([s for s, _, _ in answers(client.data)], [200] + [202] * 200)
        self.assertIn(channel.transport, reactor.getReaders())
        await self.watcher.barrier()
        self.assertEqual([m["data"] for m in self.watcher.messages], list(range(200)))

    @run
    async def test_keep_alive_across_requests_and_close(self):
        await self.begin()
        client = await self.connect()
        for i in range(5):
            client.transport.write(push(i))
            await client.wait_for(lambda: len(answers(client.data)) == i + 1)
        client.transport.write(push(5, close=True))
        await client.wait_lost()
        got = answers(client.data)
        self.assertEqual([s for s, _, _ in got], [202] * 6)
        self.assertIn(b"\r\nConnection: close\r\n", got[-1][1])
        self.assertNotIn(b"Connection", got[0][1])
        # What follows a request with Connection: close is not read.
        got, client = await self.exchange(push(6, close=True) + push(7) + push(8), 1)
        await client.wait_lost()
        self.assertEqual(len(answers(client.data)), 1)
        await self.watcher.barrier()
        self.assertEqual([m["data"] for m in self.watcher.messages], list(range(7)))

    @run
    async def test_chunked_bodies_pipelined(self):
        """Chunked pushes (with extensions, trailers, a CRLF CRLF in the data)
        between plain ones, in one write and byte by byte."""
        await self.begin()
        body = json.dumps({"to": {"group": "g"}, "data": "a\r\n\r\nb"}).encode()
        chunks = b"".join(b"%x;x=1\r\n%s\r\n" % (len(body[i:i + 5]), body[i:i + 5])
                          for i in range(0, len(body), 5))
        one = (b"POST /api/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\nAuthorization: "
               b"Bearer k1\r\n\r\n" + chunks + b"0\r\nX-T: 1\r\n\r\n")
        for step in (None, 1):
            got, client = await self.exchange(push(1) + one + push(2) + one, 4, step)
            self.assertEqual([s for s, _, _ in got], [202] * 4)
            await self.drop(client)
        await self.watcher.barrier()
        self.assertEqual([m["data"] for m in self.watcher.messages],
                         [1, "a\r\n\r\nb", 2, "a\r\n\r\nb"] * 2)


class HandOffTests(LeanTestCase):

    REQUESTS = [push(1), request("GET", "/metrics", headers=AUTH), push(2),
                request("GET", "/pushsvc.js"), push(3)]

    @run
    async def test_twisted_web_serves_the_middle_of_a_connection(self):
        """A push, /metrics and a static file (twisted.web), pushes again:
        pipelined, twisted.web serves from the first request that is its
        own on; one at a time, the pushes after it are the lean path's again."""
        await self.begin()
        got, client = await self.exchange(b"".join(self.REQUESTS), 5)
        self.assertEqual([s for s, _, _ in got], [202, 200, 202, 200, 202])
        self.assertIn(b"pushsvc_", got[1][2])
        self.assertEqual(self.served, [b"/api/push"])
        client = await self.connect()
        for i, one in enumerate(self.REQUESTS):
            client.transport.write(one)
            await client.wait_for(lambda: len(answers(client.data)) == i + 1)
        self.assertEqual([s for s, _, _ in answers(client.data)], [202, 200, 202, 200, 202])
        self.assertEqual(self.served, [b"/api/push"] * 4)
        await self.watcher.barrier()
        self.assertEqual([m["data"] for m in self.watcher.messages], [1, 2, 3] * 2)

    @run
    async def test_a_websocket_upgrade_after_pushes(self):
        await self.begin()
        client = await self.connect(push(1) + push(2) + raw.handshake())
        await client.wait_for(lambda: b'"op":"welcome"' in client.data)
        self.assertEqual([s for s, _, _ in answers(client.data)], [202, 202, 101])
        client.transport.write(raw.text({"op": "ping", "ref": 1}))
        await client.wait_for(lambda: b'{"op":"pong","ref":1}' in client.data)


class BadInputTests(LeanTestCase):

    def error(self, code, message):
        return json.dumps({"error": {"code": code, "message": message}},
                          separators=(",", ":")).encode() + b"\n"

    @run
    async def test_pipelined_garbage_after_good_requests(self):
        """Good requests are answered, then the garbage gets twisted.web's
        JSON 400, 431 or the lean path's 400, and the connection closes."""
        await self.begin()
        chunked_bad = (b"POST /api/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                       b"Authorization: Bearer k1\r\n\r\nzz\r\n")
        cases = [
            (b"GARBAGE\r\n\r\n", 400, self.error("bad_request", "not a valid HTTP request")),
            (b"GET /x HTTP/1.1\r\nBad Name: 1\r\n\r\n", 400,
             self.error("bad_request", "not a valid HTTP request")),
            (request("GET", "/healthz", headers={"X-Big": "b" * 20_000}), 431,
             self.error("too_large", "the request line and headers are larger than 16384 "
                                     "bytes, or more than 500 headers")),
            (chunked_bad, 400, self.error("bad_request", "not a valid HTTP request")),
        ]
        for garbage, status, body in cases:
            got, client = await self.exchange(push(1) + push(2) + garbage + push(3), 3)
            await client.wait_lost()
            self.assertEqual([(s, b) for s, _, b in answers(client.data)][2:],
                             [(status, body)], garbage[:40])
            self.assertEqual([s for s, _, _ in got[:2]], [202, 202])
        await self.watcher.barrier()
        self.assertEqual([m["data"] for m in self.watcher.messages], [1, 2] * len(cases))

    @run
    async def test_bodies_over_the_limit_and_malformed_keep_the_connection(self):
        await self.begin()
        data = (request("POST", "/api/push", b"x" * 70_000, headers=AUTH) + push(1)
                + request("POST", "/api/push", b"[" * 5000, headers=AUTH) + push(2))
        got, client = await self.exchange(data, 4, 1000)
        self.assertEqual([s for s, _, _ in got], [413, 202, 400, 202])
        self.assertEqual(self.engine.counters["http_too_large"], 1)

    @run
    async def test_a_client_that_never_reads_its_answers_is_not_read_either(self):
        """Pipelining without reading fills the server's send buffer; then
        it stops reading, as twisted.web does, instead of queueing answers."""
        await self.begin()
        client = await self.connect()
        client.transport.pauseProducing()
        big = request("GET", "/api/stats", headers={**AUTH, "X-Pad": "p" * 8000})
        for _ in range(2000):
            client.transport.write(big)
        await eventually(lambda: len(self.served) > 50, what="some served")
        await eventually(lambda: client.transport.dataBuffer or client.transport._tempDataBuffer,
                         what="the client's writes held back")
        served = len(self.served)
        self.assertLess(served, 2000)
        client.transport.resumeProducing()
        # (counted by status line: parsing every answer at each read is quadratic)
        await client.wait_for(lambda: client.data.count(b"HTTP/1.1 200 ") == 2000, timeout=30)
        self.assertEqual(len(answers(client.data)), 2000)
        self.assertEqual(len(self.served), 2000)


class DeadlineTests(LeanTestCase):
    clock = None

    def setUp(self):
        self.clock = Clock()

    @run
    async def test_slow_heads_and_bodies_after_good_requests_are_cut_off(self):
        """After answered pushes, a request that trickles in (its head, or
        its body) is cut off handshake_timeout after the last answer,
        counted as slow; an idle kept-alive connection is closed, not counted."""
        await self.begin(handshake_timeout=10.0)
        starts = [b"", b"POST /api/push HTTP/1.1\r\n",
                  b"POST /api/push HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
                  b"POST /api/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"]
        clients = []
        for start in starts:
            client = await self.connect(push(1))
            await client.wait_for(lambda c=client: len(answers(c.data)) == 1)
            client.transport.write(start)
            clients.append(client)
        await self.tick()
        for _ in range(3):
            self.clock.advance(3)
            for client in clients[1:]:
                client.transport.write(b"x")
            await self.tick()
        self.assertFalse(any(c.lost.called for c in clients))
        self.clock.advance(2)
        for client in clients:
            await client.wait_lost()
        self.assertEqual(self.engine.counters["slow_handshakes"], 3)
        self.assertEqual([len(answers(c.data)) for c in clients], [1] * 4)


class NoCycleTests(LeanTestCase):
    """What a connection of the lean path makes (its channel, llhttp's
    parser and callbacks, the WebSocket protocol) goes with it by reference
    counting: a connect storm leaves the garbage collector nothing to find."""

    @run
    async def test_connections_leave_no_reference_cycle(self):
        await self.begin()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(gc.garbage.clear)
        self.addCleanup(gc.set_debug, 0)
        clients = [await raw.open_raw(self.port) for _ in range(5)]
        api = await self.connect(push(1) + push(2, close=True))
        await api.wait_lost()
        for client in clients:
            client.transport.loseConnection()
            await client.wait_lost()
        await eventually(lambda: len(self.server.ws_factory.connections) == 1,
                         what="the server let go of the WebSocket connections")
        gc.collect()
        left = [type(o).__qualname__ for o in gc.garbage
                if type(o).__module__.startswith(("pushsvc", "httptools", "autobahn"))]
        self.assertEqual(left, [])
        self.assertEqual(len(answers(api.data)), 2)
