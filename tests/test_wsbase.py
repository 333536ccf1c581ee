"""The lean WebSocket protocol (pushsvc/wsbase.py): the state its setup
gives a connection is the state Autobahn's own setup gives it, and what it
makes later or never still works when asked for."""

from __future__ import annotations

import socket
from collections import deque

import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from pushsvc.server import PushServer
from pushsvc.wsbase import HANDSHAKE_ONLY, INITIAL
from tests.helpers import ServerTestCase, eventually, run, settings
from tests.raw import CLOSE, text
from tests.test_edges_memory import MemoryEdgeTestCase
from tests.test_tls import TLSTestCase

PEER = IPv4Address("TCP", "127.0.0.1", 40123)


class SetupTests(MemoryEdgeTestCase):
    """A connection of the lean protocol next to one of Autobahn's own,
    both made by the same factory."""

    def made(self):
        factory = self.start().ws_factory
        ref = WebSocketServerProtocol()  # Autobahn's setup, options copied from the factory
        ref.factory = factory
        ref.makeConnection(StringTransport(peerAddress=PEER))
        lean = factory.buildProtocol(PEER)
        lean.makeConnection(StringTransport(peerAddress=PEER))
        self.addCleanup(factory.connections.discard, lean)
        return ref, lean

    def test_every_attribute_autobahn_sets_up_reads_the_same(self):
        """Autobahn's own setup is the reference: an attribute it gains in a
        new version fails here until the lean setup has it too."""
        ref, lean = self.made()
        special = {"transport", "trafficStats", "utf8validator", "_transport_details",
                   "is_open", "is_closed", "send_queue", "_valid_events", "_results"}
        for name, value in vars(ref).items():
            if name not in special:
                self.assertEqual(getattr(lean, name), value, name)
        self.assertEqual(vars(lean.trafficStats), vars(ref.trafficStats))
        self.assertIs(type(lean.utf8validator), type(ref.utf8validator))
        self.assertEqual(lean.transport_details.marshal(), ref.transport_details.marshal())
        self.assertEqual((len(lean.send_queue), len(ref.send_queue)), (0, 0))
        for future in (lean.is_open, lean.is_closed):
            txaio.resolve(future, lean)  # Autobahn resolves them; no one waits
        # No listener: firing an event is answered at once, as Autobahn's is.
        self.assertEqual(lean.fire("message", b"x").result, [])
        # What the class holds once, the connection does not hold itself.
        self.assertFalse(set(INITIAL) & set(vars(lean)))

    def test_the_connection_count(self):
        """Autobahn's count of connections (its maxConnections check) goes
        up at connect and down when the connection ends."""
        self.start()
        factory = self.server.ws_factory
        c = self.session()
        self.assertEqual(factory.countConnections, 1)
        c.transport.loseConnection()
        self.turn(c.pump)
        self.assertEqual((factory.countConnections, len(factory.connections)), (0, 0))

    def test_what_is_made_when_asked_for(self):
        """The UTF-8 validator comes with the first text message, the
        handshake's state goes once the connection is open."""
        self.start()
        c = self.session()
        conn = next(iter(self.server.ws_factory.connections))
        self.assertNotIn("utf8validator", vars(conn))
        self.assertEqual([getattr(conn, name) for name in HANDSHAKE_ONLY],
                         [None] * len(HANDSHAKE_ONLY))
        c.transport.write(text({"op": "ping", "ref": 1}))
        self.turn(c.pump)
        self.assertEqual(c.json_frames()[-1], {"op": "pong", "ref": 1})
        self.assertIn("utf8validator", vars(conn))
        # Invalid UTF-8 is still refused: close 1007.
        c.transport.write(b"\x81\x82\0\0\0\0\xc3\x28")
        self.turn(c.pump)
        self.assertEqual(c.frames()[-1][0], CLOSE)
        self.assertEqual(c.close_code, 1007)

    def test_a_synchronous_write_goes_through_autobahns_queue(self):
        """Autobahn's queue for synchronous (or chopped) writes is made when
        one comes; it writes through the transport, in order."""
        self.start()
        c = self.session()
        conn = next(iter(self.server.ws_factory.connections))
        self.patch(txaio.config, "loop", self.reactor)  # Autobahn's next _send
        conn.sendData(b"\x81\x01a", sync=True)
        conn.sendData(b"\x81\x01b", sync=True)
        self.assertIsInstance(conn.send_queue, deque)
        for _ in range(3):
            self.turn(c.pump, 0.001)
        self.assertEqual(c.frames()[-2:], [(1, b"a"), (1, b"b")])
        self.assertFalse(conn.send_queue)


class SocketTests(ServerTestCase):
    """On a real socket."""

    @run
    async def test_tcp_nodelay(self):
        """The lean protocol does not set TCP_NODELAY again: the HTTP
        connection it comes through has set it."""
        self.start_server()
        await self.client()
        await eventually(lambda: self.server.ws_factory.connections)
        conn = next(iter(self.server.ws_factory.connections))
        handle = conn.transport.getHandle()
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class TLSSocketTests(TLSTestCase):
    """On a real socket, over TLS."""

    @run
    async def test_tcp_nodelay_and_transport_details(self):
        """TCP_NODELAY is set under TLS too, and the transport details, made
        when first asked for, have what Autobahn adds at the open: secure,
        with the TLS channel id."""
        self.server = PushServer(settings(), reactor)
        listener = self.server.listen(reactor, self.description())
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.use_port(listener._waitingForPort.result.getHost().port)
        await self.client()
        await eventually(lambda: self.server.ws_factory.connections)
        conn = next(iter(self.server.ws_factory.connections))
        handle = conn.transport.transport.getHandle()  # under TLSMemoryBIOProtocol
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        details = conn.transport_details
        self.assertTrue(details.is_secure)
        self.assertTrue(details.channel_id["tls-unique"])
        self.assertEqual(details.peer, conn.peer)
