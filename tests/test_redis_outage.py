"""A Redis outage within one node: the workers of a node keep delivering to
each other through the master's hub while Redis is away, and nobody gets a
message twice when it is back (broker/redis.py, "Within a node while Redis is
away").

- ``RelayWireTests``: the ``RELAY`` flag of a publish record and what the hub
  does with it (no Redis needed).
- ``RelayBrokerTests``: RedisBrokers in this process on a real redis-server,
  two of them behind a real ``Pool`` hub (its AMP pipes replaced by calls).
- ``RelayNodeTests``: real nodes (``twistd pushsvc --workers 2 --redis``).
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from twisted.web.client import Agent

from pushsvc.broker.amp import WorkerProtocol
from pushsvc.broker.interface import Command
from pushsvc.broker.redis import RedisBroker
from pushsvc.frames import message_frame
from pushsvc.history import History
from pushsvc.ids import owner
from pushsvc.pool.master import Pool
from pushsvc.wire.hub_commands import PublishBatch, RunCommand, Subscribe, Unsubscribe
from pushsvc.wire.records import (RELAY, STORE, as_relay, pack_publish, unpack_messages,
                                  unpack_publishes)
from pushsvc.wire.worker_commands import DeliverBatch, Perform
from pushsvc.protocol import Address
from tests.helpers import eventually, run, settings
from tests.redis_helpers import RedisServer
from tests.test_pool_wire import FakeWorker, pack
from tests.test_redis_broker import FakeEngine, NodesTestCase, message


# -- the flag and the hub (no Redis) ------------------------------------------------

class RelayWireTests(unittest.TestCase):

    def test_the_flags_ride_in_the_channel_count(self):
        plain = pack_publish(["all", "group:g"], "n.0.i.M1", b'{"all":true}', b"frame")
        stored = pack_publish(["user:u"], "n.0.i.M2", b'{"user":"u"}', b"f2", store=True)
        batch = plain + as_relay(plain) + stored + as_relay(stored)
        self.assertEqual([(channels, flags) for channels, _, flags
                          in unpack_publishes(batch, with_flags=True)],
                         [(["all", "group:g"], 0), (["all", "group:g"], RELAY),
                          (["user:u"], STORE), (["user:u"], STORE | RELAY)])
        # a reader without the flags (Redis payloads) sees the same records
        self.assertEqual([bytes(record) for _, record in unpack_publishes(batch)],
                         [bytes(r) for _, r in unpack_publishes(plain + plain + stored
                                                                + stored)])
        self.assertEqual(len(as_relay(plain)), len(plain))

    def hub(self) -> Pool:
        self.clock = Clock()
        pool = Pool(settings(), None, 3, None, clock=self.clock)
        pool.keeper.history = History(60, 100, 1 << 20, epoch="E")
        for index in range(3):
            pool.workers[index] = FakeWorker(index)
            pool.live.add(pool.workers[index])
        pool.keeper.table.subscribe(pool.workers[0], ["all", "user:u"])
        pool.keeper.table.subscribe(pool.workers[1], ["all"])
        pool.keeper.table.subscribe(pool.workers[2], ["user:v"])
        return pool

    def delivered(self, pool: Pool, index: int):
        return [(command, list(unpack_messages(args["batch"])))
                for command, args in pool.workers[index].amp.calls]

    def test_the_hub_relays_to_the_others_only_and_numbers_nothing(self):
        pool = self.hub()
        frame = message_frame("a.0.i.M1", Address(all=True), "x")
        batch = b"".join(as_relay(pack_publish(channels, msg_id, b"{}", frame, store))
                         for channels, msg_id, store in [(["all"], "a.0.i.M1", False),
                                                         (["user:u", "user:w"], "a.0.i.M2",
                                                          True)])
        pool.hub.forward(pool.workers[0], batch)
        self.clock.advance(0)
        self.assertEqual(self.delivered(pool, 0), [])  # the origin delivered them itself
        self.assertEqual(self.delivered(pool, 1), [(DeliverBatch, [("a.0.i.M1", b"{}", frame)])])
        self.assertEqual(self.delivered(pool, 2), [])
        self.assertEqual(pool.keeper.history.replay(["all", "user:u"], 0, "E", self.clock.seconds()),
                         ([], []))
        self.assertEqual(pool.keeper.mailbox.take("w", 0.0), [])  # Redis keeps it, when back
        # the same message without the flag: numbered, and to the origin too
        pool.hub.forward(pool.workers[0], pack([(["all"], "a.0.i.M3", b"{}", frame)]))
        self.clock.advance(0)
        [(_, [(msg_id, _, numbered)])] = self.delivered(pool, 0)
        self.assertEqual((msg_id, json.loads(numbered)["pos"]), ("a.0.i.M3", 1))


# -- RedisBrokers behind a real hub, in this process ----------------------------------

class Recorder(FakeEngine):
    """A FakeEngine that keeps the frames too."""

    def __init__(self, name: str):
        super().__init__(name)
        self.frames: dict[str, list[bytes]] = {}

    def deliver(self, message, alone=False):
        super().deliver(message, alone)
        self.frames.setdefault(message.id, []).append(message.frame)


class Pipe:
    """One worker's AMP pipe with the hub, without the pipe: the hub's calls
    go to the worker's ``WorkerProtocol`` responders (``amp``, master ->
    worker), the broker's to its ``HubProtocol`` responders (``hub``)."""

    def __init__(self, pool: Pool, index: int, broker: RedisBroker):
        self.index = index
        self.ready = True
        self.amp = _Calls({DeliverBatch: WorkerProtocol(broker).deliver,
                           Perform: WorkerProtocol(broker).perform})
        end = pool.hub.protocol(self)
        self.hub = _Calls({Subscribe: end.subscribe, Unsubscribe: end.unsubscribe,
                           PublishBatch: end.publish, RunCommand: end.run_command})
        pool.workers[index] = self
        pool.live.add(self)
        broker.use_hub(self.hub)


