"""Redis Cluster (issue 15, points 2 and 5): ``redis+cluster://``.

First the pure parts (slots, hash tags, the slot map, the URL and the
settings), then ``ClusterRedisBroker``s in this process on a real cluster of
three masters with a replica each (``tests.redis_helpers.RedisCluster``):
every logical shard on its master, sharded pub/sub, history per shard,
mailboxes, a Redis without cluster mode, a master killed and its replica
promoted.  Two nodes of two workers are in ``test_redis_cluster_nodes``.
"""

from __future__ import annotations

import json
from collections import Counter

from twisted.internet import reactor
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.trial import unittest
from txredisapi import ConnectionError, ResponseError

from pushsvc.broker import make_broker
from pushsvc.broker.redis_cluster import Cluster, ClusterRedisBroker
from pushsvc.broker.redis_cluster_links import Place, _Commands
from pushsvc.broker.redis_link import NotRun
from pushsvc.broker.redis_scripts import PUBLISH_SCRIPT
from pushsvc.broker.redis_cluster_slots import (SLOTS, key_slot, owners, shard_prefixes,
                                                slot_map)
from pushsvc.broker.redis_shards import shard_of
from pushsvc.broker.redis_url import parse_redis_url
from pushsvc.config import ConfigError, build_settings
from tests.helpers import eventually, run, settings
from tests.redis_helpers import RedisCluster, RedisServer
from tests.test_redis_broker import FakeEngine, message
from tests.test_redis_shards import ShardEngine, on_each

SHARDS = 6   # logical shards in these tests: two per master


class FakeBroker:
    """What a place's links tell their broker."""

    def __init__(self):
        self.events = []
        self.subscriptions = set()

    def _link_up(self, link):
        self.events.append(("up", link.name))

    def _link_down(self, link, reason):
        self.events.append(("down", link.name, reason))


