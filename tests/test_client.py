"""``pushsvc.client.PushClient``, the client that stays connected, over real
sockets: it comes back after the server drops it or restarts, resumes from
the last ``pos`` (the missed messages arrive in order, once), tells gaps, and
stays away when refused or kicked; it joins with subscription tokens (a
fresh one on each reconnect) and data, asks presence, hears member events,
forgets the groups the server took it out of, and tells a re-join refused
after a reconnect. The examples run as child processes: the Twisted one and
the asyncio one."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from pushsvc.client import ConnectionClosed, PushClient, ServerError
from pushsvc.protocol import parse_push
from pushsvc.server import PushServer
from tests.helpers import Child, ServerTestCase, eventually, run, settings
from tests.test_tokens import NOW, SECRET, TokenServerTestCase, token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Recorder:
    """Collects what a PushClient tells."""

    def __init__(self, client: PushClient):
        self.client = client
        self.messages: list[dict] = []
        self.gaps: list[dict] = []
        self.resumes: list[dict] = []
        self.states: list[dict] = []
        self.errors: list[Exception] = []
        self.members: list[dict] = []   # joined and left frames, in order
        client.on("message", self.messages.append)
        client.on("joined", self.members.append)
        client.on("left", self.members.append)
        client.on("gap", self.gaps.append)
        client.on("resumed", self.resumes.append)
        client.on("state", self.states.append)
        client.on("error", self.errors.append)

    def data(self) -> list:
        return [m["data"] for m in self.messages]

    def state_names(self) -> list[str]:
        return [s["state"] for s in self.states]


class PushClientTests(ServerTestCase):
    def make(self, user: str | None = "ann", groups=("g1",), **kw) -> tuple[PushClient, Recorder]:
        kw.setdefault("min_delay", 0.05)
        kw.setdefault("random", lambda: 0.5)  # no jitter: the delay is the base
        client = PushClient(self.url, user=user, groups=groups, **kw)
        self.addCleanup(client.stop)
        return client, Recorder(client)

    def conns(self, user: str):
        return [s.conn for s in self.engine.registry.user_sessions(user)]

    def publish(self, to: dict, data) -> None:
        """Publish at once, in this reactor turn (a client cannot come back meanwhile)."""
        address, data = parse_push({"to": to, "data": data}, 100)
        self.engine.publish(address, data)

    def drop(self, user: str) -> None:
        """The server drops the user's connections without a close handshake."""
        for conn in self.conns(user):
            conn.dropConnection(abort=True)

    async def back(self, client: PushClient) -> None:
        """Wait until the client has seen its connection go, and is ready again."""
        await eventually(lambda: client.state != "ready", what="the client sees the loss")
        await client.when_ready()

    @run
    async def test_ready_in_its_groups_sends_and_receives(self):
        self.start_server()
        client, seen = self.make()
        self.assertIs(await client.start(), client)
        self.assertEqual((client.state, client.user, client.groups), ("ready", "ann", {"g1"}))
        self.assertEqual(seen.state_names(), ["connecting", "open", "ready"])
        other = await self.client("bob", groups=("g1",))
        msg_id = await client.send({"group": "g1"}, {"text": "hi"})
        [got] = await other.wait_for_messages(1)
        self.assertEqual((got["id"], got["data"], got["from"]["user"]),
                         (msg_id, {"text": "hi"}, "ann"))
        await self.push({"group": "g1"}, "pushed")
        await client.ping()
        self.assertEqual(seen.data(), [{"text": "hi"}, "pushed"])
        self.assertEqual(client.last_pos, seen.messages[-1]["pos"])
        self.assertEqual(client.pos_epoch, client.epoch)

        await client.join("g2")
        await client.leave("g1")
        self.assertEqual(client.groups, {"g2"})
        with self.assertRaises(ServerError) as e:
            await client.send({"group": "g1"}, "not a member any more")
        self.assertEqual(e.exception.code, "forbidden")

    @run
    async def test_back_after_a_drop_with_what_it_missed_in_order_once(self):
        self.start_server()
        client, seen = self.make(groups=("g1", "g2"))
        await client.start()
        await self.push({"group": "g1"}, 0)
        await self.push({"user": "ann"}, 1)
        await client.ping()
        first_session = client.session

        self.drop("ann")
        for n, to in enumerate([{"group": "g1"}, {"user": "ann"}, {"group": "g2"},
                                {"group": "elsewhere"}, {"all": True}], 2):
            self.publish(to, n)
        await self.back(client)
        await self.push({"group": "g2"}, "live")
        await client.ping()

        self.assertEqual(seen.data(), [0, 1, 2, 3, 4, 6, "live"])
        positions = [m["pos"] for m in seen.messages]
        self.assertEqual(positions, sorted(set(positions)))
        [resumed] = seen.resumes
        self.assertEqual((resumed["since"], resumed["replayed"], resumed["gaps"]),
                         (positions[1], 4, []))
        self.assertEqual(seen.gaps, [])
        self.assertNotEqual(client.session, first_session)
        self.assertEqual(client.groups, {"g1", "g2"})
        self.assertEqual([s["state"] for s in seen.states],
                         ["connecting", "open", "ready", "waiting", "connecting", "open",
                          "ready"])
        waiting = seen.states[3]
        self.assertEqual((waiting["code"], waiting["delay"]), (1006, 0.05))
        # The server sees one session of ann's, in both groups, again.
        [conn] = self.conns("ann")
        self.assertEqual(conn.session.groups, {"g1", "g2"})

    @run
    async def test_a_message_both_live_and_replayed_is_delivered_once(self):
        # A message published between the join and the resume of a client
        # that comes back is in the replay: the server holds the live one
        # (the client connects with ?resume=1), and the client would keep
        # one of each anyway, in pos order.
        self.start_server()
        client, seen = self.make()
        await client.start()
        await self.push({"group": "g1"}, "seen")
        await client.ping()
        self.drop("ann")
        self.publish({"group": "g1"}, "missed")

        oks = []

        def push_on_join(frame):
            # The second ok of the new connection answers its join (after its auth).
            if frame["op"] == "ok" and client.state == "open":
                oks.append(frame)
                if len(oks) == 2:
                    self.publish({"group": "g1"}, "live, after the join")
        client.on("frame", push_on_join)
        await self.back(client)
        await client.ping()
        self.assertEqual(seen.data(), ["seen", "missed", "live, after the join"])
        self.assertEqual(seen.resumes[0]["replayed"], 2)

    @run
    async def test_a_gap_is_told(self):
        self.start_server(max_per_channel=3)
        client, seen = self.make()
        await client.start()
        await self.push({"group": "g1"}, "seen")
        await client.ping()
        self.drop("ann")
        for n in range(6):
            self.publish({"group": "g1"}, n)
        await self.back(client)
        await client.ping()
        self.assertEqual(seen.data(), ["seen", 3, 4, 5])
        self.assertEqual(seen.gaps, [{"channels": ["group:g1"], "epoch_changed": False,
                                      "since": seen.messages[0]["pos"]}])

    @run
    async def test_back_after_a_server_restart_with_a_new_history(self):
        # A restart closes with 1001; the new server's history has another
        # epoch: every channel is a gap, and positions start again.
        first = self.start_server()
        port = self.port
        client, seen = self.make(min_delay=0.2)
        await client.start()
        old_epoch = client.epoch
        await self.push({"group": "g1"}, "before")
        await client.ping()
        await first.stopService()

        second = PushServer(settings(), reactor)
        second.listen(reactor, f"tcp:{port}:interface=127.0.0.1")
        second.startService()
        self.addCleanup(lambda: second.stopService() if second.running else None)
        self.server = second
        await self.back(client)
        self.assertNotEqual(client.epoch, old_epoch)
        self.assertEqual(seen.states[3]["code"], 1001)
        self.assertEqual(seen.gaps, [{"channels": ["all", "group:g1", "user:ann"],
                                      "epoch_changed": True, "since": seen.messages[0]["pos"]}])
        await self.push({"group": "g1"}, "after")
        await client.ping()
        self.assertEqual(seen.data(), ["before", "after"])
        self.assertEqual((client.pos_epoch, client.last_pos),
                         (client.epoch, seen.messages[-1]["pos"]))

    @run
    async def test_service_restart_1012_and_try_later_1013(self):
        self.start_server()
        client, seen = self.make(min_delay=0.01)
        await client.start()
        for code in (1012, 1013):
            [conn] = self.conns("ann")
            conn.close(code, "restart")
            await self.back(client)
        waits = [s for s in seen.states if s["state"] == "waiting"]
        self.assertEqual([(w["code"], w["reason"]) for w in waits],
                         [(1012, "restart"), (1013, "restart")])
        # "Try again later" backs off further: as the fourth attempt.
        self.assertAlmostEqual(waits[0]["delay"], 0.01)
        self.assertAlmostEqual(waits[1]["delay"], 0.08)

    @run
    async def test_without_history_every_return_is_a_gap(self):
        self.start_server(ttl=0)
        client, seen = self.make()
        await client.start()
        self.assertIsNone(client.epoch)
        await self.push({"group": "g1"}, "live")
        await client.ping()
        self.drop("ann")
        await self.back(client)
        await self.push({"group": "g1"}, "live again")
        await client.ping()
        self.assertEqual(seen.data(), ["live", "live again"])
        self.assertEqual(seen.gaps, [{"channels": ["all", "group:g1", "user:ann"],
                                      "epoch_changed": True, "since": 0}])

    @run
    async def test_kicked_stays_away(self):
        self.start_server()
        client, seen = self.make()
        await client.start()
        status, body = await self.http("POST", "/api/kick", {"user": "ann", "reason": "bye"})
        self.assertEqual(body, {"sessions": 1})
        await eventually(lambda: client.state == "closed")
        self.assertEqual((seen.states[-1]["code"], seen.states[-1]["reason"]), (4000, "bye"))
        with self.assertRaises(ConnectionClosed):
            await client.join("g2")
        # start() connects again.
        await client.start()
        self.assertEqual((client.state, client.groups), ("ready", {"g1"}))

    @run
    async def test_kicked_comes_back_when_told_to(self):
        self.start_server()
        client, seen = self.make(reconnect_on_kick=True)
        await client.start()
        await self.http("POST", "/api/kick", {"user": "ann"})
        await self.back(client)
        self.assertEqual(seen.states[3]["code"], 4000)

    @run
    async def test_refused_authentication_stays_away(self):
        self.start_server(auth_mode="token", jwt_secret=SECRET)
        client, seen = self.make()  # a user name, where tokens are required
        with self.assertRaises(ConnectionClosed) as e:
            await client.start()
        self.assertEqual(e.exception.code, 1008)
        self.assertEqual(client.state, "closed")
        self.assertEqual([err.code for err in seen.errors], ["unauthorized"])

    @run
    async def test_a_token_function_gives_each_connection_a_fresh_token(self):
        self.start_server(auth_mode="token", jwt_secret=SECRET)
        made = []

        def fresh():
            made.append(token("ann", exp=time.time() + 600))
            return made[-1]
        client, seen = self.make(user=None, token=fresh)
        await client.start()
        self.assertEqual(client.user, "ann")
        self.drop("ann")
        await self.back(client)
        self.assertEqual((len(made), client.user), (2, "ann"))

    @run
    async def test_requests_made_while_away_wait_for_the_connection(self):
        self.start_server()
        client, seen = self.make(min_delay=0.2)
        await client.start()
        self.drop("ann")
        await eventually(lambda: client.state == "waiting")
        joined = client.join("g2")
        sent = client.send({"group": "g2"}, "from the queue")
        self.assertFalse(joined.called)
        await joined
        await sent
        await client.ping()
        self.assertEqual(seen.data(), ["from the queue"])
        self.assertEqual(client.groups, {"g1", "g2"})

    @run
    async def test_a_request_before_start_connects(self):
        self.start_server()
        client, seen = self.make(user=None, groups=())
        ok = await client.auth(user="cat")
        self.assertEqual((ok["op"], client.user), ("ok", "cat"))
        self.drop("cat")
        await self.back(client)
        self.assertEqual(client.user, "cat")  # authenticated again

    @run
    async def test_stop(self):
        self.start_server()
        client, seen = self.make()
        await client.start()
        await client.stop()
        self.assertEqual(client.state, "closed")
        await eventually(lambda: not self.conns("ann"))
        await deferLater(reactor, 0.1)
        self.assertEqual(client.state, "closed")  # no reconnect
        with self.assertRaises(ConnectionClosed):
            await client.ping()

    @run
    async def test_no_server_yet_retries(self):
        from tests.helpers import free_port
        port = free_port()
        client = PushClient(f"ws://127.0.0.1:{port}/ws", user="ann", min_delay=0.05)
        self.addCleanup(client.stop)
        seen = Recorder(client)
        ready = client.start()
        await eventually(lambda: seen.state_names().count("waiting") >= 2)
        server = PushServer(settings(), reactor)
        server.listen(reactor, f"tcp:{port}:interface=127.0.0.1")
        server.startService()
        self.addCleanup(server.stopService)
        await ready
        self.assertEqual(client.user, "ann")

    @run
    async def test_presence_and_member_events(self):
        self.start_server(namespaces={"": {"events": True}})
        client, seen = self.make()
        await client.start()
        bob = await self.client("bob", groups=("g1",))
        reply = await client.presence("g1")
        self.assertEqual(reply, {"op": "presence", "ref": reply["ref"], "group": "g1",
                                 "sessions": 2, "anonymous": 0,
                                 "users": {"ann": {"sessions": 1}, "bob": {"sessions": 1}}})
        with self.assertRaises(ServerError) as e:
            await client.presence("g2")
        self.assertEqual((e.exception.code, e.exception.frame["message"]),
                         ("forbidden", "not a member of group 'g2'"))
        await bob.disconnect()
        await eventually(lambda: len(seen.members) == 3, what="bob's left")
        await client.ping()
        # Its own join, bob's join and bob's leave; a member leaving does not
        # take the client out of the group.
        self.assertEqual(seen.members, [
            {"op": "joined", "group": "g1", "session": client.session, "user": "ann"},
            {"op": "joined", "group": "g1", "session": bob.session, "user": "bob"},
            {"op": "left", "group": "g1", "session": bob.session, "user": "bob"}])
        self.assertEqual(client.groups, {"g1"})
        reply = await client.presence("g1")
        self.assertEqual((reply["sessions"], reply["users"]), (1, {"ann": {"sessions": 1}}))

    @run
    async def test_groups_the_server_joins_and_takes_away(self):
        """A group the server joined the session to is joined again after a
        reconnect; one it took the session out of is not."""
        self.start_server()
        client, seen = self.make()
        await client.start()
        self.assertEqual(await self.http("POST", "/api/join", {"user": "ann", "group": "g2"}),
                         (200, {"sessions": 1, "refused": 0}))
        self.assertEqual(await self.http("POST", "/api/destroy", {"group": "g1"}),
                         (200, {"sessions": 1}))
        await client.ping()
        self.assertEqual(seen.members, [{"op": "joined", "group": "g2", "reason": "server"},
                                        {"op": "left", "group": "g1", "reason": "destroyed"}])
        self.assertEqual(client.groups, {"g2"})
        self.drop("ann")
        await self.back(client)
        [conn] = self.conns("ann")
        self.assertEqual(conn.session.groups, {"g2"})
        self.assertEqual((client.groups, seen.errors), ({"g2"}, []))


