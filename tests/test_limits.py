"""Limits against abuse: the I/O-free pieces of pushsvc.limits directly, then
each limit over real loopback sockets (message rate, Origin allow-list,
connections per address, request size, request deadline), asserting the
error or close code, the counter, and that the server goes on serving.

Time is a task.Clock wherever a limit depends on it; nothing sleeps.
"""

from __future__ import annotations

import gc
from dataclasses import replace

from twisted.internet.task import Clock
from twisted.trial import unittest

from pushsvc.client import ConnectionClosed, ServerError, connect
from pushsvc.config import ConfigError, build_settings
from pushsvc.http import PushChannel
from pushsvc.limits import OriginPolicy, PerAddress, Proxies, RateGuard, TokenBucket, address_key
from tests import raw
from tests.helpers import ServerTestCase, eventually, run


class TokenBucketTests(unittest.TestCase):
    def test_starts_full_then_refuses(self):
        bucket = TokenBucket(rate=2, burst=3, now=100.0)
        self.assertEqual([bucket.take(100.0) for _ in range(4)], [True, True, True, False])

    def test_refills_at_the_rate_up_to_the_burst(self):
        bucket = TokenBucket(rate=2, burst=3, now=0.0)
        for _ in range(3):
            bucket.take(0.0)
        self.assertFalse(bucket.take(0.4))          # 0.8 tokens
        self.assertTrue(bucket.take(0.5))           # 1.0
        self.assertFalse(bucket.take(0.5))
        self.assertEqual([bucket.take(100.0) for _ in range(4)], [True, True, True, False])

    def test_rate_zero_is_no_limit(self):
        bucket = TokenBucket(rate=0, burst=1, now=0.0)
        self.assertTrue(all(bucket.take(0.0) for _ in range(10_000)))

    def test_time_going_back_refills_nothing(self):
        bucket = TokenBucket(rate=1, burst=1, now=50.0)
        self.assertTrue(bucket.take(50.0))
        self.assertFalse(bucket.take(10.0))
        self.assertFalse(bucket.take(10.5))         # counted from 10.0 now
        self.assertTrue(bucket.take(11.0))

    def test_configure_caps_the_tokens(self):
        bucket = TokenBucket(rate=1, burst=10, now=0.0)
        bucket.configure(rate=1, burst=2)
        self.assertEqual([bucket.take(0.0) for _ in range(3)], [True, True, False])


