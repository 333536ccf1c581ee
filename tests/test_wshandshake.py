"""The plain opening handshake (pushsvc/wshandshake.py, wsbase.py): for each
head, a connection given llhttp's parse of it ends in the same state, with
the same bytes written, as one left to Autobahn's own handshake; the plain
ones take the lean way, every other is Autobahn's."""

from __future__ import annotations

import httptools
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pushsvc.bench.wire import WS_KEY
from pushsvc.wsbase import LeanServerProtocol
from pushsvc.wsfactory import OPTIONS

PEER = IPv4Address("TCP", "127.0.0.1", 40123)

# What a handshake leaves on its connection (Autobahn's names).
STATE = ("state", "http_status_line", "http_headers", "http_request_data",
         "http_request_uri", "http_request_path", "http_request_params",
         "http_request_host", "websocket_version", "websocket_protocols",
         "websocket_origin", "websocket_extensions", "_wskey",
         "websocket_protocol_in_use", "websocket_extensions_in_use",
         "http_response_data", "data", "inside_message", "current_frame", "peer")

BASE = [("Host", "example.com:8080"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", WS_KEY), ("Sec-WebSocket-Version", "13")]
CHROME = "permessage-deflate; client_max_window_bits"


def head(url: str = "/ws", replace: dict | None = None, add: list | None = None,
         drop: tuple = ()) -> bytes:
    """A handshake's head: BASE with some headers replaced, added or dropped."""
    replace = replace or {}
    lines = [f"GET {url} HTTP/1.1"]
    lines += [f"{name}: {replace.get(name, value)}" for name, value in BASE if name not in drop]
    lines += [f"{name}: {value}" for name, value in add or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# name -> (head, taken the lean way)
CASES = {
    "plain": (head(), True),
    "query": (head("/ws?token=abc&resume=1&x=%20y"), True),
    "pusher": (head("/app/key-1?protocol=7&client=js&version=8.4.0&flash=false"), True),
    "browser": (head(add=[("Origin", "https://app.example.com"), ("Sec-WebSocket-Extensions", CHROME),
                          ("User-Agent", "Mozilla/5.0"), ("Cookie", "a=1"), ("Cookie", "b=2")]), True),
    "no port": (head(replace={"Host": "example.com"}), True),
    "ipv6 host": (head(replace={"Host": "[::1]"}), True),
    "ipv6 host and port": (head(replace={"Host": "[::1]:8080"}), True),
    "token lists": (head(replace={"Upgrade": "foo, WebSocket", "Connection": "keep-alive, upgrade"}),
                    True),
    "lower-case names": (head().replace(b"Sec-WebSocket-Key", b"sec-websocket-key"), True),
    "spaces around values": (head(replace={"Sec-WebSocket-Version": "13 \t"}), True),
    "unknown extension": (head(add=[("Sec-WebSocket-Extensions", "x-foo; bar=1, x-baz")]), True),
    # Left to Autobahn: refusals, and what is rare.
    "subprotocol": (head(add=[("Sec-WebSocket-Protocol", "chat, superchat")]), False),
    "duplicate subprotocol": (head(add=[("Sec-WebSocket-Protocol", "chat, chat")]), False),
    "version 8": (head(replace={"Sec-WebSocket-Version": "8"}), False),
    "version 12": (head(replace={"Sec-WebSocket-Version": "12"}), False),
    "version words": (head(replace={"Sec-WebSocket-Version": "thirteen"}), False),
    "two versions": (head(add=[("Sec-WebSocket-Version", "13")]), False),
    "no version": (head(drop=("Sec-WebSocket-Version",)), False),
    "no key": (head(drop=("Sec-WebSocket-Key",)), False),
    "short key": (head(replace={"Sec-WebSocket-Key": "abc=="}), False),
    "key without ==": (head(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=A"}), False),
    "key bad character": (head(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25j*Q=="}), False),
    "two keys": (head(add=[("Sec-WebSocket-Key", WS_KEY)]), False),
    "no host": (head(drop=("Host",)), False),
    "two hosts": (head(add=[("Host", "other")]), False),
    "bad port": (head(replace={"Host": "example.com:http"}), False),
    "signed port": (head(replace={"Host": "example.com:+80"}), False),
    "no upgrade": (head(drop=("Upgrade",)), False),
    "upgrade to something else": (head(replace={"Upgrade": "h2c"}), False),
    "no connection": (head(drop=("Connection",)), False),
    "connection close": (head(replace={"Connection": "close"}), False),
    "bad origin": (head(add=[("Origin", "http://")]), False),
    # Autobahn refuses the null origin unless allowNullOrigin (file:// pages).
    "null origin": (head(add=[("Origin", "null")]), False),
    "file origin": (head(add=[("Origin", "file://")]), False),
    "two origins": (head(add=[("Origin", "http://a"), ("Origin", "http://b")]), False),
    "bad deflate offer": (head(add=[("Sec-WebSocket-Extensions",
                                     "permessage-deflate; server_max_window_bits=99")]), False),
    "two extension headers": (head(add=[("Sec-WebSocket-Extensions", CHROME),
                                        ("Sec-WebSocket-Extensions", CHROME)]), False),
    "fragment": (head("/ws#top"), False),
    "path parameters": (head("/ws;jsessionid=1"), False),
    "absolute uri": (head("http://example.com/ws"), False),
    "network-path uri": (head("//example.com/ws"), False),
    "forwarded": (head(add=[("X-Forwarded-For", "10.0.0.1")]), True),
}


def llhttp_head(raw: bytes) -> tuple[bytes, list] | None:
    """(url, headers) as the lean path's llhttp reads them; None when llhttp
    finds the head malformed (then twisted.web serves it, not this path)."""

    class Collect:
        url = b""

        def __init__(self):
            self.headers = []

        def on_url(self, url):
            self.url += url

        def on_header(self, name, value):
            self.headers.append((name, value))

    collect = Collect()
    try:
        httptools.HttpRequestParser(collect).feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    return collect.url, collect.headers


class Probe(LeanServerProtocol):
    """A lean connection that records whether it went the lean way and
    keeps the handshake's state for the comparison."""

    opened = 0
    lean = False

    def onOpen(self):
        self.opened += 1

    def _open_plain(self, found, end):
        self.lean = True
        super()._open_plain(found, end)


def factory_for(**options) -> WebSocketServerFactory:
    """A factory with pushsvc's handshake options (wsfactory.py), and ``options``."""
    factory = WebSocketServerFactory()
    factory.externalPort = options.pop("externalPort", None)
    factory.headers = options.pop("headers", {})
    factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0,
                               echoCloseCodeReason=True, webStatus=False, failByDrop=False,
                               **options)
    factory.server = "pushsvc"
    factory.protocol = type("Probe", (Probe,), {})
    for name in OPTIONS:
        value = getattr(factory, name)
        setattr(factory.protocol, name, staticmethod(value) if callable(value) else value)
    return factory


def handshake(factory, raw: bytes, parsed) -> Probe:
    conn = factory.buildProtocol(PEER)
    conn.head = parsed
    transport = StringTransport(peerAddress=PEER)
    transport.registerProducer(transport, True)  # as the HTTP channel is, before the upgrade
    conn.makeConnection(transport)
    conn.dataReceived(raw)
    return conn


class PlainHandshakeTests(unittest.TestCase):

    def compare(self, factory, name: str, raw: bytes, lean_expected: bool | None) -> None:
        """The same outcome either way; ``lean_expected``: whether the lean
        way took it (None: either, as the options decide)."""
        parsed = llhttp_head(raw)
        self.assertIsNotNone(parsed, name)
        ref = handshake(factory, raw, None)
        lean = handshake(factory, raw, parsed)
        self.assertFalse(ref.lean, name)
        if lean_expected is not None:
            self.assertEqual(lean.lean, lean_expected, name)
        self.assertEqual(lean.transport.value(), ref.transport.value(), name)
        self.assertEqual(lean.transport.disconnecting, ref.transport.disconnecting, name)
        self.assertEqual(lean.opened, ref.opened, name)
        for attr in STATE:
            self.assertEqual(getattr(lean, attr, None), getattr(ref, attr, None),
                             f"{name}: {attr}")

    def test_each_head_ends_as_with_autobahn(self):
        """Plain heads go the lean way and end exactly as Autobahn ends them;
        the others are Autobahn's own (the same refusals)."""
        factory = factory_for()
        for name, (raw, plain) in CASES.items():
            self.compare(factory, name, raw, plain)

    def test_the_answer(self):
        """The 101 with the Server header and the key's accept value (RFC
        6455's own example key)."""
        factory = factory_for()
        raw = head(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        conn = handshake(factory, raw, llhttp_head(raw))
        self.assertTrue(conn.lean)
        self.assertEqual(conn.transport.value(),
                         b"HTTP/1.1 101 Switching Protocols\r\nServer: pushsvc\r\n"
                         b"Upgrade: WebSocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        self.assertEqual(conn.state, conn.STATE_OPEN)
        self.assertNotIn("head", vars(conn))  # read once, not kept for the connection's life

    def test_a_frame_after_the_head(self):
        """Bytes after the head (a client's first frame) are read once the
        connection is open, as Autobahn reads them."""
        factory = factory_for()
        raw = head() + b"\x81\x84\x00\x00\x00\x00ping"
        seen = []
        factory.protocol.onMessage = lambda self, payload, binary: seen.append(payload)
        self.compare(factory, "frame after the head", raw, True)
        self.assertEqual(seen, [b"ping", b"ping"])

    def test_options_that_change_the_answer(self):
        """Origins limited by pattern, a port the Host must name, extra
        headers, a cap on connections, trusted X-Forwarded-For: the same
        outcome either way."""
        variants = {
            "origins": dict(allowedOrigins=["https://*.example.com"]),
            "null origin allowed": dict(allowedOrigins=["https://a.example.com"],
                                        allowNullOrigin=True),
            "external port": dict(externalPort=8080),
            "other external port": dict(externalPort=9090),
            "headers": dict(headers={"X-One": "1", "X-Many": ["a", "b"]}),
            "trusted proxy": dict(trustXForwardedFor=1),
        }
        for label, options in variants.items():
            factory = factory_for(**options)
            for name, (raw, _) in CASES.items():
                self.compare(factory, f"{label}: {name}", raw, None)
        full = factory_for(maxConnections=1)
        full.countConnections = 5
        raw = head()
        lean = handshake(full, raw, llhttp_head(raw))
        self.assertFalse(lean.lean)
        self.assertTrue(lean.transport.value().startswith(b"HTTP/1.1 503 "))

    def test_a_subclass_that_decides_in_onconnect(self):
        """A protocol with its own onConnect (a subprotocol, a refusal) has
        Autobahn's handshake, which calls it."""
        factory = factory_for()
        factory.protocol.onConnect = lambda self, request: None
        raw = head()
        conn = handshake(factory, raw, llhttp_head(raw))
        self.assertFalse(conn.lean)
        self.assertEqual(conn.opened, 1)