class GroupTokenTests(TokenServerTestCase):
    """PushClient and the join rules of a token-mode server whose timers run
    on a Clock: subscription tokens (a fresh one for each join), join data,
    a token that runs out, re-joins refused after a reconnect."""

    def make(self, **kw) -> tuple[PushClient, Recorder]:
        kw.setdefault("min_delay", 0.05)
        kw.setdefault("random", lambda: 0.5)
        client = PushClient(self.url, token=lambda: token("ann", exp=NOW + 3600), **kw)
        self.addCleanup(client.stop)
        return client, Recorder(client)

    def server_groups(self, client: PushClient) -> set[str]:
        return self.engine.registry.get(client.session).groups

    async def back(self, client: PushClient) -> None:
        """The server drops ann's connection; wait until the client is ready again."""
        for session in self.engine.registry.user_sessions("ann"):
            session.conn.dropConnection(abort=True)
        await eventually(lambda: client.state != "ready", what="the client sees the loss")
        await client.when_ready()

    @run
    async def test_a_token_function_gives_each_join_a_fresh_subscription_token(self):
        self.start()
        made = []
        expiries = [NOW + 60, NOW + 600]

        async def room_token():  # a plain function, or one returning a Deferred, as well
            made.append(token("ann", exp=expiries[len(made)], group="room:1"))
            return made[-1]
        client, seen = self.make()
        ok = await client.join("room:1", token=room_token)  # before start(): it connects
        self.assertEqual((ok["op"], client.state), ("ok", "ready"))
        self.assertEqual((client.groups, self.server_groups(client)), ({"room:1"}, {"room:1"}))
        await self.back(client)
        self.assertEqual(len(made), 2)
        self.assertEqual(self.server_groups(client), {"room:1"})
        # Past the first token's expiry (and the 5 s leeway): the second one counts.
        self.clock.advance(100)
        await client.ping()
        self.assertEqual((client.groups, self.server_groups(client)), ({"room:1"}, {"room:1"}))
        self.assertEqual((seen.members, seen.errors), ([], []))

    @run
    async def test_a_token_that_runs_out_takes_the_group_away(self):
        self.start()
        calls = []

        def room_token():
            calls.append(None)
            return token("ann", exp=NOW + 60, group="room:1")
        client, seen = self.make()
        await client.start()
        await client.join("room:1", token=room_token)
        await client.join("room:2", token=token("ann", exp=NOW + 60, group="room:2"))
        self.clock.advance(30)
        # Joining again with a fresh token renews; the client keeps the new one.
        await client.join("room:2", token=token("ann", exp=NOW + 600, group="room:2"))
        self.clock.advance(40)                  # room:1's token ran out, with its leeway
        await client.ping()
        self.assertEqual(seen.members, [{"op": "left", "group": "room:1",
                                         "reason": "token expired"}])
        self.assertEqual((client.groups, self.server_groups(client)), ({"room:2"}, {"room:2"}))
        await self.back(client)
        self.assertEqual(len(calls), 1)         # room:1 is not joined again
        self.assertEqual((client.groups, self.server_groups(client)), ({"room:2"}, {"room:2"}))
        self.assertEqual(seen.errors, [])

    @run
    async def test_join_data_goes_with_each_join(self):
        from pushsvc.app import Allow, App
        self.start(namespaces={"vip": {"join": "hook"}})
        asked = []

        def on_join(session, api, group, data):
            asked.append((session.user, group, data))
            return Allow({"level": data["level"]})
        self.engine.set_app(App("t", type("M", (), {"on_join": staticmethod(on_join)})))
        client, seen = self.make()
        await client.start()
        await client.join("vip:1", data={"level": 3})
        expected = {"op": "presence", "group": "vip:1", "sessions": 1, "anonymous": 0,
                    "users": {"ann": {"sessions": 1, "data": {"level": 3}}}}
        reply = await client.presence("vip:1")
        self.assertEqual(reply, {**expected, "ref": reply["ref"]})
        await self.back(client)
        reply = await client.presence("vip:1")
        self.assertEqual(reply, {**expected, "ref": reply["ref"]})
        self.assertEqual(asked, [("ann", "vip:1", {"level": 3})] * 2)

    @run
    async def test_a_rejoin_refused_after_a_reconnect_is_dropped_and_told(self):
        self.start(namespaces={"staff": {"join": "server"}})
        # The second token the function gives is another user's.
        tokens = [token("ann", group="room:1"), token("bob", group="room:1")]
        client, seen = self.make()
        await client.start()
        await client.join("room:1", token=lambda: tokens.pop(0))
        await client.join("room:2", token=token("ann", group="room:2"))
        with self.assertRaises(ServerError) as e:
            await client.join("room:3")
        self.assertEqual((e.exception.code, e.exception.group, e.exception.frame["message"]),
                         ("forbidden", "room:3", "joining group 'room:3' needs a subscription "
                          "token or a token whose 'groups' claim names it"))
        # The server joins it to a group of a server-only namespace: the
        # client's own join of it will be refused.
        self.assertEqual(await self.http("POST", "/api/join",
                                         {"user": "ann", "group": "staff:all"}),
                         (200, {"sessions": 1, "refused": 0}))
        await client.ping()
        self.assertEqual(client.groups, {"room:1", "room:2", "staff:all"})
        await self.back(client)
        self.assertEqual((client.state, client.groups, self.server_groups(client)),
                         ("ready", {"room:2"}, {"room:2"}))
        self.assertEqual(
            [(e.code, e.group, e.frame["message"]) for e in seen.errors],
            [("forbidden", "room:1", "the token is for another user (claim 'sub')"),
             ("forbidden", "staff:all",
              "only the server joins sessions to group 'staff:all' (namespace 'staff')")])