class _Calls:
    def __init__(self, responders):
        self.responders = responders
        self.calls: list = []

    def callRemote(self, command, **args):
        self.calls.append(command)
        d = maybeDeferred(self.responders[command], **args)
        return d if command.requiresAnswer else None

    def send_batch(self, command, batch):
        self.callRemote(command, batch=batch)


class RelayBrokerTests(unittest.TestCase):

    timeout = 60

    async def broker(self, node: str, worker: int = 0) -> tuple[RedisBroker, Recorder]:
        s = settings(redis=self.redis.url, node=node, redis_heartbeat=0.2, redis_timeout=1.0)
        broker = RedisBroker(s, f"{node}.{worker}", reactor, token=f"host:{node}")
        engine = Recorder(broker.owner)
        broker.attach(engine)
        self.addCleanup(broker.close)
        return broker, engine

    @staticmethod
    async def subscribe(broker: RedisBroker, *names: str) -> None:
        for name in names:
            d = broker.subscribe(name)
            if d is not None:
                await d

    @run
    async def test_a_node_delivers_within_itself_while_redis_is_away_and_once(self):
        self.redis = RedisServer(self)
        await self.redis.start()
        hub = Pool(settings(redis=self.redis.url), None, 2, None, clock=reactor)
        a0, ea0 = await self.broker("a", 0)
        a1, ea1 = await self.broker("a", 1)
        b0, eb0 = await self.broker("b", 0)
        pipes = [Pipe(hub, 0, a0), Pipe(hub, 1, a1)]
        brokers = (a0, a1, b0)
        await eventually(lambda: all(b.health() is None for b in brokers), 10, "connected")
        await self.subscribe(a0, "all", "group:g", "worker:a.0")
        await self.subscribe(a1, "all", "group:g", "user:u", "worker:a.1", "tag:t")
        await self.subscribe(b0, "all", "group:g", "user:u")
        a1.unsubscribe("tag:t")
        # the hub's table follows the subscriptions while Redis is up (only they cross)
        self.assertEqual({c: sorted(w.index for w in ws) for c, ws in hub.keeper.table.channels.items()},
                         {"all": [0, 1], "group:g": [0, 1], "user:u": [1],
                          "worker:a.0": [0], "worker:a.1": [1]})
        await eventually(lambda: all(len(b.members) == 3 for b in brokers), 10, "members")
        names, msg = message("a.0.x.Mup", all=True)
        await a0.publish(names, msg)
        engines = (ea0, ea1, eb0)
        await eventually(lambda: all(e.delivered == [msg.id] for e in engines), 5, "Mup")
        self.assertTrue(all(b'"pos"' in e.frames[msg.id][0] for e in engines))
        # the publish went through Redis alone
        self.assertEqual(set(pipes[0].hub.calls), {Subscribe})
        self.assertEqual(set(pipes[1].hub.calls), {Subscribe, Unsubscribe})
        for e in engines:
            e.delivered.clear()
            e.frames.clear()

        await self.redis.stop()
        await eventually(lambda: all(b.health() is not None and not b._publisher.may_send()
                                     for b in brokers), 10, "degraded")
        sent = {}
        for name, to in [("all", {"all": True}), ("g", {"group": ["g"]}),
                         ("u", {"user": ["u"]}), ("s", {"session": ["a.1.x.1"]}),
                         ("gu", {"group": ["g"], "user": ["u"]})]:
            names, msg = message(f"a.0.x.M{name}", **to)
            await a0.publish(names, msg)
            sent[name] = msg.id
        names, msg = message("a.1.x.Mn", group=["g"])
        await a1.publish(names, msg)
        sent["n"] = msg.id
        mine = [sent[k] for k in ("all", "g", "gu")]
        theirs = [sent[k] for k in ("all", "g", "u", "s", "gu")]

        def from_a0(engine):
            return [i for i in engine.delivered if i.startswith("a.0.")]
        await eventually(lambda: len(ea0.delivered) == 4 and len(ea1.delivered) == 6,
                         5, "delivery on both workers of a")
        self.assertEqual((from_a0(ea0), from_a0(ea1)), (mine, theirs))  # in order
        self.assertIn(sent["n"], ea0.delivered)
        self.assertIn(sent["n"], ea1.delivered)
        for engine in (ea0, ea1):  # nothing numbered them
            self.assertTrue(all(b'"pos"' not in f for fs in engine.frames.values()
                                for f in fs))
        self.assertEqual(hub.keeper.history.replay(["all", "group:g"], 0, hub.keeper.history.epoch,
                                            reactor.seconds())[0], [])
        # commands answer for the node, through the hub
        results = await a0.command(Command("stats", {}))
        self.assertEqual(sorted(r["worker"] for r in results), ["a.0", "a.1"])
        self.assertEqual((a0.counters["relayed"], a1.counters["from_hub"]), (5, 5))
        self.assertEqual(eb0.delivered, [])

        await self.redis.start()
        await eventually(lambda: all(b.health() is None for b in brokers), 15, "back")
        wanted = [sent[k] for k in ("all", "g", "u", "gu", "n")]
        await eventually(lambda: sorted(eb0.delivered) == sorted(wanted), 15,
                         "the queued messages on b")
        self.assertTrue(all(b'"pos"' in fs[0] for fs in eb0.frames.values()), eb0.frames)
        # a last broadcast from each comes after the Redis copies: none got through twice
        for broker, engine in ((a0, ea0), (a1, ea1)):
            names, msg = message(f"{broker.owner}.x.Mlast", all=True)
            await broker.publish(names, msg)
            await eventually(lambda: all(e.delivered[-1:] == [msg.id] for e in (ea0, ea1, eb0)),
                             5, "the last broadcast")
            for e in (ea0, ea1, eb0):
                e.delivered.pop()
        self.assertEqual(sorted(ea0.delivered), sorted(mine + [sent["n"]]))
        self.assertEqual(sorted(ea1.delivered), sorted(theirs + [sent["n"]]))
        self.assertEqual(sorted(eb0.delivered), sorted(wanted))
        self.assertGreaterEqual(a1.counters["duplicates"], 4)  # the Redis copies it had
        self.assertEqual((a0._inbox._relayed, a1._inbox._relayed),
                         ({}, {}))  # forgotten as they came