class SlotTests(unittest.TestCase):

    def test_key_slots_are_redis_clusters(self):
        """Values from CLUSTER KEYSLOT of redis-server 7.0.15."""
        for key, slot in ((b"foo", 12182), (b"{t1}", 8943), (b"a{b}c", 3300),
                          (b"{}x", 10595), (b"{pushsvc:3.17}_history", 5599)):
            self.assertEqual(key_slot(key), slot, key)

    def test_each_shard_has_a_tag_in_its_share_of_the_slots(self):
        for count in (1, 3, 16, 100):
            prefixes = shard_prefixes("pushsvc:", count)
            self.assertEqual(len(set(prefixes)), count)
            for i, prefix in enumerate(prefixes):
                self.assertTrue(prefix.startswith("{pushsvc:") and prefix.endswith("}"))
                self.assertIn(key_slot(prefix.encode() + b"_history"),
                              range(i * SLOTS // count, (i + 1) * SLOTS // count))
        self.assertEqual(shard_prefixes("pushsvc:", 16), shard_prefixes("pushsvc:", 16))
        self.assertNotEqual(shard_prefixes("app:", 4), shard_prefixes("pushsvc:", 4))
        with self.assertRaises(ValueError):
            shard_prefixes("p:", 0)

    def test_slot_maps_keep_live_masters(self):
        node = lambda port, role, health: [  # noqa: E731
            b"id", b"x", b"port", port, b"ip", b"10.0.0.1", b"endpoint", b"10.0.0.1",
            b"role", role, b"replication-offset", 1, b"health", health]
        shards = [[b"slots", [0, 99, 200, 299], b"nodes",
                   [node(7001, b"master", b"online"), node(7004, b"replica", b"online")]],
                  [b"slots", [100, 199], b"nodes", [node(7002, b"master", b"fail")]]]
        ranges = slot_map(shards)
        self.assertEqual(ranges, [(0, 99, ("10.0.0.1", 7001)), (200, 299, ("10.0.0.1", 7001))])
        self.assertEqual(owners(ranges, [5, 150, 250]),
                         [("10.0.0.1", 7001), None, ("10.0.0.1", 7001)])
        slots = [[0, 99, [b"10.0.0.2", 7003, b"id"], [b"10.0.0.3", 7005, b"id2"]]]
        self.assertEqual(slot_map(slots, shards=False), [(0, 99, ("10.0.0.2", 7003))])
        for bad in ([b"x"], [[b"slots"]], 5):
            with self.assertRaises(ValueError):
                slot_map(bad)

    def test_a_server_without_cluster_shards_is_read_with_cluster_slots(self):
        """Before Redis 7, CLUSTER SHARDS is unknown: the map is read with
        CLUSTER SLOTS from then on."""
        s = settings(redis="redis+cluster://127.0.0.1:1", redis_cluster_shards=2)
        cluster = Cluster(s, reactor, Clock(), parse_redis_url(s.redis))
        asked, placed = [], []

        class Control:
            def execute_command(self, *args):
                asked.append(args)
                if args[1] == "SHARDS":
                    return fail(ResponseError("ERR unknown subcommand 'SHARDS'."))
                return succeed([[0, 16383, [b"10.0.0.9", 7000, b"id"]]])
        cluster._control.protocol = Control()
        cluster._place = lambda place, address, _: placed.append((place.index, address))
        cluster._read()
        self.assertEqual(placed, [])
        cluster._read()
        self.assertEqual(asked, [("CLUSTER", "SHARDS"), ("CLUSTER", "SLOTS")])
        self.assertEqual(placed, [(0, ("10.0.0.9", 7000)), (1, ("10.0.0.9", 7000))])

    def commands(self, answers):
        """A place's commands on a fake master answering ``answers`` in turn
        (a str: an error), another (10.0.0.2:7001) answering OK; what each
        was sent."""
        sent = []

        class Proto:
            def __init__(self, name, answers):
                self.name, self.answers = name, answers

            def execute_command(self, *args):
                sent.append((self.name, args))
                answer = self.answers.pop(0) if self.answers else b"OK"
                return fail(ResponseError(answer)) if isinstance(answer, str) else succeed(answer)

            def eval(self, script, keys, args):
                return self.execute_command("EVAL", keys, args)

        class Link:
            def __init__(self, proto):
                self.protocol = proto

        class FakeCluster:
            url = parse_redis_url("redis+cluster://h")
            clock = Clock()
            looked = 0

            def refresh_soon(self):
                self.looked += 1
        cluster = FakeCluster()
        node = type("Node", (), {})()
        node.cmd = Link(Proto("b", []))
        cluster.nodes = {("10.0.0.2", 7001): node}
        place = Place(cluster, 0, "{p0.0}", 5)
        place.broker = FakeBroker()
        commands = _Commands(place, Proto("a", answers))
        place.cmd.up(commands)
        return commands, sent, place

    def test_moved_and_ask_are_followed_to_a_connected_master(self):
        """A command answered MOVED goes again to the master it names (the
        map is read again soon); to a master this process holds no
        connection to, it fails as a lost connection."""
        commands, sent, place = self.commands(["MOVED 5 10.0.0.2:7001",
                                               "MOVED 5 10.0.0.3:7002"])
        self.assertEqual(self.successResultOf(commands.execute_command("GET", "k")), b"OK")
        self.assertEqual(sent, [("a", ("GET", "k")), ("b", ("GET", "k"))])
        failure = self.failureResultOf(commands.publish(b"c", b"m"), ConnectionError)
        self.assertEqual(str(failure.value), "MOVED to 10.0.0.3:7002 (slot 5): not connected "
                                             "there yet")
        self.assertEqual(place.cluster.looked, 2)
        self.assertIs(place.cmd.protocol, commands)

    def test_a_script_runs_where_the_map_says_or_not_at_all(self):
        """A script declares the place's fence too; answered ASK (its slot
        migrates) or MOVED it is not run anywhere else: it fails as NotRun
        and takes the shard's command link down until the map is read."""
        for answer in ("ASK 5 10.0.0.2:7001", "MOVED 5 10.0.0.2:7001"):
            commands, sent, place = self.commands([answer])
            failure = self.failureResultOf(commands.eval(PUBLISH_SCRIPT, [b"k"], [1]), NotRun)
            self.assertEqual(str(failure.value), answer)
            self.assertEqual(sent, [("a", ("EVAL", [b"k", b"{p0.0}_fence"], [1]))])
            self.assertIsNone(place.cmd.protocol)
            self.assertEqual(place.cluster.looked, 1)

    def test_a_master_that_refuses_for_now_takes_the_shard_down(self):
        """CLUSTERDOWN (a cluster that needs every slot held, while a failed
        master waits for its replica) fails the call as NotRun and takes the
        shard's command link down: what follows is queued."""
        commands, sent, place = self.commands(["CLUSTERDOWN The cluster is down"])
        failure = self.failureResultOf(commands.eval("script", ["k"], []), NotRun)
        self.assertEqual(str(failure.value), "CLUSTERDOWN The cluster is down")
        self.assertIsNone(place.cmd.protocol)
        self.assertTrue(place.refused)
        self.assertEqual(place.broker.events, [("up", "commands"), (
            "down", "commands", "CLUSTERDOWN The cluster is down")])
        self.assertEqual(place.cluster.looked, 1)

    def test_a_refused_shard_is_up_again_once_every_slot_is_held(self):
        s = settings(redis="redis+cluster://127.0.0.1:1", redis_cluster_shards=2)
        cluster = Cluster(s, reactor, Clock(), parse_redis_url(s.redis))
        offered = []
        address = ("10.0.0.9", 7000)
        cluster.nodes[address] = type("Node", (), {"offer": offered.append})()
        place = cluster.places[0]
        place.node, place.refused = address, True
        cluster._place(place, address, complete=False)  # a master still fails
        self.assertEqual((offered, place.refused), ([], True))
        cluster._place(place, address, complete=True)
        self.assertEqual((offered, place.refused), ([place], False))

    def test_urls_and_settings(self):
        url = parse_redis_url("redis+cluster://u:p%40@10.0.0.1,10.0.0.2:7000")
        self.assertTrue(url.cluster)
        self.assertEqual(url.hosts, (("10.0.0.1", 6379), ("10.0.0.2", 7000)))
        self.assertEqual(url.password, "p@")
        self.assertEqual(url.describe(), "redis+cluster://u:***@10.0.0.1:6379,10.0.0.2:7000")
        self.assertEqual(parse_redis_url("redis+cluster://h/0").db, 0)
        with self.assertRaises(ValueError) as caught:
            parse_redis_url("redis+cluster://h/1")
        self.assertIn("one database (0)", str(caught.exception))
        s = build_settings(None, {"url": "redis+cluster://a:1,b:2"})
        self.assertEqual((s.redis, s.redis_cluster_shards), ("redis+cluster://a:1,b:2", 16))
        with self.assertRaises(ConfigError) as caught:
            build_settings(None, {"url": "redis+cluster://a redis://b"})
        self.assertIn("give it alone", str(caught.exception))
        path = self.mktemp()
        for value, ok in (("4", True), ("0", False), ("257", False), ('"4"', False)):
            with open(path, "w") as f:
                f.write(f"[redis]\ncluster_shards = {value}\n")
            if ok:
                self.assertEqual(build_settings(path).redis_cluster_shards, 4)
            else:
                self.assertRaises(ConfigError, build_settings, path)

    def test_make_broker_gives_a_cluster_broker(self):
        s = settings(redis="redis+cluster://127.0.0.1:1", redis_cluster_shards=4, node="n")
        broker = make_broker(s, 0, reactor, otherwise=lambda: None)
        self.assertIsInstance(broker, ClusterRedisBroker)
        self.assertEqual([b._context.prefix for b in broker.shards],
                         [p.encode() for p in shard_prefixes("pushsvc:", 4)])


class ClusterBrokerTests(unittest.TestCase):
    """ClusterRedisBrokers a and b in this process on three masters with a
    replica each."""

    timeout = 90

    async def start(self, full_coverage: bool = False, **overrides):
        self.cluster = RedisCluster(self, full_coverage=full_coverage)
        await self.cluster.start()
        engines = []
        for node in ("a", "b"):
            s = settings(redis=self.cluster.url, node=node, redis_heartbeat=0.2,
                         redis_timeout=1.0, redis_cluster_shards=SHARDS, **overrides)
            broker = ClusterRedisBroker(s, f"{node}.0", reactor, token=f"host:{node}")
            engine = ShardEngine(broker.owner)
            engine.broker = broker
            broker.attach(engine)
            self.addCleanup(broker.close)
            engines.append(engine)
        for engine in engines:
            await eventually(lambda: engine.broker.health() is None, 15, "healthy")
        await eventually(lambda: all(len(shard.members) == 2 for e in engines
                                     for shard in e.broker.shards), 5, "every shard's members")
        return engines

    async def subscribe(self, engine, *channels):
        for channel in channels:
            d = engine.broker.subscribe(channel)
            if d is not None:
                await d

    def prefix(self, channel: str) -> str:
        return shard_prefixes("pushsvc:", SHARDS)[shard_of(channel, SHARDS)]

    @run
    async def test_each_shard_on_its_master_with_sharded_pub_sub(self):
        """Every logical shard lives on the master of its slot (two per
        master), subscribes there with SSUBSCRIBE, and a message of several
        shards reaches each group once."""
        a, b = await self.start()
        groups = on_each(SHARDS)
        await self.subscribe(b, *(f"group:{g}" for g in groups))
        masters = Counter()
        for group in groups:
            channel = self.prefix(f"group:{group}") + f"group:{group}"
            master = self.cluster.master_of(channel)
            masters[master.port] += 1
            self.assertEqual(master.call("PUBSUB", "SHARDNUMSUB", channel)[1], 1)
            self.assertEqual(master.call("PUBSUB", "NUMSUB", channel)[1], 0)
        self.assertEqual(sorted(masters.values()), [2, 2, 2])
        for n, group in enumerate(groups):
            a.broker.publish(*message(f"a.0.x.M{n}", group=[group]))
        await eventually(lambda: len(b.delivered) == SHARDS, 5, "one message per shard")
        a.broker.publish(*message("a.0.x.ALL", group=groups))
        a.broker.publish(*message("a.0.x.LAST", group=[groups[0]]))
        await eventually(lambda: b.delivered.count("a.0.x.ALL") == SHARDS
                         and "a.0.x.LAST" in b.delivered, 5, "every copy")
        self.assertEqual(b.by_group, {g: [f"a.0.x.M{n}", "a.0.x.ALL"] + (
            ["a.0.x.LAST"] if n == 0 else []) for n, g in enumerate(groups)})

    @run
    async def test_history_and_mailboxes_live_in_their_shards_slot(self):
        """Each shard numbers and keeps its own messages on its master (its
        epoch and positions there), replays them, and a user's mailbox lives
        on the master of the user's shard."""
        a, b = await self.start()
        groups = on_each(SHARDS)
        for n, group in enumerate(groups):
            for k in range(2):
                a.broker.publish(*message(f"a.0.x.H{n}.{k}", group=[group]))
        shards = [b.broker.shards[shard_of(f"group:{g}", SHARDS)] for g in groups]
        await eventually(lambda: all(s.epoch for s in shards), 5, "every epoch")
        for group, shard in zip(groups, shards):
            prefix = self.prefix(f"group:{group}")
            master = self.cluster.master_of(prefix)
            await eventually(lambda: master.call("HGET", prefix + "_history", "pos") == b"2",
                             5, "two positions in the shard")
        channels = [f"group:{g}" for g in groups]
        replayed = await b.broker.replay(channels, [0] * SHARDS, b.broker.epoch)
        self.assertEqual((replayed.gaps, replayed.unavailable), ([], []))
        frames = {msg_id: json.loads(frame) for msg_id, frame in replayed.messages}
        self.assertEqual(sorted(frames), sorted(f"a.0.x.H{n}.{k}" for n in range(SHARDS)
                                                for k in range(2)))
        for n, group in enumerate(groups):  # each shard numbers its own, in order
            self.assertEqual([(frames[f"a.0.x.H{n}.{k}"]["pos"],
                               frames[f"a.0.x.H{n}.{k}"]["shard"]) for k in range(2)],
                             [(1, shard_of(f"group:{group}", SHARDS)),
                              (2, shard_of(f"group:{group}", SHARDS))])
        replayed = await b.broker.replay(channels, [1] * SHARDS, b.broker.epoch)
        self.assertEqual(sorted(msg_id for msg_id, _ in replayed.messages),
                         sorted(f"a.0.x.H{n}.1" for n in range(SHARDS)))
        users = on_each(SHARDS, "user")
        a.broker.publish(*message("a.0.x.S", user=users), store=True)
        for user in users:
            key = self.prefix(f"user:{user}") + f"_mail:{user}"
            await eventually(lambda: self.cluster.master_of(key).call("EXISTS", key), 5, "kept")
            taken = await b.broker.mail(user)
            self.assertEqual([msg_id for msg_id, _ in taken], ["a.0.x.S"])
        b.broker.subscribe(f"user:{users[0]}")
        await b.broker.shards[shard_of(f"user:{users[0]}", SHARDS)]._subscriptions.standing(
            f"user:{users[0]}")
        a.broker.publish(*message("a.0.x.ONLINE", user=[users[0]]), store=True)
        await eventually(lambda: "a.0.x.ONLINE" in b.delivered, 5, "delivered")
        self.assertEqual(await b.broker.mail(users[0]), [])  # online: not kept for later

    @run
    async def test_commands_reach_every_member(self):
        a, b = await self.start()
        from pushsvc.broker.interface import Command
        results = await a.broker.command(Command("stats", {}))
        self.assertEqual(sorted(r["worker"] for r in results), ["a.0", "b.0"])

    @run
    async def test_a_redis_without_cluster_mode_is_named(self):
        redis = RedisServer(self)
        await redis.start()
        s = settings(redis=f"redis+cluster://127.0.0.1:{redis.port}", node="a",
                     redis_heartbeat=0.2, redis_timeout=1.0, redis_cluster_shards=2)
        broker = ClusterRedisBroker(s, "a.0", reactor, token="host:a")
        broker.attach(FakeEngine("a.0"))
        self.addCleanup(broker.close)
        await eventually(lambda: "not a Redis Cluster" in (broker.health() or ""), 5,
                         "named")
        self.assertEqual(broker.health(), (
            f"redis unavailable: the Redis at 127.0.0.1:{redis.port} is not a Redis Cluster "
            "(ERR This instance has cluster support disabled): use a redis:// URL for it, "
            "or enable cluster mode"))

    @run
    async def test_a_master_killed_its_replica_promoted(self):
        """The master of one group's shard is killed: that shard is down
        (the others go on), its messages are kept; once the replica is
        promoted the shard subscribes there again and what was kept arrives
        once, and what follows too."""
        a, b = await self.start()
        groups = on_each(SHARDS)
        await self.subscribe(a, *(f"group:{g}" for g in groups))
        await self.subscribe(b, *(f"group:{g}" for g in groups))
        victim = groups[0]
        master = self.cluster.master_of(self.prefix(f"group:{victim}"))
        replica = self.cluster.replica_of(master)
        others = [g for g in groups if self.cluster.master_of(
            self.prefix(f"group:{g}")).port != master.port]
        a.broker.publish(*message("a.0.x.BEFORE", group=[victim]))
        await eventually(lambda: "a.0.x.BEFORE" in b.delivered, 5, "before")
        await master.stop()
        await eventually(lambda: a.broker.health() and b.broker.health(), 5, "degraded")
        index = shard_of(f"group:{victim}", SHARDS)
        self.assertIn(f"shard {index} of {SHARDS}", a.broker.health())
        for group in others:  # the other masters' shards go on
            a.broker.publish(*message(f"a.0.x.O.{group}", group=[group]))
        await eventually(lambda: all(f"a.0.x.O.{g}" in b.delivered for g in others), 5,
                         "the others")
        a.broker.publish(*message("a.0.x.DURING", group=[victim]))
        await eventually(lambda: "a.0.x.DURING" in a.delivered, 5, "local delivery")
        await eventually(lambda: replica.call("ROLE")[0] == b"master", 20, "promoted")
        await eventually(lambda: a.broker.health() is None and b.broker.health() is None,
                         20, "back")
        await eventually(lambda: "a.0.x.DURING" in b.delivered, 15, "the kept message")
        a.broker.publish(*message("a.0.x.AFTER", group=[victim]))
        await eventually(lambda: "a.0.x.AFTER" in b.delivered, 5, "after")
        for engine in (a, b):
            counts = Counter(engine.delivered)
            for msg_id in ("a.0.x.BEFORE", "a.0.x.DURING", "a.0.x.AFTER"):
                self.assertEqual(counts[msg_id], 1, (engine.name, msg_id))
        channel = self.prefix(f"group:{victim}") + f"group:{victim}"
        self.assertEqual(replica.call("PUBSUB", "SHARDNUMSUB", channel)[1], 2)

    @run
    async def test_a_shards_slot_migrated_to_another_master(self):
        """One shard's slot and keys move to another master (as ``redis-cli
        --cluster reshard`` moves them): the shard follows, subscribes
        there, its history still replays, and messages flow on."""
        a, b = await self.start()
        group = on_each(SHARDS)[0]
        await self.subscribe(b, f"group:{group}")
        a.broker.publish(*message("a.0.x.BEFORE", group=[group]))
        await eventually(lambda: "a.0.x.BEFORE" in b.delivered, 5, "before")
        prefix = self.prefix(f"group:{group}")
        source = self.cluster.master_of(prefix)
        target = next(s for s in self.cluster.servers[:3] if s.port != source.port)
        self.assertGreater(self.cluster.migrate(key_slot(prefix.encode()), source, target), 3)
        channel = prefix + f"group:{group}"
        await eventually(lambda: target.call("PUBSUB", "SHARDNUMSUB", channel)[1] == 1, 10,
                         "subscribed on the new master")
        await eventually(lambda: a.broker.health() is None and b.broker.health() is None,
                         10, "healthy")
        a.broker.publish(*message("a.0.x.AFTER", group=[group]))
        await eventually(lambda: "a.0.x.AFTER" in b.delivered, 10, "after")
        self.assertEqual(Counter(b.delivered), Counter(["a.0.x.BEFORE", "a.0.x.AFTER"]))
        shard = b.broker.shards[shard_of(f"group:{group}", SHARDS)]
        found, gaps = (await shard.replay([f"group:{group}"], 0, shard.epoch))[:2]
        self.assertEqual(([msg_id for msg_id, _ in found], gaps),
                         (["a.0.x.BEFORE", "a.0.x.AFTER"], []))

    @run
    async def test_what_is_published_while_a_slot_migrates_arrives_once(self):
        """One shard's slot moves to another master one key at a time while
        a publishes on it every 10 ms: its calls are refused while the slot
        migrates (the fence: never run on keys half moved, never
        redirected) and wait in its queue; once the slot is on its new
        master and b has subscribed there, b has every message once, in
        order, and so has a; the shard's history replays them all."""
        a, b = await self.start()
        group = on_each(SHARDS)[0]
        for engine in (a, b):
            await self.subscribe(engine, f"group:{group}")
        prefix = self.prefix(f"group:{group}")
        source = self.cluster.master_of(prefix)
        target = next(s for s in self.cluster.servers[:3] if s.port != source.port)
        published = []

        def publish():
            published.append(f"a.0.x.M{len(published)}")
            a.broker.publish(*message(published[-1], group=[group]))
        ticker = LoopingCall(publish)
        ticker.start(0.01)
        steps = []
        for step in self.cluster.migration(key_slot(prefix.encode()), source, target, batch=1):
            steps.append(step)
            await deferLater(reactor, 0.05, lambda: None)  # publishes in every phase
        channel = prefix + f"group:{group}"
        await eventually(lambda: target.call("PUBSUB", "SHARDNUMSUB", channel)[1] == 2, 10,
                         "both subscribed on the new master")
        await eventually(lambda: b.delivered[-1:] == published[-1:] and len(published) > 5 + len(
            steps) * 3, 10, "messages after the migration")
        ticker.stop()
        await eventually(lambda: b.delivered[-1:] == published[-1:], 10, "the last one")
        self.assertGreater(self.cluster.moved, 2)
        self.assertGreater(a.broker.counters["queued"], 0, "no call was refused")
        self.assertEqual(b.delivered, published)
        self.assertEqual(a.delivered, published)
        self.assertEqual(a.broker.counters["lost"], 0)
        shard = b.broker.shards[shard_of(f"group:{group}", SHARDS)]
        found = (await shard.replay([f"group:{group}"], 0, shard.epoch))[0]
        self.assertEqual([msg_id for msg_id, _ in found], published)

    @run
    async def test_a_cluster_down_keeps_the_refused_call_and_what_follows(self):
        """With Redis's default ``cluster-require-full-coverage yes``, a slot
        no master holds makes every master refuse (CLUSTERDOWN): the shard
        goes down at the first refused call, which waits, as what is
        published after it does; both arrive once, in order, when every
        slot is held again."""
        a, b = await self.start(full_coverage=True)
        group = on_each(SHARDS)[0]
        await self.subscribe(b, f"group:{group}")
        master = self.cluster.master_of(self.prefix(f"group:{group}"))
        mine = {key_slot(p.encode()) for p in shard_prefixes("pushsvc:", SHARDS)}
        [first, last] = next(r[:2] for r in master.call("CLUSTER", "SLOTS")
                             if r[2][1] == master.port)
        free = next(slot for slot in range(last, first, -1) if slot not in mine)
        master.call("CLUSTER", "DELSLOTS", free)
        await eventually(lambda: b"cluster_state:fail" in master.call("CLUSTER", "INFO"), 10,
                         "the cluster down")
        a.broker.publish(*message("a.0.x.REFUSED", group=[group]))
        await eventually(lambda: a.broker.health() is not None, 5, "the shard down")
        self.assertIn("CLUSTERDOWN", a.broker.health())
        a.broker.publish(*message("a.0.x.KEPT", group=[group]))
        master.call("CLUSTER", "ADDSLOTS", free)
        await eventually(lambda: a.broker.health() is None and b.broker.health() is None,
                         20, "back")
        await eventually(lambda: "a.0.x.KEPT" in b.delivered, 10, "the kept message")
        a.broker.publish(*message("a.0.x.AFTER", group=[group]))
        await eventually(lambda: "a.0.x.AFTER" in b.delivered, 10, "after")
        self.assertEqual(b.delivered, ["a.0.x.REFUSED", "a.0.x.KEPT", "a.0.x.AFTER"])
        self.assertEqual(a.broker.counters["lost"], 0)
