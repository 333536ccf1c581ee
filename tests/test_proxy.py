"""The backend proxy: answer parsing, and BackendProxy against a real HTTP
backend on a loopback port (the real reactor, since Agent needs one)."""

from __future__ import annotations

import json
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pushsvc.proxy import MAX_ANSWER_BYTES, BackendError, BackendProxy, Verdict, parse_verdict
from tests.test_tls import make_certificate

ALLOW = b'{"allow":true}'


class ParseVerdictTests(unittest.SynchronousTestCase):
    """parse_verdict: the answer contract, without I/O."""

    def assertBad(self, status: int, body: bytes, why: str) -> None:
        with self.assertRaises(BackendError) as caught:
            parse_verdict(status, body)
        self.assertEqual(str(caught.exception), why)

    def test_allow_with_data(self):
        self.assertEqual(parse_verdict(200, b'{"allow": true, "data": {"k": [1, "x"]}}'),
                         Verdict(True, data={"k": [1, "x"]}, result="allow"))

    def test_allow_without_data(self):
        self.assertEqual(parse_verdict(201, ALLOW), Verdict(True, data=None, result="allow"))

    def test_deny_with_reason(self):
        self.assertEqual(parse_verdict(200, b'{"allow": false, "reason": "not a member"}'),
                         Verdict(False, reason="not a member", result="deny"))

    def test_deny_without_reason(self):
        """No reason, or a null one, and data on a deny is dropped."""
        for body in (b'{"allow": false}', b'{"allow": false, "reason": null, "data": 1}'):
            self.assertEqual(parse_verdict(200, body), Verdict(False, result="deny"))

    def test_reason_is_capped(self):
        answer = json.dumps({"allow": False, "reason": "\u00e9" * 500}).encode()
        self.assertEqual(parse_verdict(200, answer).reason, "\u00e9" * 200)

    def test_other_statuses(self):
        self.assertBad(500, ALLOW, "the backend answered HTTP 500")
        self.assertBad(302, ALLOW, "the backend answered HTTP 302")
        self.assertBad(404, b"", "the backend answered HTTP 404")

    def test_not_json(self):
        for body in (b"", b"allow", b'{"allow": true', b"\xff\xfe{}", b"[" * 100000):
            self.assertBad(200, body[:MAX_ANSWER_BYTES], "the backend's answer is not JSON")

    def test_not_an_object(self):
        for body in (b'[{"allow": true}]', b"true", b'"allow"', b"null"):
            self.assertBad(200, body, "the backend's answer is not a JSON object")

    def test_allow_missing_or_not_a_boolean(self):
        for body in (b"{}", b'{"allow": "yes"}', b'{"allow": 1}', b'{"allow": null}',
                     b'{"Allow": true}'):
            self.assertBad(200, body, 'the backend\'s answer has no boolean "allow"')

    def test_reason_not_a_string(self):
        for body in (b'{"allow": false, "reason": 5}', b'{"allow": true, "reason": ["x"]}'):
            self.assertBad(200, body, 'the backend\'s "reason" is not a string')

    def test_size_limit(self):
        """An answer of exactly MAX_ANSWER_BYTES is read; one byte more is not."""
        body = ALLOW.ljust(MAX_ANSWER_BYTES)
        self.assertEqual(parse_verdict(200, body), Verdict(True))
        self.assertBad(200, body + b" ", "the backend's answer is larger than 65536 bytes")