class PerAddressTests(unittest.TestCase):
    def test_acquire_up_to_the_limit_and_release(self):
        per = PerAddress(2)
        a, _ = per.acquire("1.2.3.4"), per.acquire("1.2.3.4")
        self.assertIsNone(per.acquire("1.2.3.4"))
        self.assertIsNotNone(per.acquire("5.6.7.8"))
        a.release()
        a.release()  # once only
        self.assertEqual(per.held("1.2.3.4"), 1)
        self.assertIsNotNone(per.acquire("1.2.3.4"))
        self.assertIsNone(per.acquire("1.2.3.4"))

    def test_counts_go_when_the_last_connection_goes(self):
        per = PerAddress(0)  # no limit, still counted
        slots = [per.acquire(f"10.0.0.{i % 3}") for i in range(1000)]
        self.assertEqual(len(per), 3)
        for slot in slots:
            slot.release()
        self.assertEqual((len(per), per.counts), (0, {}))

    def test_address_keys(self):
        self.assertEqual(address_key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(address_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("2001:db8:1:2::99"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(address_key("not-an-ip"), "not-an-ip")


class ProxiesTests(unittest.TestCase):
    def test_no_proxies_never_read_the_header(self):
        proxies = Proxies()
        self.assertFalse(proxies.trusts("127.0.0.1"))
        self.assertEqual(proxies.client("127.0.0.1", [b"203.0.113.9"]), "127.0.0.1")

    def test_the_right_most_untrusted_address_is_the_client(self):
        proxies = Proxies(["127.0.0.1", "10.0.0.0/8"])
        self.assertEqual(proxies.client("10.1.2.3", [b"203.0.113.9"]), "203.0.113.9")
        # The client wrote a fake first entry; the proxies appended the truth.
        self.assertEqual(proxies.client("127.0.0.1", [b"1.1.1.1, 203.0.113.9, 10.0.0.5"]),
                         "203.0.113.9")
        self.assertEqual(proxies.client("127.0.0.1", [b"1.1.1.1", b"203.0.113.9"]),
                         "203.0.113.9")

    def test_an_untrusted_peer_or_garbage_is_the_peer(self):
        proxies = Proxies(["10.0.0.0/8"])
        self.assertEqual(proxies.client("192.0.2.1", [b"203.0.113.9"]), "192.0.2.1")
        self.assertEqual(proxies.client("10.0.0.1", [b"203.0.113.9, junk"]), "10.0.0.1")
        self.assertEqual(proxies.client("10.0.0.1", None), "10.0.0.1")
        self.assertEqual(proxies.client("10.0.0.1", [b"10.0.0.2"]), "10.0.0.1")

    def test_bad_networks_are_config_errors(self):
        with self.assertRaises(ValueError):
            Proxies(["10.0.0.0/33"])


class OriginPolicyTests(unittest.TestCase):
    def test_empty_allows_any(self):
        self.assertTrue(OriginPolicy().allows("https://evil.example"))

    def test_exact_origins(self):
        policy = OriginPolicy(["https://app.example.com", "http://localhost:3000"])
        for origin in ("https://app.example.com", "HTTPS://App.Example.com",
                       "https://app.example.com:443", "http://localhost:3000", None):
            self.assertTrue(policy.allows(origin), origin)
        for origin in ("http://app.example.com", "https://app.example.com:8443",
                       "https://evil.example", "https://app.example.com.evil.example",
                       "http://localhost:3001", "null", ""):
            self.assertFalse(policy.allows(origin), origin)

    def test_wildcard_subdomains_and_null(self):
        policy = OriginPolicy(["https://*.example.com", "null"])
        self.assertTrue(policy.allows("https://a.example.com"))
        self.assertTrue(policy.allows("https://a.b.example.com"))
        self.assertTrue(policy.allows("null"))
        for origin in ("https://example.com", "https://evilexample.com",
                       "https://a.example.com:8443", "http://a.example.com",
                       "https://x/.example.com", "https://a@b.example.com"):
            self.assertFalse(policy.allows(origin), origin)

    def test_settings_are_checked(self):
        for bad in (["https://app.example.com/"], ["app.example.com"], ["*"],
                    ["https://app.example.com/path"], [1]):
            with self.assertRaises(ConfigError) as e:
                build_settings(overrides={"allowed_origins": bad})
            self.assertEqual(e.exception.setting, "http.allowed_origins")
        with self.assertRaises(ConfigError) as e:
            build_settings(overrides={"trusted_proxies": ["10.0.0.0/99"]})
        self.assertEqual(e.exception.setting, "http.trusted_proxies")
        settings = build_settings(overrides={"allowed_origins": ["HTTPS://A.example.com:443"]})
        self.assertEqual(settings.allowed_origins, ["https://a.example.com"])

class RawTestCase(ServerTestCase):
    """Tests with raw clients end by waiting until the server has let go of
    every connection (so no timer of a closing one outlives the test)."""

    def raw_cleanup(self, *clients: raw.RawClient) -> None:
        for client in clients:
            self.addCleanup(client.transport.abortConnection)

    async def all_gone(self) -> None:
        api = self.server.site.api
        await eventually(lambda: not api.per_ip.counts and not api.refusing.counts
                         and not self.server.ws_factory.connections,
                         what="every connection gone")


class ClockedTestCase(RawTestCase):
    def setUp(self):
        self.clock = Clock()


class RateLimitTests(ClockedTestCase):
    """A session's messages (and pings) through a token bucket on the engine's clock."""

    @run
    async def test_over_the_rate_is_refused_with_its_ref_and_the_session_stays(self):
        self.start_server(messages_per_second=10.0, message_burst=5)
        other = await self.client(user="other", groups=("g",))
        c = await self.client()                          # 0 tokens spent so far
        for i in range(5):
            await c.request("ping")                      # burst of 5: all served
        with self.assertRaises(ServerError) as e:
            await c.request("join", group="g")
        self.assertEqual((e.exception.code, e.exception.frame["ref"]), ("rate_limited", 6))
        self.assertEqual(self.engine.registry.get(c.session).groups, set())  # not served
        frames = len(c.frames)
        c.sendMessage(b'{"op":"ping","ref":[1]}')       # refused again: not answered,
        c.sendMessage(b"\xff" * 10, isBinary=True)      # one error a window is enough
        await eventually(lambda: self.engine.counters["rate_limited"] == 3,
                         what="both refused")
        self.clock.advance(0.1)                          # one token back
        await c.request("join", group="g")
        self.assertEqual(c.frames[frames:], [{"op": "ok", "ref": 7}])
        self.assertEqual(self.engine.counters["rate_limited"], 3)
        self.clock.advance(RateGuard.WINDOW)             # a new window: told again
        for _ in range(5):
            c.send_json({"op": "ping"})
        with self.assertRaises(ServerError) as e:
            await c.request("ping")
        self.assertEqual(e.exception.code, "rate_limited")
        self.assertIsNone(c.close_code)
        msg_id = await self.push({"group": "g"}, "hi")
        await other.barrier()
        self.assertEqual([m["id"] for m in other.messages], [msg_id])

    @run
    async def test_refusals_that_outnumber_what_was_served_close_with_1008(self):
        self.start_server(messages_per_second=1.0, message_burst=4)
        other = await self.client(user="other", groups=("g",))
        c = await self.client()
        for i in range(12):
            c.send_json({"op": "ping", "ref": i})
        code, reason = await c.closed
        self.assertEqual((code, reason), (1008, "sending too fast"))
        self.assertEqual([(f["op"], f.get("code"), f["ref"]) for f in c.frames[1:]],
                         [("pong", None, i) for i in range(4)]
                         + [("error", "rate_limited", 4)])  # one error, then silence
        self.assertEqual((self.engine.counters["rate_limited"],
                          self.engine.counters["dropped_flood"]), (4, 1))
        await eventually(lambda: len(self.engine.registry) == 1, what="the flooder gone")
        msg_id = await self.push({"group": "g"}, "still here")
        await other.barrier()
        self.assertEqual([m["id"] for m in other.messages], [msg_id])

    @run
    async def test_a_flood_paced_below_the_run_threshold_is_closed(self):
        """Issue 17: a token back every 20 ms broke the run of refusals, so a
        client sending far over the rate was refused forever, never closed."""
        self.start_server(messages_per_second=50.0, message_burst=20)
        other = await self.client(user="other", groups=("g",))
        c = await self.client()
        for _ in range(40):                              # 500 a second, 10 times the rate
            if c.closed.called:
                break
            for _ in range(10):
                if c.state == c.STATE_OPEN:
                    c.send_json({"op": "ping"})
            await other.barrier()
            self.clock.advance(0.02)                     # one token back
        code, reason = await c.closed
        self.assertEqual((code, reason), (1008, "sending too fast"))
        errors = [f for f in c.frames if f["op"] == "error"]
        self.assertEqual(len(errors), 1)                 # not one per refused frame
        self.assertEqual(self.engine.counters["dropped_flood"], 1)
        self.assertLess(self.engine.counters["rate_limited"], 60)

    @run
    async def test_unasked_pongs_spend_tokens_too(self):
        self.start_server(messages_per_second=1.0, message_burst=3)
        client = await raw.open_raw(self.port)
        client.transport.write(b"".join(raw.frame(b"q%d" % i, raw.PONG) for i in range(6)))
        self.assertEqual(await raw.answer_close(client), 1008)
        self.assertEqual(self.engine.counters["dropped_flood"], 1)
        await self.all_gone()

    @run
    async def test_websocket_pings_spend_tokens_too(self):
        self.start_server(messages_per_second=1.0, message_burst=3)
        client = await raw.open_raw(self.port)
        client.transport.write(b"".join(raw.frame(b"p%d" % i, raw.PING) for i in range(6)))
        self.assertEqual(await raw.answer_close(client), 1008)
        self.assertEqual([p for op, p in client.frames() if op == raw.PONG], [b"p0", b"p1", b"p2"])
        self.assertEqual(self.engine.counters["dropped_flood"], 1)
        await self.all_gone()

    @run
    async def test_rate_zero_is_no_limit_and_a_reload_sets_one(self):
        self.start_server(messages_per_second=0.0, message_burst=2)
        c = await self.client()
        for _ in range(300):
            c.send_json({"op": "ping"})
        await c.barrier()
        self.assertEqual(len(c.frames), 302)
        self.server.reload(replace(self.server.settings, messages_per_second=1.0))
        await c.barrier()                                 # the burst: two tokens
        await c.barrier()
        with self.assertRaises(ServerError) as e:
            await c.barrier()
        self.assertEqual(e.exception.code, "rate_limited")


class OriginTests(RawTestCase):
    ALLOWED = ["https://app.example.com", "https://*.example.org"]

    async def handshake(self, origin: str | None) -> raw.RawClient:
        headers = {} if origin is None else {"Origin": origin}
        client = await raw.connect_raw(self.port, raw.handshake(headers=headers))
        self.clients.append(client)
        await client.wait_for(lambda: client.status is not None)
        return client

    async def drop_clients(self) -> None:
        for client in self.clients:
            client.transport.abortConnection()
        await self.all_gone()

    @run
    async def test_only_allowed_origins_and_clients_without_one_connect(self):
        self.start_server(allowed_origins=self.ALLOWED)
        self.clients = []
        for origin in ("https://app.example.com", "https://APP.example.com:443",
                       "https://chat.example.org", None):
            client = await self.handshake(origin)
            self.assertEqual(client.status, 101, origin)
            await client.wait_for(client.welcomed)
        for origin in ("https://evil.example", "http://app.example.com", "null",
                       "https://example.org", "not an origin"):
            client = await self.handshake(origin)
            await client.wait_for(client.complete)
            self.assertEqual((client.status, client.header("content-type"), client.body),
                             (403, "application/json",
                              {"error": {"code": "forbidden",
                                         "message": f"origin {origin!r} is not allowed"}}))
        self.assertEqual(self.engine.counters["refused_origin"], 5)
        await self.drop_clients()

    @run
    async def test_no_allow_list_allows_any_origin(self):
        self.start_server()
        self.clients = []
        client = await self.handshake("https://anywhere.example")
        self.assertEqual(client.status, 101)
        await self.drop_clients()


class PerAddressLimitTests(RawTestCase):
    @run
    async def test_past_the_limit_429_and_a_place_comes_back_when_one_leaves(self):
        self.start_server(max_connections_per_ip=3)
        keep = await self.client(user="keep", groups=("g",))
        leaving = await self.client(user="leaving")
        # A third connection (the HTTP push) fits.
        first = await self.push({"group": "g"}, 1)
        per_ip = self.server.site.api.per_ip
        await eventually(lambda: per_ip.held("127.0.0.1") == 2, what="the push's connection gone")
        third = await self.client(user="third")
        refused = await raw.connect_raw(self.port, raw.handshake())
        await refused.wait_lost()
        self.assertEqual((refused.status, refused.header("connection"), refused.body),
                         (429, "close", {"error": {"code": "rate_limited",
                          "message": "too many connections from your address: "
                                     "at most 3 at once"}}))
        with self.assertRaises(ConnectionClosed):
            await connect(self.url)
        self.assertEqual(self.engine.counters["refused_ip"], 2)
        await leaving.disconnect()
        await eventually(lambda: per_ip.held("127.0.0.1") == 2, what="a place freed")
        second = await self.push({"group": "g"}, 2)
        await keep.barrier()
        self.assertEqual([m["id"] for m in keep.messages], [first, second])
        await third.disconnect()
        await keep.disconnect()
        await eventually(lambda: not self.server.site.api.per_ip.counts, what="no count left")

    @run
    async def test_past_twice_the_limit_connections_are_cut_off(self):
        self.start_server(max_connections_per_ip=2)
        held = [await raw.connect_raw(self.port) for _ in range(2)]
        waiting = [await raw.connect_raw(self.port) for _ in range(2)]   # 429 to come
        cut = await raw.connect_raw(self.port)
        await cut.wait_lost()
        self.assertEqual(cut.data, b"")
        await eventually(lambda: self.engine.counters["refused_ip"] == 3, what="counted")
        for client in waiting:
            client.transport.write(raw.http_request("GET", "/healthz"))
            await client.wait_lost()
            self.assertEqual(client.status, 429)
        for client in held:
            client.transport.write(raw.http_request("GET", "/healthz"))
            await client.wait_lost()
            self.assertEqual(client.status, 200)
        await eventually(lambda: not self.server.site.api.per_ip.counts
                         and not self.server.site.api.refusing.counts, what="no count left")

    @run
    async def test_x_forwarded_for_counts_only_from_trusted_proxies(self):
        self.start_server(max_connections_per_ip=2, trusted_proxies=["127.0.0.0/8"])
        xff = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}
        a = await raw.open_raw(self.port, xff)
        b = await raw.open_raw(self.port, xff)
        c = await raw.connect_raw(self.port, raw.handshake(headers=xff))
        await c.wait_lost()
        self.assertEqual((c.status, c.body["error"]["code"]), (429, "rate_limited"))
        other = await raw.open_raw(self.port, {"X-Forwarded-For": "203.0.113.6"})
        self.assertEqual(self.server.site.api.per_ip.counts,
                         {"203.0.113.5": 2, "203.0.113.6": 1})
        for client in (a, b, other):
            client.transport.abortConnection()
        await self.all_gone()

    @run
    async def test_x_forwarded_for_is_ignored_without_trusted_proxies(self):
        self.start_server(max_connections_per_ip=1)
        a = await raw.open_raw(self.port, {"X-Forwarded-For": "203.0.113.5"})
        b = await raw.connect_raw(self.port, raw.handshake(
            headers={"X-Forwarded-For": "203.0.113.6"}))
        await b.wait_lost()
        self.assertEqual(b.status, 429)
        self.assertEqual(self.server.site.api.per_ip.counts, {"127.0.0.1": 1})
        a.transport.abortConnection()
        await self.all_gone()


class RequestSizeTests(RawTestCase):
    async def answer(self, request: bytes) -> raw.RawClient:
        client = await raw.connect_raw(self.port, request)
        await client.wait_lost()
        return client

    @run
    async def test_headers_over_the_limit_are_431_json(self):
        self.start_server(max_header_bytes=2048)
        message = ("the request line and headers are larger than 2048 bytes, "
                   "or more than 500 headers")
        for request in (
                raw.http_request("GET", "/healthz", headers={"X-Big": "x" * 1500,
                                                             "X-Big2": "y" * 1500}),
                raw.http_request("GET", "/healthz", headers={"X-Big": "x" * 4000}),
                raw.http_request("GET", "/api/groups?" + "q" * 3000),
                raw.handshake(headers={"Cookie": "c" * 3000})):
            client = await self.answer(request)
            self.assertEqual((client.status, client.header("content-type"), client.body),
                             (431, "application/json",
                              {"error": {"code": "too_large", "message": message}}))
        self.assertEqual(self.engine.counters["http_too_large"], 4)
        self.assertEqual(await self.http("GET", "/healthz"), (200, {"status": "ok",
                                                                     "sessions": 0}))

    @run
    async def test_too_many_headers_are_431(self):
        self.start_server(max_header_bytes=65536)
        client = await self.answer(raw.http_request(
            "GET", "/healthz", headers={f"X-H{i}": "v" for i in range(600)}))
        self.assertEqual(client.status, 431)

    @run
    async def test_malformed_requests_are_400_json(self):
        self.start_server()
        for request in (b"NONSENSE\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
                        b"POST /api/push HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                        b"POST /api/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
            client = await self.answer(request)
            self.assertEqual((client.status, client.body),
                             (400, {"error": {"code": "bad_request",
                                              "message": "not a valid HTTP request"}}), request)
        self.assertEqual(self.engine.counters["http_invalid"], 4)

    @run
    async def test_the_answer_arrives_while_the_client_is_still_sending(self):
        # The server answers at 16 KiB but reads (and drops) the rest, so the
        # answer is not lost to a reset.
        self.start_server()
        client = await raw.connect_raw(self.port, b"GET /healthz HTTP/1.1\r\nX-Big: ")
        client.transport.pauseProducing()        # reads nothing until the server answered
        for _ in range(64):
            client.transport.write(b"z" * 16384)
        await eventually(lambda: self.engine.counters["http_too_large"] == 1, what="answered")
        await eventually(lambda: not client.transport.dataBuffer
                         and not client.transport._tempDataBuffer, what="all sent")
        client.transport.resumeProducing()
        await client.wait_for(client.complete)
        self.assertEqual(client.status, 431)
        client.transport.abortConnection()
        await client.wait_lost()
        await self.all_gone()


class RequestDeadlineTests(ClockedTestCase):
    @run
    async def test_a_request_trickling_in_is_cut_off_at_the_deadline(self):
        self.start_server(handshake_timeout=10.0)
        client = await raw.connect_raw(self.port)
        await eventually(lambda: self.server.site.api.per_ip.held("127.0.0.1") == 1,
                         what="accepted")
        gc.collect()
        port = client.transport.getHost().port  # this client's channel, not a leftover
        channel, = [o for o in gc.get_objects() if isinstance(o, PushChannel)
                    and o.transport is not None and o.transport.connected
                    and o.transport.getPeer().port == port]
        request = raw.handshake()
        for i in range(4):                       # a byte every 3 s: each resets an idle timer
            client.transport.write(request[i:i + 1])
            await eventually(lambda: len(channel._buffer) == i + 1, what="the byte arrived")
            self.clock.advance(3)
        await eventually(lambda: client.lost.called, timeout=5, what="cut off at 10 s")
        self.assertEqual(self.engine.counters["slow_handshakes"], 1)

    @run
    async def test_an_idle_keep_alive_connection_is_closed_but_not_counted(self):
        self.start_server(handshake_timeout=10.0)
        client = await raw.connect_raw(self.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.wait_for(client.complete)
        self.assertEqual(client.status, 200)
        self.clock.advance(9)
        self.assertFalse(client.lost.called)
        self.clock.advance(2)
        await client.wait_lost()
        self.assertEqual(self.engine.counters["slow_handshakes"], 0)
