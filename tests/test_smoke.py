"""End-to-end: a client connects, joins, and receives a push; and the seams
every piece of the server plugs into."""

from twisted.trial import unittest

from tests.helpers import ServerTestCase, run


class SmokeTests(ServerTestCase):
    def setUp(self):
        self.start_server()

    @run
    async def test_push_to_group_arrives(self):
        c = await self.client(user="alice", groups=("lobby",))
        msg_id = await self.push({"group": "lobby"}, {"text": "hi"})
        await c.barrier()
        self.assertEqual(
            [(m["id"], m["to"], m["data"]) for m in c.messages],
            [(msg_id, {"group": "lobby"}, {"text": "hi"})])


class ReloadSeamTests(unittest.TestCase):
    """Every piece a reload reaches provides IReloadable, checked with verifyObject."""

    def test_the_pieces_of_one_process(self):
        from twisted.internet import reactor
        from zope.interface.verify import verifyObject

        from pushsvc.proxy import Backends
        from pushsvc.reloadable import IReloadable
        from pushsvc.server import PushServer
        from tests.helpers import settings

        server = PushServer(settings(), reactor)
        pieces = server.reloadables()
        self.assertEqual(len(pieces), 4)  # engine, keeper, WebSocket factory, site
        for piece in pieces + [server.site.api, Backends(None, print, lambda: print)]:
            self.assertTrue(verifyObject(IReloadable, piece), piece)


class ImportDirectionTests(unittest.TestCase):
    """Imports run one way: the master loads no engine and no WebSocket stack;
    broker/ and admin/ never import pool/."""

    def test_the_master_loads_no_engine(self):
        import subprocess
        import sys
        code = ("import sys, pushsvc.tap, pushsvc.pool.master; print(sorted(m for m in "
                "sys.modules if m.startswith(('pushsvc.engine', 'pushsvc.websocket', "
                "'pushsvc.http', 'pushsvc.server', 'pushsvc.pool.worker', 'autobahn'))))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        self.assertEqual(out.strip(), "[]")

    def test_broker_and_admin_never_import_pool(self):
        import pathlib
        root = pathlib.Path(__file__).resolve().parent.parent / "pushsvc"
        for package in ("broker", "admin", "wire"):
            for path in (root / package).glob("*.py"):
                text = path.read_text()
                self.assertNotIn("from ..pool", text, path)
                self.assertNotIn("pushsvc.pool", text, path)


class TwistedPrivateTests(unittest.TestCase):
    """pushsvc/twisted_private.py reads fields Twisted keeps private: each is
    checked against the installed Twisted here, so a rename fails the suite."""

    def test_unsent_bytes_of_a_file_descriptor(self):
        from twisted.internet.abstract import FileDescriptor
        from pushsvc.twisted_private import nothing_unsent, unsent
        fd = FileDescriptor()
        self.assertEqual((unsent(fd), nothing_unsent(fd)), (0, True))
        fd.connected = True
        fd.startWriting = lambda: None
        fd.write(b"12345")
        self.assertEqual((unsent(fd), nothing_unsent(fd)), (5, False))

    def test_write_now_goes_to_the_kernel_when_nothing_waits(self):
        """A write to an idle socket leaves at once; behind unwritten bytes
        it queues after them, in order."""
        import socket
        from twisted.internet import reactor
        from twisted.internet.tcp import Connection
        from pushsvc.twisted_private import nothing_unsent, stdio_pipe, write_now
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        conn = Connection(ours, None, reactor)
        conn.connected = True
        write_now(conn, b"now")
        self.assertEqual(theirs.recv(10), b"now")
        conn.startWriting = lambda: None
        conn.write(b"queued ")
        write_now(conn, b"after")
        self.assertFalse(nothing_unsent(conn))
        self.assertEqual(conn._tempDataBuffer, [b"queued ", b"after"])
        import os
        from twisted.internet.protocol import Protocol
        from twisted.internet.stdio import StandardIO
        stdin, unused = os.pipe()
        readable, stdout = os.pipe()
        io = StandardIO(Protocol(), stdin=stdin, stdout=stdout, reactor=reactor)
        self.addCleanup(os.close, unused)
        self.addCleanup(os.close, readable)
        self.addCleanup(io.loseConnection)
        write_now(stdio_pipe(io), b"record")
        self.assertEqual(os.read(readable, 10), b"record")

    def test_endpoint_fields(self):
        import os
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString
        from pushsvc.twisted_private import context_factory, tcp_binding
        from tests.test_tls import make_certificate
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1:backlog=7")
        self.assertEqual(tcp_binding(endpoint), ("127.0.0.1", 0, 7))
        key, cert, _ = make_certificate(os.path.abspath(self.mktemp()), "localhost")
        endpoint = serverFromString(reactor, f"ssl:4433:privateKey={key}:certKey={cert}")
        self.assertEqual(tcp_binding(endpoint), ("", 4433, 50))
        self.assertIsNotNone(context_factory(endpoint).getContext())


class GarbageCollectorTests(unittest.TestCase):
    """A serving process collects less often, and freezes what start-up made."""

    def test_tune_sets_the_threshold_and_freezes_after_startup(self):
        import gc
        from twisted.internet.testing import MemoryReactor
        from pushsvc import gc_tuning
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        reactor = MemoryReactor()
        triggers = []
        reactor.addSystemEventTrigger = lambda *args: triggers.append(args)
        gc_tuning.tune(reactor)
        self.assertEqual(gc.get_threshold(), (gc_tuning.YOUNG,) + before[1:])
        self.assertEqual(triggers, [("after", "startup", gc.freeze)])