class FakeClockTests(unittest.SynchronousTestCase):
    """Paths that never reach the network, on a fake clock."""

    def setUp(self):
        self.clock = Clock()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.counted: list[str] = []

    def proxy(self, **kwargs) -> BackendProxy:
        return BackendProxy(self.clock, "http://backend.invalid/decide",
                            count=self.counted.append, **kwargs)

    def warnings(self) -> list[dict]:
        return [e for e in self.events if e.get("log_namespace") == "pushsvc.proxy"]

    def test_bad_configuration(self):
        self.assertRaises(ValueError, BackendProxy, self.clock, "ftp://h/x")
        self.assertRaises(ValueError, BackendProxy, self.clock, "http://b\u00fccher.example/")
        self.assertRaises(ValueError, BackendProxy, self.clock, "http://h/x", on_error="maybe")

    def test_over_the_cap_is_settled_at_once(self):
        """max_in_flight=0: nothing is sent, on_error decides."""
        verdict = self.successResultOf(self.proxy(max_in_flight=0).ask({}))
        self.assertEqual(verdict, Verdict(False, result="error", reason=(
            "the backend could not decide: too many backend requests in flight")))
        verdict = self.successResultOf(self.proxy(max_in_flight=0, on_error="allow").ask({}))
        self.assertEqual(verdict, Verdict(True, result="error"))
        self.assertEqual(self.counted, ["error", "error"])

    def test_document_not_json_is_an_error_not_a_failure(self):
        verdict = self.successResultOf(self.proxy().ask({"x": object()}))
        self.assertEqual((verdict.allow, verdict.result), (False, "error"))
        self.assertEqual(verdict.reason, "the backend could not decide: "
                                         "unexpected error (TypeError)")
        [event] = self.warnings()
        self.assertTrue(event["log_failure"].check(TypeError))  # the traceback is logged
        self.flushLoggedErrors(TypeError)

    def test_errors_are_logged_at_most_once_a_second(self):
        proxy = self.proxy(max_in_flight=0)
        for _ in range(3):
            proxy.ask({})
        self.clock.advance(0.9)
        proxy.ask({})
        self.assertEqual(len(self.warnings()), 1)
        self.clock.advance(0.1)
        proxy.ask({})
        first, second = self.warnings()
        self.assertEqual(first["log_level"], LogLevel.warn)
        self.assertEqual((first["url"], first["error"], first["unlogged"]),
                         ("http://backend.invalid/decide",
                          "too many backend requests in flight", 0))
        self.assertEqual(second["unlogged"], 3)