class BackoffTests(unittest.TestCase):
    def delays(self, codes, random=lambda: 0.5, **kw):
        client = PushClient("ws://127.0.0.1:1/ws", reactor=Clock(), random=random, **kw)
        delays = []
        client.on("state", lambda s: delays.append(s["delay"]) if "delay" in s else None)
        for code in codes:
            client._schedule(code, "")
        return delays

    def test_doubles_up_to_the_most(self):
        self.assertEqual(self.delays([1006] * 9),
                         [0.5, 1, 2, 4, 8, 16, 30, 30, 30])

    def test_jitter_is_half_either_way(self):
        self.assertEqual(self.delays([1006, 1006], random=lambda: 0.0), [0.25, 0.5])
        self.assertEqual(self.delays([1006, 1006], random=lambda: 1.0), [0.75, 1.5])
        self.assertEqual(self.delays([1006], random=lambda: 1.0, jitter=0), [0.5])

    def test_try_later_starts_further_out(self):
        self.assertEqual(self.delays([1013, 1006, 1013]), [4, 8, 16])


class TokenFunctionTests(unittest.TestCase):
    """What a token (connection or subscription) may be: a string, or a
    callable returning one, a Deferred of one or an awaitable of one."""

    def test_strings_callables_and_deferreds(self):
        client = PushClient("ws://127.0.0.1:1/ws", reactor=Clock())
        self.assertEqual(self.successResultOf(client._token("t1")), "t1")
        self.assertEqual(self.successResultOf(client._token(lambda: "t2")), "t2")
        self.assertEqual(self.successResultOf(client._token(lambda: succeed("t3"))), "t3")
        self.failureResultOf(client._token(lambda: 1 / 0), ZeroDivisionError)

    def test_an_async_function_under_the_asyncio_reactor_runs_as_an_asyncio_task(self):
        # Its awaits are asyncio's: it runs as a task of the reactor's loop
        # (Twisted's asyncio reactor keeps the loop as _asyncioEventloop).
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        reactor_ = type("AsyncioReactor", (), {"_asyncioEventloop": loop})()
        client = PushClient("ws://127.0.0.1:1/ws", reactor=reactor_)

        async def fresh():
            await asyncio.sleep(0)
            return "t4"
        d = client._token(fresh)
        self.assertNoResult(d)
        loop.run_until_complete(asyncio.sleep(0.01))
        self.assertEqual(self.successResultOf(d), "t4")