# -- real nodes -----------------------------------------------------------------

class RelayNodeTests(NodesTestCase):

    async def degraded(self, name: str) -> None:
        """Poll /healthz on node ``name`` (its worker that takes the pushes)
        until it answers 503."""
        await self._poll(lambda: self.on(name, "GET", "/healthz"),
                         lambda status, body: status == 503, f"node {name} degraded")

    async def _poll(self, ask, done, what: str, timeout: float = 10.0) -> None:
        deadline = reactor.seconds() + timeout
        while True:
            if done(*await ask()):
                return
            if reactor.seconds() > deadline:
                self.fail(f"{what}: not within {timeout} s")
            await deferLater(reactor, 0.05, lambda: None)

    async def every_worker_degraded(self, name: str, sessions: dict[str, int]) -> None:
        """Poll /healthz on new connections (the kernel spreads them over the
        workers) until each worker of node ``name``, told by its session
        count in ``sessions`` (all different), has answered 503."""
        seen: set[int] = set()
        node = self.nodes[name]

        async def ask():
            self.use_port(node.port)
            self.agent = Agent(reactor)  # a new connection each time
            return await self.http("GET", "/healthz")

        def done(status, body):
            if status == 503:
                seen.add(body["sessions"])
            return seen >= set(sessions.values())
        await self._poll(ask, done, f"every worker of {name} degraded ({sessions})")

    @run
    async def test_the_workers_of_a_node_deliver_to_each_other_while_redis_is_away(self):
        await self.start_nodes(workers=2)
        # clients of ann and of bob (in group g) on both workers of node a,
        # more on one worker than on the other (their /healthz tells them apart)
        user_of: dict = {}
        on_a: dict[tuple[str, str], list] = {}
        counts: dict[str, int] = {}
        for n in range(60):
            user = ("ann", "bob")[n % 2]
            c = await self.client_on("a", user, ["g"] if user == "bob" else [])
            user_of[c] = user
            on_a.setdefault((owner(c.session), user), []).append(c)
            counts = {w: sum(len(cs) for (o, _), cs in on_a.items() if o == w)
                      for w in ("a.0", "a.1")}
            if len(on_a) == 4 and counts["a.0"] != counts["a.1"]:
                break
        self.assertEqual(len(on_a), 4, "ann and bob on both workers of a")
        self.assertNotEqual(counts["a.0"], counts["a.1"])
        a_clients = list(user_of)
        b_ann = await self.client_on("b", "ann")
        b_bob = await self.client_on("b", "bob", ["g"])
        user_of.update({b_ann: "ann", b_bob: "bob"})
        everyone = list(user_of)
        await self.settle(everyone, {})

        await self.redis.stop()
        await self.degraded("a")
        await self.every_worker_degraded("a", counts)
        # the pushes enter one worker of a (one kept-alive connection): its
        # id says which; the other worker's clients get them through the hub
        sent = [await self.push_on("a", {"all": True})]
        origin = owner(sent[0])
        other = "a.1" if origin == "a.0" else "a.0"
        there = on_a[(other, "bob")]
        addresses = [{"all": True}, {"group": "g"}, {"user": "ann"},
                     {"group": "g", "user": ["ann"]}, {"session": there[0].session},
                     {"user": ["bob", "ann"]}]
        for to in addresses[1:]:
            sent.append(await self.push_on("a", to))
        # and a client of the other worker sends to its group
        sent.append((await there[-1].request("send", to={"group": "g"}, data="hi"))["id"])
        addresses.append({"group": "g"})
        self.assertEqual({owner(m) for m in sent}, {origin, other})

        def gets(c, to) -> bool:
            user = user_of[c]
            return bool(to.get("all") or to.get("session") == c.session
                        or (user == "bob" and to.get("group") == "g")
                        or to.get("user") == user or user in (to.get("user") or ()))
        expected = {c: [m for m, to in zip(sent, addresses) if gets(c, to)] for c in everyone}
        await eventually(lambda: all(len(c.messages) >= len(expected[c]) for c in a_clients),
                         10, "every message on both workers of a")
        for c in a_clients:  # each once, in its publisher's order, without a position
            got = [m["id"] for m in c.messages]
            self.assertEqual(sorted(got), sorted(expected[c]), c.session)
            self.assertEqual([m for m in got if owner(m) == origin],
                             [m for m in expected[c] if owner(m) == origin], c.session)
            self.assertEqual([m for m in c.messages if "pos" in m], [], c.session)
        self.assertEqual((b_ann.messages, b_bob.messages), ([], []))
        # commands answer for node a meanwhile, through its hub
        status, body = await self.on("a", "GET", "/api/stats")
        self.assertEqual(sorted(w["worker"] for w in body["workers"]), ["a.0", "a.1"])
        self.assertEqual(body["sessions"], len(a_clients))

        for c in a_clients:
            del c.messages[:]
        await self.redis.start()
        for node in self.nodes.values():
            await self.wait_healthy(node)
        # b gets what a kept for it, numbered ...
        for c in (b_ann, b_bob):
            await eventually(lambda: sorted(m["id"] for m in c.messages)
                             == sorted(expected[c]), 15, f"the kept messages on {c.session}")
            self.assertTrue(all("pos" in m for m in c.messages), c.messages)
            del c.messages[:]
        # ... and a's clients none of them again: a last broadcast through
        # Redis comes after every copy of them
        await self.settle(everyone, {})
        out = self.nodes["a"].child.output()
        self.assertEqual(out.count("redis is back after"), 2, out)  # each worker, once