class Backend(Resource):
    """A fake backend: records each request, then answers as ``handle`` says."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests: list[tuple[object, bytes]] = []
        self.held: list = []
        self._waiting: list[tuple[int, Deferred]] = []
        self.handle = lambda request: (200, ALLOW)

    def render_POST(self, request):
        self.requests.append((request, request.content.read()))
        answer = self.handle(request)
        self._waiting, ready = [], self._waiting
        for n, d in ready:
            if len(self.requests) >= n:
                d.callback(None)
            else:
                self._waiting.append((n, d))
        if answer is NOT_DONE_YET:
            return NOT_DONE_YET
        request.setResponseCode(answer[0])
        return answer[1]

    def hold(self, request):
        """Never answer (until the test does)."""
        self.held.append(request)
        return NOT_DONE_YET

    def arrived(self, n: int) -> Deferred:
        """Fires once ``n`` requests have arrived."""
        if len(self.requests) >= n:
            return succeed(None)
        d = Deferred()
        self._waiting.append((n, d))
        return d


class Connections(WrappingFactory):
    """Wraps the Site to count the TCP connections made and wait for their end."""

    def __init__(self, site):
        super().__init__(site)
        self.opened = 0
        self._idle: list[Deferred] = []

    def buildProtocol(self, addr):
        self.opened += 1
        return super().buildProtocol(addr)

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        if not self.protocols:
            self._idle, idle = [], self._idle
            for d in idle:
                d.callback(None)

    def abort_all(self) -> Deferred:
        """Abort every server-side connection (and the requests held on it)."""
        for p in list(self.protocols):
            p.transport.abortConnection()
        return self.all_closed()

    def all_closed(self) -> Deferred:
        if not self.protocols:
            return succeed(None)
        d = Deferred()
        self._idle.append(d)
        return d


class ProxyTests(unittest.TestCase):
    """BackendProxy with the real reactor against Backend on 127.0.0.1."""

    scheme = "http"
    tls = None  # the proxy's IPolicyForHTTPS

    def setUp(self):
        self.backend = Backend()
        self.connections = Connections(Site(self.backend))
        port = self.listen(self.connections)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.connections.abort_all)
        self.url = f"{self.scheme}://127.0.0.1:{port.getHost().port}/decide"
        self.counted: list[str] = []
        self.observed: list[float] = []

    def listen(self, factory):
        return reactor.listenTCP(0, factory, interface="127.0.0.1")

    def proxy(self, url: str | None = None, **kwargs) -> BackendProxy:
        kwargs.setdefault("tls", self.tls)
        proxy = BackendProxy(reactor, url or self.url, count=self.counted.append,
                             observe=self.observed.append, **kwargs)
        self.addCleanup(proxy.close)
        return proxy

    def answer(self, status: int, body: object) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.backend.handle = lambda request: (status, body)

    async def test_allow_with_data(self):
        self.answer(200, {"allow": True, "data": {"room": "r1", "n": [1, 2]}})
        verdict = await self.proxy().ask({"op": "join"})
        self.assertEqual(verdict, Verdict(True, data={"room": "r1", "n": [1, 2]}))
        self.assertEqual(self.counted, ["allow"])
        self.assertEqual(len(self.observed), 1)
        self.assertTrue(0 <= self.observed[0] < 5)

    async def test_deny_with_reason(self):
        self.answer(200, {"allow": False, "reason": "members only"})
        verdict = await self.proxy().ask({"op": "join"})
        self.assertEqual(verdict, Verdict(False, reason="members only", result="deny"))
        self.assertEqual(self.counted, ["deny"])

    async def test_request(self):
        """The backend gets a POST with the compact JSON document and the headers."""
        document = {"op": "join", "group": "g\u00e9\ud800", "user": "u1", "session": "s1",
                    "meta": {"n": 1, "list": [True, None]}}
        await self.proxy(secret="s3cret").ask(document)
        [(request, body)] = self.backend.requests
        self.assertEqual(body, json.dumps(document, separators=(",", ":")).encode())
        self.assertEqual(json.loads(body), document)
        self.assertEqual((request.method, request.uri), (b"POST", b"/decide"))
        headers = request.requestHeaders
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(headers.getRawHeaders(b"authorization"), [b"Bearer s3cret"])
        self.assertEqual(headers.getRawHeaders(b"user-agent"), [b"pushsvc"])

    async def test_no_authorization_without_a_secret(self):
        await self.proxy().ask({})
        [(request, _)] = self.backend.requests
        self.assertFalse(request.requestHeaders.hasHeader(b"authorization"))

    async def test_sequential_asks_reuse_one_connection(self):
        proxy = self.proxy()
        for i in range(5):
            self.assertEqual(await proxy.ask({"i": i}), Verdict(True))
        self.assertEqual(len(self.backend.requests), 5)
        self.assertEqual(self.connections.opened, 1)
        self.assertEqual(proxy.in_flight, 0)

    async def test_http_500_denies(self):
        self.answer(500, b"Internal Server Error")
        verdict = await self.proxy().ask({})
        self.assertEqual(verdict, Verdict(False, result="error", reason=(
            "the backend could not decide: the backend answered HTTP 500")))
        self.assertEqual(self.counted, ["error"])
        self.assertEqual(len(self.observed), 1)

    async def test_http_500_with_on_error_allow(self):
        self.answer(500, b"Internal Server Error")
        verdict = await self.proxy(on_error="allow").ask({})
        self.assertEqual(verdict, Verdict(True, result="error"))
        self.assertEqual(self.counted, ["error"])

    async def test_malformed_answer_denies(self):
        self.answer(200, {"allow": "yes"})
        verdict = await self.proxy().ask({})
        self.assertEqual(verdict.reason, "the backend could not decide: "
                                         'the backend\'s answer has no boolean "allow"')

    async def test_timeout(self):
        """A backend that never answers: denied after the timeout."""
        self.backend.handle = self.backend.hold
        proxy = self.proxy(timeout=0.2)
        verdict = await proxy.ask({})
        self.assertEqual(verdict, Verdict(False, result="error", reason=(
            "the backend could not decide: the backend did not answer within 0.2 seconds")))
        self.assertEqual(len(self.backend.held), 1)
        self.assertEqual((proxy.in_flight, self.counted, self.observed), (0, ["error"], []))
        await self.connections.all_closed()  # the proxy gave up on that connection

    async def test_in_flight_cap(self):
        """With two requests held, a third ask is denied at once, unsent."""
        self.backend.handle = self.backend.hold
        proxy = self.proxy(max_in_flight=2, timeout=10)
        first, second = proxy.ask({"n": 1}), proxy.ask({"n": 2})
        await self.backend.arrived(2)
        self.assertEqual(proxy.in_flight, 2)
        third = proxy.ask({"n": 3})
        self.assertEqual(self.successResultOf(third), Verdict(False, result="error", reason=(
            "the backend could not decide: too many backend requests in flight")))
        for request in self.backend.held:
            request.write(ALLOW)
            request.finish()
        self.assertEqual([await first, await second], [Verdict(True), Verdict(True)])
        self.assertEqual(proxy.in_flight, 0)
        self.assertEqual(len(self.backend.requests), 2)
        self.assertEqual(self.counted, ["error", "allow", "allow"])

    async def test_close(self):
        """close() closes idle connections, and busy ones once their answer is in."""
        proxy = self.proxy()
        await proxy.ask({})
        self.backend.handle = self.backend.hold
        held = proxy.ask({})
        await self.backend.arrived(2)
        self.assertEqual(self.connections.opened, 1)
        await proxy.close()
        self.assertEqual(self.connections.opened, 1)
        request = self.backend.held.pop()
        request.write(ALLOW)
        request.finish()
        self.assertEqual(await held, Verdict(True))
        await self.connections.all_closed()

    async def test_connection_refused(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        verdict = await self.proxy(f"http://127.0.0.1:{port}/decide").ask({})
        self.assertEqual(verdict, Verdict(False, result="error", reason=(
            "the backend could not decide: the backend refused the connection")))
        self.assertEqual((self.counted, self.observed), (["error"], []))

    async def test_oversized_answer(self):
        self.answer(200, ALLOW.ljust(MAX_ANSWER_BYTES + 1))
        verdict = await self.proxy().ask({})
        self.assertEqual(verdict.reason, "the backend could not decide: "
                                         "the backend's answer is larger than 65536 bytes")
        self.assertEqual(self.counted, ["error"])

    async def test_endless_answer_is_cut_off(self):
        """A streamed answer without a length is dropped past the cap, not at the timeout."""
        def stream(request):
            for _ in range(10):
                request.write(b" " * 8192)
            return NOT_DONE_YET
        self.backend.handle = stream
        proxy = self.proxy(timeout=30)
        started = reactor.seconds()
        verdict = await proxy.ask({})
        self.assertEqual(verdict.reason, "the backend could not decide: "
                                         "the backend's answer is larger than 65536 bytes")
        self.assertLess(reactor.seconds() - started, 10)
        await self.connections.all_closed()  # the proxy closed that connection

    async def test_oversized_error_page_reports_the_status(self):
        self.answer(503, b"x" * (2 * MAX_ANSWER_BYTES))
        verdict = await self.proxy().ask({})
        self.assertEqual(verdict.reason,
                         "the backend could not decide: the backend answered HTTP 503")

    async def test_dropped_connection_is_retried_once(self):
        """A connection closed without an answer: asked again on a new one."""
        def drop_first(request):
            if len(self.backend.requests) == 1:
                request.channel.transport.abortConnection()
                return NOT_DONE_YET
            return 200, ALLOW
        self.backend.handle = drop_first
        self.assertEqual(await self.proxy().ask({}), Verdict(True))
        self.assertEqual((len(self.backend.requests), self.connections.opened), (2, 2))

    async def test_always_dropped(self):
        """...but only once."""
        def drop(request):
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        self.backend.handle = drop
        verdict = await self.proxy().ask({})
        self.assertEqual(verdict.reason, "the backend could not decide: "
                                         "the backend closed the connection without answering")
        self.assertEqual(len(self.backend.requests), 2)


class HttpsTests(ProxyTests):
    """All of ProxyTests again with an https:// backend (a throwaway certificate)."""

    scheme = "https"

    def listen(self, factory):
        key_path, cert_path, _ = make_certificate(self.mktemp(), "backend")
        with open(key_path, "rb") as key, open(cert_path, "rb") as cert:
            key, cert = key.read(), cert.read()
        self.tls = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert))
        server = PrivateCertificate.loadPEM(key + cert).options()
        return reactor.listenSSL(0, factory, server, interface="127.0.0.1")

    async def test_untrusted_certificate(self):
        """The default policy (platform trust) refuses the throwaway certificate."""
        verdict = await self.proxy(tls=BrowserLikePolicyForHTTPS()).ask({})
        self.assertEqual(verdict.reason, "the backend could not decide: "
                                         "the TLS handshake with the backend failed")
        self.assertEqual(self.backend.requests, [])
