"""The I/O edges without sockets: the HTTP connection and the WebSocket
protocol driven in memory (twisted.test.iosim) on a MemoryReactorClock, so
liveness, deadlines, flow control and HTTP errors run in milliseconds."""

from __future__ import annotations

import itertools
import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial import unittest

from pushsvc.server import PushServer
from tests.helpers import settings
from tests.raw import CLOSE, PING, RawClient, frame, handshake, http_request, text

_ports = itertools.count(40000)


class MemoryEdgeTestCase(unittest.TestCase):
    """A one-process server whose reactor and clock are a MemoryReactorClock."""

    def start(self, **overrides) -> PushServer:
        self.reactor = MemoryReactorClock()
        self.server = PushServer(settings(**overrides), self.reactor, clock=self.reactor)
        self.server.startService()
        self.addCleanup(self.server.engine.stop)
        return self.server

    @property
    def counters(self):
        return self.server.engine.counters

    def connect(self, first: bytes = b"") -> tuple[RawClient, iosim.IOPump]:
        """A raw client on an in-memory connection that has written ``first``."""
        peer = IPv4Address("TCP", "127.0.0.1", next(_ports))
        host = IPv4Address("TCP", "127.0.0.1", 8080)
        server = self.server.site.buildProtocol(peer)
        client = RawClient()
        pump = iosim.connect(server, iosim.FakeTransport(server, True, host, peer),
                             client, iosim.FakeTransport(client, False, peer, host),
                             greet=False)
        pump.flush()
        if first:
            client.transport.write(first)
        self.turn(pump)
        return client, pump

    def turn(self, pump: iosim.IOPump, seconds: float = 0.0) -> None:
        """Let ``seconds`` pass, run what is due, and move every byte."""
        pump.flush()
        self.reactor.advance(seconds)
        pump.flush()

    def session(self) -> RawClient:
        client, pump = self.connect(handshake())
        self.assertTrue(client.welcomed(), client.data[:300])
        client.pump = pump
        return client


class WebSocketMemoryTests(MemoryEdgeTestCase):
    """The WebSocket protocol: requests, liveness and slow readers."""

    def test_welcome_and_a_request(self):
        self.start()
        c = self.session()
        c.transport.write(text({"op": "ping", "ref": 7}))
        self.turn(c.pump)
        self.assertEqual(c.json_frames()[-1], {"op": "pong", "ref": 7})

    def test_an_idle_client_is_pinged_then_dropped(self):
        self.start(ping_interval=5.0, ping_timeout=12.0)
        c = self.session()
        self.turn(c.pump, 5.0)
        self.assertEqual([op for op, _ in c.frames()].count(PING), 1)
        self.assertFalse(c.lost.called)
        for _ in range(2):  # the client stays silent: no pong, nothing
            self.turn(c.pump, 5.0)
        self.assertTrue(c.lost.called)
        self.assertEqual(len(self.server.engine.registry), 0)

    def test_a_client_that_answers_stays(self):
        self.start(ping_interval=5.0, ping_timeout=12.0)
        c = self.session()
        for _ in range(6):
            self.turn(c.pump, 5.0)
            c.transport.write(text({"op": "ping"}))
            self.turn(c.pump)
        self.assertFalse(c.lost.called)

    def test_a_reader_that_falls_behind_is_closed_with_1013(self):
        self.start(max_buffered_bytes=8192)
        slow, bystander = self.session(), self.session()
        for c in (slow, bystander):
            c.transport.write(text({"op": "join", "group": "g"}))
            self.turn(c.pump)
        # The transport's buffer is full: it pauses its producer, the flow watch.
        slow_conn = next(conn for conn in self.server.ws_factory.connections
                         if conn.transport.getPeer().port == slow.transport.getHost().port)
        slow_conn.transport.producer.pauseProducing()
        for n in range(10):
            self.server.engine.publish(_group("g"), "x" * 1000)
            self.turn(slow.pump)
            self.turn(bystander.pump)
        self.assertEqual(self.counters["dropped_slow"], 1)
        self.assertEqual(slow.close_code, 1013)
        slow.transport.write(frame(b"\x03\xf5", CLOSE))  # the client answers the close
        self.turn(slow.pump)
        self.assertTrue(slow.lost.called)
        self.assertEqual(len([f for f in bystander.json_frames() if f["op"] == "msg"]), 10)


