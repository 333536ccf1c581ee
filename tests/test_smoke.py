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
        self.assertEqual(len(pieces), 5)  # engine, history, mailbox, WebSocket factory, site
        for piece in pieces + [server.site.api, Backends(None, print, lambda: print)]:
            self.assertTrue(verifyObject(IReloadable, piece), piece)
