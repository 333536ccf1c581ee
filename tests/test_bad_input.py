"""The bad-input battery: what a hostile or broken client can send, over real
loopback sockets (hand-made frames and requests from tests.raw).

Every test has a bystander, connected before the abuse and in group
``watch``; messages are pushed to ``watch`` while the abuse goes on.  After
each abuse ``recovered()`` checks that

- a fresh client still gets its welcome and a push;
- the bystander received every message pushed during the abuse, in order;
- the server let go of everything the abuse held: sessions, connections,
  per-address counts, and (after a garbage collection) the protocol,
  channel, request and session objects are as many as before; the number of
  objects the collector tracks is back near its baseline.

The server runs on a task.Clock (time stands still unless a test advances
it), so rate limits and timeouts act at exactly known points.
"""

from __future__ import annotations

import gc
import struct
import json

from twisted.internet.defer import DeferredSemaphore, gatherResults, ensureDeferred
from twisted.internet.task import Clock

from pushsvc.http import LimitedRequest, PushChannel
from pushsvc.sessions import Session
from pushsvc.websocket import MAX_FRAGMENTS, PushServerProtocol
from tests import raw
from tests.helpers import ServerTestCase, eventually, run

WATCHED = (PushServerProtocol, PushChannel, LimitedRequest, Session)

# Objects the collector tracks may grow this much (caches, interned strings,
# the test's own bookkeeping) without counting as a leak: a leak of one object
# per abusive connection is caught exactly by the per-class counts above.
OBJECT_SLACK = 20_000


def live_objects() -> dict[str, int]:
    gc.collect()
    counts = dict.fromkeys((c.__name__ for c in WATCHED), 0)
    for obj in gc.get_objects():
        for cls in WATCHED:
            if isinstance(obj, cls):
                counts[cls.__name__] += 1
    return counts


class BadInputTestCase(ServerTestCase):
    key = None  # an API key, when the test configures one

    def setUp(self):
        self.clock = Clock()

    async def begin(self, **settings) -> None:
        self.start_server(**settings)
        self.bystander = await self.client(user="bystander", groups=("watch",))
        self.pushed: list[tuple[str, int]] = []  # (message id, data)
        self.baseline = live_objects()
        self.baseline_total = len(gc.get_objects())

    def headers(self):
        return {"Authorization": f"Bearer {self.key}"} if self.key else None

    async def push_watch(self, count: int = 1) -> None:
        for _ in range(count):
            number = self.numbered = getattr(self, "numbered", 0) + 1
            msg_id = await self.push({"group": "watch"}, number, headers=self.headers())
            self.pushed.append((msg_id, number))

    async def recovered(self) -> None:
        await self.push_watch()
        fresh = await self.client(user="fresh", groups=("fresh",))
        msg_id = await self.push({"group": "fresh"}, "hello", headers=self.headers())
        await fresh.barrier()
        self.assertEqual(fresh.frames[0]["op"], "welcome")
        self.assertEqual([m["id"] for m in fresh.messages], [msg_id])
        await self.bystander.barrier()
        # Every message, once, in the order they were published (message ids
        # count up).
        self.assertEqual([(m["id"], m["data"]) for m in self.bystander.messages],
                         sorted(self.pushed, key=lambda p: int(p[0].rsplit(".M", 1)[1], 36)))
        self.assertIsNone(self.bystander.close_code)
        await fresh.disconnect()

        engine, api = self.engine, self.server.site.api
        await eventually(lambda: len(engine.registry) == 1
                         and len(self.server.ws_factory.connections) == 1
                         and api.per_ip.counts == {"127.0.0.1": 1}
                         and not api.refusing.counts,
                         what="everything but the bystander let go")
        self.assertEqual(list(engine.registry.users.members), ["bystander"])
        self.assertEqual(list(engine.registry.groups.members), ["watch"])
        self.assertEqual(engine.waiting, {})
        self.assertEqual(live_objects(), self.baseline)
        self.assertLess(len(gc.get_objects()), self.baseline_total + OBJECT_SLACK)

    async def closed_with(self, client: raw.RawClient) -> int | None:
        return await raw.answer_close(client)


