"""Slow readers, liveness and handshake timeouts, over real loopback sockets."""

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater

from pushsvc.protocol import Address
from tests.helpers import ServerTestCase, run

CAP = 256 * 1024
CHUNK = 16 * 1024


def resize(transport, option: int, size: int = 4096) -> None:
    """Set a socket buffer: tiny, so the kernel holds little and Twisted the rest."""
    transport.getHandle().setsockopt(socket.SOL_SOCKET, option, size)


class SlowReaderTests(ServerTestCase):
    def setUp(self):
        self.start_server(max_buffered_bytes=CAP)

    @run
    async def test_client_that_never_reads_is_closed_and_others_keep_receiving(self):
        slow = await self.client(groups=("g",))
        fast = await self.client(groups=("g",))
        slow_conn = self.engine.registry.get(slow.session).conn
        resize(slow_conn.transport, socket.SO_SNDBUF)
        slow.transport.pauseProducing()

        sent = []

        async def push_batch():
            for _ in range(4):
                sent.append(await self.engine.publish(Address(group=("g",)), "x" * CHUNK))
            await deferLater(reactor, 0, lambda: None)  # let the fast client read

        for batch in range(200):
            if self.engine.registry.get(slow.session) is None:
                break
            await push_batch()
        else:
            self.fail("the slow reader was never closed")

        self.assertEqual(self.engine.counters["dropped_slow"], 1)
        # Memory stayed bounded: never more than the cap plus one message waited.
        self.assertLessEqual(slow_conn.max_buffered, CAP + CHUNK + 64)
        self.assertGreater(slow_conn.max_buffered, CAP - CHUNK)
        # Later messages are not written to the closed session at all.
        queued = slow_conn.max_buffered
        for _ in range(5):
            await push_batch()
        self.assertEqual(slow_conn.max_buffered, queued)

        await fast.barrier()
        self.assertEqual([m["id"] for m in fast.messages], sent)
        self.assertEqual(self.engine.registry.get(fast.session).groups, {"g"})

        # Once it reads again, the slow client finds the 1013 close after its backlog.
        resize(slow_conn.transport, socket.SO_SNDBUF, 1 << 20)
        slow.transport.resumeProducing()
        code, _ = await slow.closed
        self.assertEqual(code, 1013)
        self.assertLess(len(slow.messages), len(sent))
        self.assertEqual([m["id"] for m in slow.messages], sent[:len(slow.messages)])


class BurstTests(ServerTestCase):
    def setUp(self):
        self.start_server(max_buffered_bytes=100 * 1024, max_message_bytes=64 * 1024,
                          max_batch_bytes=1024 * 1024)

    @run
    async def test_reader_that_stops_is_closed_within_one_turn(self):
        """One batch (one reactor turn) of 400 KB for a client that reads nothing:
        memory stays bounded and it is closed with 1013; a reading client in
        the same batch gets everything."""
        slow = await self.client(user="slow")
        fast = await self.client(user="fast")
        slow_conn = self.engine.registry.get(slow.session).conn
        resize(slow_conn.transport, socket.SO_SNDBUF)
        slow.transport.pauseProducing()
        batch = [{"to": {"user": ["slow", "fast"]}, "data": str(n) * 40_000}
                 for n in range(10)]
        status, body = await self.http("POST", "/api/batch", {"messages": batch})
        self.assertEqual(status, 202)
        await fast.wait_for_messages(10)
        self.assertEqual([m["id"] for m in fast.messages], body["ids"])
        self.assertIsNone(self.engine.registry.get(slow.session))
        self.assertEqual(self.engine.counters["dropped_slow"], 1)
        self.assertLessEqual(slow_conn.max_buffered, 100 * 1024 + 40_100)
        slow.transport.resumeProducing()
        self.assertEqual((await slow.closed)[0], 1013)



class SmallCapTests(ServerTestCase):
    def setUp(self):
        self.start_server(max_buffered_bytes=8192)

    @run
    async def test_one_message_over_the_cap_reaches_a_reading_client(self):
        c = await self.client(user="u")
        msg_id = await self.push({"user": "u"}, "x" * 10_000)
        await c.wait_for_messages(1)
        await c.barrier()
        self.assertEqual([m["id"] for m in c.messages], [msg_id])
        self.assertIsNone(c.close_code)
        self.assertEqual(self.engine.counters["dropped_slow"], 0)


class LivenessTests(ServerTestCase):
    def setUp(self):
        self.clock = Clock()
        self.start_server(ping_interval=25.0, ping_timeout=60.0, handshake_timeout=10.0)

    @run
    async def test_silent_peer_is_dropped_and_live_peer_kept(self):
        silent = await self.client(user="quiet")
        live = await self.client(user="chatty", groups=("g",))
        silent.transport.pauseProducing()  # reads nothing, so never answers a ping

        self.clock.advance(25)             # both idle 25 s: pinged
        await live.barrier()               # the live client's pong (and ping) arrived at t=25
        self.clock.advance(25)             # t=50: live idle 25 s, silent idle 50 s
        await live.barrier()
        self.assertIsNotNone(self.engine.registry.get(silent.session))
        self.clock.advance(25)             # t=75: silent idle 75 s > 60 s: dropped
        self.assertIsNone(self.engine.registry.get(silent.session))
        self.assertEqual(self.engine.registry.user_sessions("quiet"), set())

        await live.barrier()
        self.assertIsNotNone(self.engine.registry.get(live.session))
        msg_id = await self.push({"group": "g"}, "still here")
        await live.barrier()
        self.assertEqual([m["id"] for m in live.messages], [msg_id])

        silent.transport.resumeProducing()
        await silent.closed               # the server really let go of the socket

    @run
    async def test_unfinished_handshake_is_closed(self):
        lost = Deferred()

        class Half(Protocol):
            def connectionMade(self):
                self.transport.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never ends

            def connectionLost(self, reason):
                lost.callback(None)

        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Half())
        self.clock.advance(5)
        self.assertFalse(lost.called)
        self.clock.advance(6)
        await lost
