"""Join rules, presence and member events across worker processes (a pool)
and across nodes (two real ``twistd`` nodes through a real redis-server)."""

from __future__ import annotations

from pushsvc.client import ServerError
from pushsvc.ids import owner
from tests.helpers import eventually, run
from tests.test_pool import PoolTestCase
from tests.test_redis_broker import NodesTestCase
from tests.test_tokens import SECRET, token

EVENTS = {"": {"join": "open", "events": True}}


def members(c) -> list[tuple[str, str]]:
    """(op, session) of the member events ``c`` got."""
    return [(f["op"], f["session"]) for f in c.frames
            if f["op"] in ("joined", "left") and "session" in f]


class PoolJoinTests(PoolTestCase):
    """Two workers: each enforces the rules, and presence and events span both."""

    async def spread(self, count: int, **claims):
        """``count`` clients authenticated with a token each, on both workers."""
        clients = []
        for i in range(count):
            c = await self.client()
            await c.request("auth", token=token(sub=f"u{i % 3}", exp=None, **claims))
            clients.append(c)
        self.assertEqual(len({owner(c.session) for c in clients}), 2)
        return clients

    @run
    async def test_rules_presence_and_events_across_workers(self):
        await self.start_pool(2, auth_mode="token", jwt_secret=SECRET, jwt_require_exp=False,
                              namespaces={"team": {"events": True}})
        clients = await self.spread(8, groups=["team:7:*"])
        for c in clients:
            with self.assertRaises(ServerError) as caught:
                await c.request("join", group="hr-salaries")
            self.assertEqual(caught.exception.code, "forbidden")
            await c.request("join", group="team:7:chat")
        reply = await clients[0].request("presence", group="team:7:chat")
        self.assertEqual((reply["sessions"], reply["anonymous"], reply["users"]),
                         (8, 0, {"u0": {"sessions": 3}, "u1": {"sessions": 3},
                                 "u2": {"sessions": 2}}))
        # every member heard every later join, whichever worker it came from
        # (two workers' events are not ordered between them, and an event on
        # its way through the hub when a session joins may reach it too)
        sessions = [c.session for c in clients]
        for i, c in enumerate(clients):
            await eventually(lambda c=c, i=i: set(sessions[i:]) <= {s for _, s in members(c)},
                             what=f"the joins after client {i}")
        leaver = clients[-1]
        await leaver.disconnect()
        for c in clients[:-1]:
            await eventually(lambda c=c: members(c)[-1] == ("left", leaver.session),
                             what="the leave")
        msg = await self.push({"group": "team:7:chat"}, "x")
        await self.settle(clients[:-1], 1)
        self.assertTrue(all(c.messages[0]["id"] == msg for c in clients[:-1]))


class NodesJoinTests(NodesTestCase):
    """Two nodes of two workers on one Redis: presence and events are the cluster's."""

    @run
    async def test_presence_and_events_across_nodes(self):
        await self.start_nodes(workers=2, config_text='[namespaces.""]\nevents = true\n')
        a = [await self.client_on("a", "alice", ["g"]), await self.client_on("a", "bob", ["g"])]
        b = [await self.client_on("b", "alice", ["g"]), await self.client_on("b", "carol", ["g"])]
        everyone = a + b
        reply = await b[1].request("presence", group="g")
        self.assertEqual((reply["sessions"], reply["users"]),
                         (4, {"alice": {"sessions": 2}, "bob": {"sessions": 1},
                              "carol": {"sessions": 1}}))
        sessions = [c.session for c in everyone]
        first = everyone[0]
        await eventually(lambda: sorted(s for _, s in members(first)) == sorted(sessions), 10,
                         "every join on node a's first client")
        await b[0].disconnect()
        for c in (a[0], a[1], b[1]):
            await eventually(lambda c=c: members(c)[-1] == ("left", b[0].session), 10,
                             "the leave on node b heard everywhere")
        reply = await a[0].request("presence", group="g")
        self.assertEqual(reply["users"]["alice"], {"sessions": 1})
        # events are not kept: a resume replays only messages
        self.assertTrue(all("pos" not in f for c in everyone for f in c.frames
                            if f["op"] in ("joined", "left")))