class WebSocketBadInputTests(BadInputTestCase):

    @run
    async def test_invalid_utf8_in_text_frames_closes_with_1007(self):
        await self.begin()
        payloads = [
            raw.frame(b'{"op":"ping","ref":"\xff\xfe"}'),
            raw.frame(b'{"op":"\xc0\xaf"}'),                 # overlong encoding
            raw.frame(b'{"op":"\xed\xa0\x80"}'),             # an encoded surrogate
            raw.frame(b'{"op":"pi', fin=False)
            + raw.frame(b'ng\xf4\x90\x80\x80"}', raw.CONTINUATION),  # past U+10FFFF
        ]
        clients = [await raw.open_raw(self.port) for _ in payloads]
        for client, payload in zip(clients, payloads):
            client.transport.write(payload)
        await self.push_watch(2)
        self.assertEqual([await self.closed_with(c) for c in clients], [1007] * 4)
        self.assertEqual(self.engine.counters["dropped_invalid"], 4)
        await self.recovered()

    @run
    async def test_invalid_close_frames_get_a_close_frame_not_a_reset(self):
        """A close frame with a code no one may send, a 1-byte or 126-byte
        body, or a reason that is not UTF-8, is answered with the server's own
        close (1002; 1007 for the reason) before the connection ends; the
        connection is not reset under it (issue 17)."""
        await self.begin()
        bad = [struct.pack("!H", code) for code in (0, 999, 1004, 1005, 1006, 1015, 1016,
                                                     1100, 2000, 2999, 5000, 65535)]
        bad += [b"\x03", struct.pack("!H", 1000) + b"x" * 124,
                struct.pack("!H", 1000) + b"\xff\xfe"]
        expected = [1002] * 14 + [1007]
        clients = [await raw.open_raw(self.port) for _ in bad]
        for client, payload in zip(clients, bad):
            client.transport.write(raw.frame(payload, raw.CLOSE))
        for client in clients:
            await client.wait_lost()
        self.assertEqual([c.close_code for c in clients], expected)
        self.assertEqual([c.reset for c in clients], [False] * len(bad))
        await self.recovered()

    @run
    async def test_invalid_json_deep_nesting_huge_numbers_and_strings_are_answered(self):
        await self.begin()
        c = await self.client()
        not_json = {"code": "bad_request", "message": "not valid JSON"}
        too_deep = {"code": "bad_request", "message": "JSON nested too deep"}
        not_object = {"code": "bad_request", "message": "a frame must be a JSON object"}
        cases = [
            (b'{"op":', not_json),
            (b"", not_json),
            (b"\x00\x01", not_json),
            (b'{"op":"ping"} trailing', not_json),
            (b'{"op":NaN}', not_json),
            (b"[" * 10_000 + b"]" * 10_000, too_deep),
            (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, too_deep),
            (b'{"op":"ping","ref":' + b"9" * 5000 + b"}", not_json),   # > 4300 digits
            (b'{"op":"ping","ref":1e999999}', not_json),
            (b'{"op":"ping","ref":-1e400}', not_json),
            (json.dumps("x" * 60_000).encode(), not_object),
            (b'{"op":"' + b"o" * 60_000 + b'"}', None),                  # unknown op
        ]
        for payload, expected in cases:
            c.sendMessage(payload)
        await self.push_watch()
        # A huge but valid ref and number come back as they were.
        big_ref = "r" * 60_000
        pong = await c.request("ping")
        frames = [f for f in c.frames[1:] if f is not pong]
        self.assertEqual(len(frames), len(cases))
        for frame, (payload, expected) in zip(frames, cases):
            if expected is None:
                self.assertEqual((frame["op"], frame["code"]), ("error", "unknown_op"))
                self.assertLess(len(frame["message"]), 300)
            else:
                self.assertEqual(frame, {"op": "error", **expected}, payload[:40])
        c.send_json({"op": "ping", "ref": big_ref})
        c.sendMessage(b'{"op":"ping","ref":' + b"9" * 4000 + b"}")
        await c.barrier()
        self.assertEqual(c.frames[-3]["ref"], big_ref)
        self.assertEqual(c.frames[-2]["ref"], int("9" * 4000))
        await c.disconnect()
        await self.recovered()

    @run
    async def test_frames_over_the_limit_close_with_1009(self):
        await self.begin()
        half = 40_000
        payloads = [
            raw.frame(b"", length=2 ** 62),                   # a claimed length, no bytes
            raw.frame(b'{"op":"ping","ref":"' + b"x" * 70_000 + b'"}'),
            raw.frame(b"x" * half, fin=False) + raw.frame(b"x" * half, raw.CONTINUATION),
            raw.frame(b"\x00" * 70_000, raw.BINARY),
        ]
        clients = [await raw.open_raw(self.port) for _ in payloads]
        for client, payload in zip(clients, payloads):
            client.transport.write(payload)
        await self.push_watch(2)
        self.assertEqual([await self.closed_with(c) for c in clients], [1009] * 4)
        self.assertEqual(self.engine.counters["dropped_large"], 4)
        await self.recovered()

    @run
    async def test_floods_of_tiny_fragments_and_messages(self):
        await self.begin(messages_per_second=50.0, message_burst=200)
        one_byte = await raw.open_raw(self.port)
        empty = await raw.open_raw(self.port)
        tiny_messages = await raw.open_raw(self.port)
        fragments = 5 * MAX_FRAGMENTS
        one_byte.transport.write(raw.frame(b"{", fin=False) + b"".join(
            raw.frame(b" ", raw.CONTINUATION, fin=False) for _ in range(fragments)))
        empty.transport.write(raw.frame(b"", fin=False) + b"".join(
            raw.frame(b"", raw.CONTINUATION, fin=False) for _ in range(fragments)))
        tiny_messages.transport.write(b"".join(raw.frame(b"{}") for _ in range(1000)))
        await self.push_watch(2)
        self.assertEqual(await self.closed_with(one_byte), 1009)
        self.assertEqual(await self.closed_with(empty), 1009)
        self.assertEqual(await self.closed_with(tiny_messages), 1008)
        # The bucket held 200: those were served (each a bad_request); the
        # first refusal was answered rate_limited, the others were not, and
        # the 200th closed it (as many refused as served).
        codes = [f["code"] for f in tiny_messages.json_frames() if f["op"] == "error"]
        self.assertEqual(codes, ["bad_request"] * 200 + ["rate_limited"])
        counters = self.engine.counters
        self.assertEqual((counters["dropped_large"], counters["rate_limited"],
                          counters["dropped_flood"]), (2, 200, 1))
        await self.recovered()

    @run
    async def test_messages_in_many_fragments_spend_the_rate_too(self):
        await self.begin(messages_per_second=50.0, message_burst=200)
        client = await raw.open_raw(self.port)
        one = raw.frame(b"{", fin=False) + b"".join(
            raw.frame(b" ", raw.CONTINUATION, fin=False) for _ in range(998)) + raw.frame(
            b"}", raw.CONTINUATION)
        client.transport.write(one * 20)  # 20 messages, each ~63 tokens' worth
        await self.push_watch(2)
        self.assertEqual(await self.closed_with(client), 1008)
        served = [f for f in client.json_frames() if f["op"] == "error"]
        self.assertLess(len(served), 20)
        self.assertEqual(self.engine.counters["dropped_flood"], 1)
        await self.recovered()

    @run
    async def test_connections_reset_mid_frame(self):
        await self.begin()
        joined = []
        for i in range(20):
            client = await raw.open_raw(self.port)
            client.transport.write(raw.text({"op": "join", "group": "watch", "ref": i}))
            joined.append(client)
        await eventually(lambda: len(self.engine.registry.groups.members["watch"]) == 21,
                         what="all joined")
        # Half a frame (its header promises more), then a reset, while
        # messages to their group are being written to them.
        cut = raw.frame(b'{"op":"ping","ref":"' + b"z" * 500 + b'"}')
        for i, client in enumerate(joined):
            client.transport.write(cut[: 2 + i * 20])
        pushes = [ensureDeferred(self.push_watch()) for _ in range(5)]
        for client in joined:
            client.transport.abortConnection()
        await gatherResults(pushes)
        # A reset in the middle of the handshake, too.
        for i in range(10):
            client = await raw.connect_raw(self.port, raw.handshake()[: 10 + i * 10])
            client.transport.abortConnection()
        await self.recovered()

    @run
    async def test_handshakes_that_never_finish_are_cut_off(self):
        await self.begin(handshake_timeout=10.0)
        handshake = raw.handshake()
        starts = [
            b"",                                              # says nothing
            b"G",                                             # a byte
            b"GET /ws HTTP/1.1\r\n",                          # a request line
            handshake[:-2],                                   # all but the last CRLF
            b"POST /api/push HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",  # a body promised
            b"POST /api/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ]
        more = {2: b"X-Slow: 1\r\n", 3: b"X-Slow: 1\r\n", 4: b"x", 5: b"c"}
        clients = [await raw.connect_raw(self.port, start) for start in starts * 5]
        await eventually(lambda: self.server.site.api.per_ip.held("127.0.0.1") == 31,
                         what="all accepted")
        await self.push_watch()
        for step in range(3):                 # trickle more, every 3 s
            for i, client in enumerate(clients):
                if i % len(starts) in more:
                    client.transport.write(more[i % len(starts)])
            self.clock.advance(3)
        await self.push_watch()
        self.assertFalse(any(c.lost.called for c in clients))
        self.clock.advance(2)                 # t = 11 s
        await gatherResults([c.wait_lost() for c in clients])
        self.assertEqual(self.engine.counters["slow_handshakes"], len(clients))
        self.assertTrue(all(c.data == b"" for c in clients))
        await self.recovered()

    @run
    async def test_thousands_of_rapid_connect_close_cycles(self):
        await self.begin()
        cycles, at_once = 2000, 25
        limit = DeferredSemaphore(at_once)

        async def cycle(i: int) -> None:
            kind = i % 4
            if kind == 0:                     # connect, reset
                client = await raw.connect_raw(self.port)
                client.transport.abortConnection()
            elif kind == 1:                   # connect, close
                client = await raw.connect_raw(self.port)
                client.transport.loseConnection()
            elif kind == 2:                   # a session, reset without a close
                client = await raw.open_raw(self.port)
                client.transport.abortConnection()
            else:                             # a session, closed properly
                client = await raw.open_raw(self.port)
                client.transport.write(raw.frame(b"\x03\xe8", raw.CLOSE))
            await client.wait_lost()

        for first in range(0, cycles, 250):
            await gatherResults([limit.run(lambda i=i: ensureDeferred(cycle(i)))
                                 for i in range(first, first + 250)])
            await self.push_watch()
        self.assertEqual(self.engine.ids._sessions, 1 + cycles // 2)
        await self.recovered()


class HttpBadInputTests(BadInputTestCase):
    key = "k1"

    @run
    async def test_an_http_api_flood_with_bad_bodies(self):
        await self.begin(api_keys=[self.key])
        auth = {"Authorization": f"Bearer {self.key}"}

        def error(code, message):
            return {"error": {"code": code, "message": message}}

        not_json = error("bad_request", "not valid JSON")
        cases = [
            (raw.http_request("POST", "/api/push", b'{"to":', auth), 400, not_json),
            (raw.http_request("POST", "/api/push", b"[" * 10_000 + b"]" * 10_000, auth), 400,
             error("bad_request", "JSON nested too deep")),
            (raw.http_request("POST", "/api/push", b'{"to":{"all":true},"data":'
                              + b"9" * 5000 + b"}", auth), 400, not_json),
            (raw.http_request("POST", "/api/push", b'{"data":1e999}', auth), 400, not_json),
            (raw.http_request("POST", "/api/push", b"\xff\xfe{}", auth), 400, not_json),
            (raw.http_request("POST", "/api/push", b"x" * 70_000, auth), 413,
             error("too_large", "the body is larger than 65536 bytes")),
            (raw.http_request("POST", "/api/push", b'{"to":{"room":1},"data":1}', auth), 400,
             error("bad_request", "'to' has unknown key 'room'")),
            (raw.http_request("POST", "/api/batch", b'{"messages":[' + b"{}," * 2000
                              + b"{}]}", auth), 413,
             error("too_large", "2001 messages; the limit is 1000")),
            (raw.http_request("POST", "/api/join", b'{"user":"u","session":"s","group":"g"}', auth), 400,
             error("bad_request", "give exactly one of 'user' or 'session'")),
            (raw.http_request("POST", "/api/push", b"{}"), 401,
             error("unauthorized", "send 'Authorization: Bearer <api key>'")),
            (raw.http_request("POST", "/api/push", b"{}", {"Authorization": "Bearer nope"}),
             401, error("unauthorized", "the API key is not valid")),
            (b"POST /api/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
             error("bad_request", "not a valid HTTP request")),
            (raw.http_request("POST", "/api/push", b"{}", {"X-Big": "b" * 20_000}), 431,
             error("too_large", "the request line and headers are larger than 16384 "
                                "bytes, or more than 500 headers")),
        ]
        requests, at_once = 500, 25
        limit = DeferredSemaphore(at_once)
        answers = []

        async def one(i: int) -> None:
            request, status, body = cases[i % len(cases)]
            client = await raw.connect_raw(self.port, request)
            await client.wait_lost()
            answers.append((client.status, client.header("content-type"), client.body))
            self.assertEqual((client.status, client.body), (status, body), request[:60])

        for first in range(0, requests, 100):
            await gatherResults([limit.run(lambda i=i: ensureDeferred(one(i)))
                                 for i in range(first, first + 100)])
            await self.push_watch()
        self.assertEqual(len(answers), requests)
        self.assertEqual({a[1] for a in answers}, {"application/json"})
        counters = self.engine.counters
        by_status: dict[int, int] = {}
        for i in range(requests):
            status = cases[i % len(cases)][1]
            by_status[status] = by_status.get(status, 0) + 1
        self.assertEqual((counters["http_invalid"], counters["http_bad_key"],
                          counters["http_too_large"]),
                         (by_status[400], by_status[401], by_status[413] + by_status[431]))
        self.assertEqual(counters["published"], len(self.pushed))
        await self.recovered()
