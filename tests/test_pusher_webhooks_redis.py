"""channel_occupied/channel_vacated across Redis nodes
(broker/redis_occupancy.py): the engines of two nodes in this process on a
real redis-server (two independent shards; a real Redis Cluster of three
masters), each with its own WebhookSender wired as a server wires it
(``watch_redis_occupancy``), to one real webhook receiver.  Each transition
must arrive exactly once, however the nodes' joins and leaves interleave; a
node that dies (or stops) holding the last member is vacated by a live
node's sweep; what happens while the engines are cut off from Redis is
announced when they are back.  The one-process server with Redis is in
test_pusher_webhooks."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from pushsvc.broker import make_broker
from pushsvc.broker.redis_cluster_slots import shard_prefixes
from pushsvc.broker.redis_occupancy import SWEEP_BEATS, changes
from pushsvc.broker.redis_shards import shard_of
from pushsvc.pusher.apps import Apps, check_apps
from pushsvc.pusher.webhook_sender import WebhookSender, watch_redis_occupancy
from pushsvc.pusher.webhooks import WINDOW, wants_occupancy
from tests.helpers import eventually, run, settings
from tests.redis_helpers import RedisCluster, RedisServer
from tests.test_pusher_webhooks import Receiver, listen, validated
from tests.test_redis_broker import FakeEngine

BEAT = 0.2  # seconds: a sweep every SWEEP_BEATS of them
CLUSTER_SHARDS = 3  # logical shards of the Redis Cluster test: one per master


def chat(name: str = "chat") -> str:
    return f"group:pusher.1001:{name}"


def on_each(shards: int) -> list[str]:
    """One channel name of app 1001 per shard, by shard."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < shards:
        found.setdefault(shard_of(chat(f"c{n}"), shards), f"c{n}")
        n += 1
    return [found[i] for i in range(shards)]


class CoreTests(unittest.TestCase):
    def test_only_app_groups_whose_webhooks_ask_are_watched(self):
        hooks = [{"url": "http://x/h", "events": ["channel_vacated"]}]
        apps = Apps(check_apps([{"id": "1001", "key": "k", "secret": "s",
                                 "webhooks": hooks},
                                {"id": "1002", "key": "k2", "secret": "s",
                                 "webhooks": [{"url": "http://x/h",
                                               "events": ["member_added"]}]}]))
        self.assertTrue(wants_occupancy(apps, chat()))
        for other in ("group:pusher.1002:chat", "group:lobby", "user:u", "worker:a.0"):
            self.assertFalse(wants_occupancy(apps, other))

    def test_the_sync_answer(self):
        self.assertEqual(changes([b"group:a", b"1", b"group:b", b"0"]),
                         [("group:a", True), ("group:b", False)])