class ExampleTests(ServerTestCase):
    """examples/listen.py (Twisted) and examples/listen_asyncio.py (asyncio),
    as child processes: they print each message, and come back after a drop
    with what they missed."""

    async def check_example(self, script: str):
        self.start_server()
        child = Child()
        path = os.path.join(ROOT, "examples", script)
        reactor.spawnProcess(child, sys.executable,
                             [sys.executable, path, self.url, "--user", "ann",
                              "--group", "g1", "--count", "3"],
                             env=os.environ.copy(), path=ROOT)
        self.addCleanup(child.kill)
        await eventually(lambda: any(s.groups for s in self.engine.registry.user_sessions("ann"))
                         or child.done, timeout=20, what="the example in its group")
        self.assertFalse(child.done, child.output())
        await self.push({"group": "g1"}, "one")
        await eventually(lambda: b"one" in child.stdout or child.done, what="one printed")
        for session in self.engine.registry.user_sessions("ann"):
            session.conn.dropConnection(abort=True)
        address, data = parse_push({"to": {"user": "ann"}, "data": "two"}, 100)
        self.engine.publish(address, data)
        # Pushed while it is away (or as it comes back): it gets it all the same.
        await self.push({"group": "g1"}, "three")
        d = child.exited().addTimeout(15, reactor)
        self.assertEqual(await d, 0, child.output())
        printed = [json.loads(line) for line in child.stdout.decode().splitlines()
                   if line.startswith("{")]
        self.assertEqual([m["data"] for m in printed], ["one", "two", "three"], child.output())

    @run
    async def test_twisted_example(self):
        await self.check_example("listen.py")

    @run
    async def test_asyncio_example(self):
        await self.check_example("listen_asyncio.py")

