"""End-to-end: a client connects, joins, and receives a push."""

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