class NodesTests(unittest.TestCase):
    """Engines of two nodes ("a", "b") through Redis."""

    timeout = 60

    async def setup(self, shards: int = 1, cluster: bool = False):
        if cluster:  # three masters, no replicas: the quickest real cluster
            self.cluster = RedisCluster(self, masters=3, replicas=0)
            await self.cluster.start()
            url = self.cluster.url
        else:
            self.redis = [RedisServer(self) for _ in range(shards)]
            for server in self.redis:
                await server.start()
            url = " ".join(server.url for server in self.redis)
        self.receiver = Receiver()
        self.app = {"id": "1001", "key": "app-key", "secret": "app-secret",
                    "webhooks": [{"url": listen(self, self.receiver) + "/hook",
                                  "events": ["channel_occupied", "channel_vacated"]}]}
        self.settings = dict(redis=url, redis_heartbeat=BEAT, redis_timeout=1.0,
                             redis_cluster_shards=CLUSTER_SHARDS,
                             pusher_apps=check_apps([self.app]))

    async def node(self, name: str):
        """Node ``name``'s engine (its WebhookSender is its ``sender``)."""
        broker = make_broker(settings(node=name, **self.settings), 0, reactor,
                             otherwise=None)
        apps = Apps(check_apps([self.app]))
        sender = WebhookSender(reactor, lambda: apps)
        watch_redis_occupancy(broker, sender)
        broker.sender = sender
        broker.attach(FakeEngine(broker.owner))
        self.addCleanup(sender.close)
        self.addCleanup(broker.close)
        await eventually(lambda: broker.health() is None, 10, f"{name} connected")
        return broker

    @staticmethod
    async def join(broker, *channels: str) -> None:
        for channel in channels:
            d = broker.subscribe(channel)
            if d is not None:
                await d

    async def events(self, count: int, quiet: bool = True) -> list[tuple[str, str]]:
        """Once ``count`` events are in (and, ``quiet``, nothing more comes):
        (name, channel)."""
        await eventually(lambda: len(self.receiver.events()) >= count, 10,
                         f"{count} webhook events")
        if quiet:
            await deferLater(reactor, 2 * WINDOW + 2 * BEAT)
        for _, headers, body in self.receiver.requests:
            self.assertIsNotNone(validated(self.app, headers, body))
        return [(e["name"], e["channel"]) for e in self.receiver.events()]

    @run
    async def test_one_event_per_transition_however_nodes_interleave(self):
        await self.setup()
        a, b = await self.node("a"), await self.node("b")
        await self.join(a, chat())                       # occupied
        await self.join(b, chat(), "group:lobby")
        a.unsubscribe(chat())
        await self.join(a, chat())
        b.unsubscribe(chat())
        a.unsubscribe(chat())                            # vacated
        await self.events(2, quiet=False)
        # At the same instant on both nodes, twice over (a vacancy shorter
        # than a script call may be coalesced: the next round waits for it).
        for n in (4, 6):
            a.subscribe(chat())                          # occupied
            await self.join(b, chat())
            a.unsubscribe(chat())
            b.unsubscribe(chat())                        # vacated
            await self.events(n, quiet=False)
        # Joins and leaves sent without waiting for any confirmation.
        for broker in (a, b, a, b):
            broker.subscribe(chat("x"))
            broker.unsubscribe(chat("x"))
        await self.join(b, chat("x"))                    # occupied (maybe more, paired)
        got = await self.events(7)
        # Each round waited for its two events before the next began; within a
        # round they may come from two nodes' senders, which keep no order
        # between them (docs/pusher.md, "Order").
        for start in (0, 2, 4):
            self.assertEqual(sorted(got[start:start + 2]), [("channel_occupied", "chat"),
                                                             ("channel_vacated", "chat")])
        x = [name for name, channel in got[6:] if channel == "x"]
        # pairs, and one occupied more (the marker below says it is the last)
        self.assertEqual((x.count("channel_occupied"), len(x) % 2),
                         (x.count("channel_vacated") + 1, 1), x)
        # Only the watched groups are marked (an ordinary group costs nothing).
        self.assertEqual(self.redis[0].call("HKEYS", "pushsvc:_occupied"),
                         [chat("x").encode()])

    @run
    async def test_a_node_that_dies_is_vacated_by_a_live_nodes_sweep(self):
        await self.setup()
        a, b = await self.node("a"), await self.node("b")
        await self.join(b, chat())
        await self.join(a, chat())
        b.unsubscribe(chat())  # a holds the last member
        self.assertEqual(await self.events(1), [("channel_occupied", "chat")])
        # a dies: its connections go, without a goodbye (its membership expires).
        a._members.stop()
        for link in (a._sub, a._cmd):
            link.stopped = True
            link.protocol.transport.abortConnection()
        started = reactor.seconds()
        got = await self.events(2)
        self.assertEqual(got, [("channel_occupied", "chat"), ("channel_vacated", "chat")])
        # a's membership expires (3 beats), then within two sweeps.
        self.assertLess(reactor.seconds() - started, 3 * BEAT + 3 * SWEEP_BEATS * BEAT + 2)
        self.assertEqual(self.redis[0].call("HLEN", "pushsvc:_occupied"), 0)

    @run
    async def test_a_node_that_stops_leaves_vacating_to_a_live_node(self):
        """A stopping process (its sender ``stopping``) syncs nothing more: a
        live node's sweep announces what it vacated, so the event is not
        lost with the stopping process's queue."""
        await self.setup()
        a, b = await self.node("a"), await self.node("b")
        await self.join(a, chat())
        await self.events(1, quiet=False)
        a.sender.stopping = True
        a.unsubscribe(chat())
        await a.close()
        got = await self.events(2)
        self.assertEqual(got, [("channel_occupied", "chat"), ("channel_vacated", "chat")])
        self.assertEqual((a.sender.counters["webhook_sent"],
                          b.sender.counters["webhook_sent"]), (1, 1))

    @run
    async def test_what_happens_while_redis_is_cut_off_is_settled_when_back(self):
        """Every client connection to Redis killed (Redis keeps its data): a
        leave and a join made meanwhile are announced once the engines have
        subscribed again; a channel held throughout is not announced again."""
        await self.setup()
        a, b = await self.node("a"), await self.node("b")
        await self.join(a, chat("held"), chat("left"))
        await self.events(2, quiet=False)
        self.redis[0].call("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: a._sub.protocol is None and b._sub.protocol is None, 5,
                         "the subscribers cut off")
        a.unsubscribe(chat("left"))
        b.subscribe(chat("joined"))
        await eventually(lambda: a.health() is None and b.health() is None, 10, "back")
        got = await self.events(4)
        self.assertEqual(sorted(got[2:]), [("channel_occupied", "joined"),
                                           ("channel_vacated", "left")])

    @run
    async def test_two_shards_each_decide_for_their_channels(self):
        await self.setup(shards=2)
        names = ["c0", "c1", "c2", "c3"]
        on = {name: shard_of(chat(name), 2) for name in names}
        self.assertEqual(set(on.values()), {0, 1}, "channels on both shards")
        a, b = await self.node("a"), await self.node("b")
        await self.join(a, *map(chat, names))
        await self.join(b, *map(chat, names))
        for name in names:
            a.unsubscribe(chat(name))
            b.unsubscribe(chat(name))
        got = await self.events(8)
        for name in names:
            self.assertEqual([event for event, channel in got if channel == name],
                             ["channel_occupied", "channel_vacated"])
        for server in self.redis:  # each shard held its own markers, all gone
            self.assertEqual(server.call("HLEN", "pushsvc:_occupied"), 0)

    @run
    async def test_a_redis_cluster_each_logical_shard_in_its_slot(self):
        await self.setup(cluster=True)
        names = on_each(CLUSTER_SHARDS)
        prefixes = shard_prefixes("pushsvc:", CLUSTER_SHARDS)
        a, b = await self.node("a"), await self.node("b")
        await self.join(a, *map(chat, names))
        await self.join(b, *map(chat, names))
        await self.events(CLUSTER_SHARDS, quiet=False)
        masters = set()
        for n, name in enumerate(names):  # each marker on its shard's master
            master = self.cluster.master_of(f"{prefixes[n]}_occupied")
            self.assertEqual(master.call("HKEYS", f"{prefixes[n]}_occupied"),
                             [chat(name).encode()])
            masters.add(master.port)
        self.assertEqual(len(masters), 3)
        for name in names:  # b still holds them (SHARDNUMSUB counts it): not vacated
            a.unsubscribe(chat(name))
        self.assertEqual(len(await self.events(CLUSTER_SHARDS)), CLUSTER_SHARDS)
        for name in names:
            b.unsubscribe(chat(name))
        got = await self.events(2 * CLUSTER_SHARDS)
        for name in names:
            self.assertEqual([event for event, channel in got if channel == name],
                             ["channel_occupied", "channel_vacated"])