class HttpMemoryTests(MemoryEdgeTestCase):
    """The HTTP connection: deadlines and errors, answered in JSON."""

    def test_a_request_that_trickles_in_is_cut_at_the_deadline(self):
        self.start(handshake_timeout=10.0)
        c, pump = self.connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        self.turn(pump, 9.0)
        c.transport.write(b"X-Slow: 1\r\n")
        self.turn(pump, 1.0)
        self.assertTrue(c.lost.called)
        self.assertEqual(self.counters["slow_handshakes"], 1)

    def test_one_timer_per_connection(self):
        """A connection waits for its request with one timer, its deadline
        (no idle timer of twisted.web's besides), and a WebSocket's
        connection keeps none of the HTTP connection's."""
        self.start(handshake_timeout=10.0, ping_interval=3600.0, ping_timeout=7200.0)
        before = len(self.reactor.getDelayedCalls())
        c, pump = self.connect()
        self.assertEqual(len(self.reactor.getDelayedCalls()), before + 1)
        c.transport.write(handshake())
        self.turn(pump)
        self.assertTrue(c.welcomed())
        self.assertEqual(len(self.reactor.getDelayedCalls()), before)
        self.turn(pump, 60.0)  # an idle WebSocket client stays
        self.assertFalse(c.lost.called)
        idle, pump = self.connect()  # an idle HTTP connection goes at its deadline
        self.turn(pump, 10.0)
        self.assertTrue(idle.lost.called)

    def test_malformed_and_oversized_requests(self):
        self.start(max_header_bytes=1024)
        bad, pump = self.connect(b"NOT HTTP AT ALL\r\n\r\n")
        self.assertEqual((bad.status, bad.body),
                         (400, {"error": {"code": "bad_request",
                                          "message": "not a valid HTTP request"}}))
        big, pump = self.connect(http_request("GET", "/healthz",
                                              headers={"X-Big": "y" * 2000}))
        self.assertEqual((big.status, big.body["error"]["code"]), (431, "too_large"))
        self.assertEqual((self.counters["http_invalid"], self.counters["http_too_large"]),
                         (1, 1))

    def test_an_api_error_is_json(self):
        self.start(api_keys=["k"])
        c, pump = self.connect(http_request("POST", "/api/push", json.dumps(
            {"to": {"all": True}, "data": 1}).encode()))
        self.assertEqual(c.status, 401)
        self.assertEqual(c.body["error"]["code"], "unauthorized")
        self.assertEqual(c.header("www-authenticate"), 'Bearer realm="pushsvc"')

    def test_a_close_frame_is_answered(self):
        self.start()
        c = self.session()
        c.transport.write(frame(b"\x03\xe8", CLOSE))
        self.turn(c.pump)
        self.assertEqual(c.close_code, 1000)


def _group(name: str):
    from pushsvc.protocol import Address
    return Address(group=(name,))


class HandshakeMemoryTests(MemoryEdgeTestCase):
    """Handshakes refused before or inside Autobahn answer JSON; no Server
    header gives a version away unless one is configured (issue 17)."""

    def test_an_http_1_0_handshake_is_refused(self):
        self.start()
        old = handshake().replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        c, pump = self.connect(old)
        self.assertEqual((c.status, c.body),
                         (400, {"error": {"code": "bad_request",
                                          "message": "a WebSocket handshake needs HTTP/1.1"}}))
        self.assertFalse(c.welcomed())

    def test_autobahns_refusals_are_json(self):
        self.start()
        no_key = b"\r\n".join(line for line in handshake().split(b"\r\n")
                              if not line.startswith(b"Sec-WebSocket-Key"))
        wrong_version = handshake().replace(b"Sec-WebSocket-Version: 13",
                                            b"Sec-WebSocket-Version: 99")
        for request in (no_key, wrong_version):
            c, pump = self.connect(request)
            self.assertEqual(c.status, 400, c.data[:200])
            self.assertEqual(c.header("content-type"), "application/json")
            self.assertEqual(c.body["error"]["code"], "bad_request")
            self.assertTrue(c.body["error"]["message"])
        self.assertEqual(self.counters["http_invalid"], 2)

    def test_no_server_header_by_default(self):
        self.start()
        api, pump = self.connect(http_request("GET", "/healthz"))
        ws = self.session()
        self.assertEqual((api.status, api.header("server"), ws.header("server")),
                         (200, None, None))

    def test_a_configured_server_header(self):
        self.start(server_header="pushsvc")
        api, pump = self.connect(http_request("GET", "/healthz"))
        ws = self.session()
        self.assertEqual((api.header("server"), ws.header("server")), ("pushsvc", "pushsvc"))


class DirectUpgradeMemoryTests(MemoryEdgeTestCase):
    """A plain handshake goes from its bytes to the WebSocket protocol
    (http/upgrade.py DirectUpgrade), without a twisted.web Request; one to
    refuse still gets twisted.web's answers."""

    def no_render(self, path: bytes = b"ws"):
        def render(request):
            raise AssertionError("twisted.web rendered the upgrade")
        self.server.site.resource.children[path].render = render

    def test_a_handshake_and_a_frame_in_one_write(self):
        self.start()
        self.no_render()
        c, pump = self.connect(handshake() + frame(b'{"op":"ping","ref":1}'))
        self.assertTrue(c.welcomed(), c.data[:300])
        self.assertEqual(c.json_frames()[-1], {"op": "pong", "ref": 1})
        self.assertEqual(len(self.server.ws_factory.connections), 1)

    def test_the_per_address_slot_goes_with_the_connection(self):
        self.start(max_connections_per_ip=1)
        self.no_render()
        first = self.session()
        second, pump = self.connect(handshake())
        self.assertEqual(second.status, 429)  # refused by twisted.web, as before
        first.transport.loseConnection()
        self.turn(first.pump)
        third = self.session()
        self.assertTrue(third.welcomed())

    def test_a_handshake_to_refuse_is_twisted_webs(self):
        self.start(allowed_origins=["https://good.example"])
        rendered = []
        resource = self.server.site.resource.children[b"ws"]
        render = resource.render
        resource.render = lambda request: rendered.append(request) or render(request)
        bad, pump = self.connect(handshake(headers={"Origin": "https://evil.example"}))
        self.assertEqual((bad.status, bad.body["error"]["code"]), (403, "forbidden"))
        good, pump = self.connect(handshake(headers={"Origin": "https://good.example"}))
        self.assertTrue(good.welcomed())
        self.assertEqual(len(rendered), 1)
