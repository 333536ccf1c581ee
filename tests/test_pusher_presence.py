"""Presence members decided once where joins are ordered (issue 14): the
rule without I/O (tally.MemberTally) under every interleaving, the
announcer, the hub's tally of a pool, and the Redis scripts
(broker/redis_presence*.py) on a real redis-server with brokers that join
at the same instant, one that dies and one that comes back."""

from __future__ import annotations

import json
from itertools import permutations

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from pushsvc.broker.local import LocalBroker
from pushsvc.broker.redis import RedisBroker
from pushsvc.broker.redis_cluster_slots import key_slot
from pushsvc.broker.redis_presence_lua import entry, parse_entry
from pushsvc.broker.redis_sharded import ShardedRedisBroker
from pushsvc.broker.redis_shards import shard_of
from pushsvc.pusher.apps import Apps, check_apps
from pushsvc.pusher.presence import Announcer
from pushsvc.tally import MemberTally
from tests.helpers import eventually, run, settings
from tests.redis_helpers import RedisServer
from tests.test_redis_broker import BrokerTestCase, FakeEngine

STEPS = [("w0", "a", True), ("w1", "b", True), ("w0", "a", False), ("w1", "b", False)]


def counts(server, group: str, prefix: str = "pushsvc:") -> dict[str, int]:
    """The users of ``group`` counted in Redis, with their entries."""
    raw = server.call("HGETALL", prefix + "_presence")
    fields = dict(zip(raw[::2], raw[1::2]))
    head = group.encode() + b"\xff"
    return {f[len(head):].decode(): int(n) for f, n in fields.items() if f.startswith(head)}


def orders():
    """Every order of STEPS in which each session joins before it leaves."""
    for order in permutations(STEPS):
        if all(order.index((w, s, True)) < order.index((w, s, False)) for w, s, _ in STEPS):
            yield order


class TallyTests(unittest.TestCase):
    """The rule: a transition at each first session and each last one."""

    def test_every_interleaving_of_two_sessions(self):
        """Whatever the order, added and removed alternate, the user's
        count going 0 -> 1 and 1 -> 0 exactly when announced; with both
        joins before both leaves, one of each."""
        seen = 0
        for order in orders():
            tally, events, count = MemberTally(), [], 0
            for holder, session, joined in order:
                count += 1 if joined else -1
                if tally.change(holder, "g", "u", session, joined):
                    events.append("added" if joined else "removed")
                    self.assertEqual(count, 1 if joined else 0, order)
                else:
                    self.assertNotEqual(count, 1 if joined else 0, order)
            self.assertEqual(events[::2], ["added"] * (len(events) // 2), order)
            self.assertEqual(events[1::2], ["removed"] * (len(events) // 2), order)
            both_in = max(order.index(s) for s in STEPS[:2]) < min(
                order.index(s) for s in STEPS[2:])
            if both_in:
                self.assertEqual(events, ["added", "removed"], order)
            self.assertEqual((tally.members, tally.held), ({}, {}))
            seen += 1
        self.assertEqual(seen, 6)

    def test_said_twice_changes_nothing(self):
        tally = MemberTally()
        self.assertTrue(tally.join("w0", "g", "u", "a"))
        self.assertFalse(tally.join("w0", "g", "u", "a"))
        self.assertEqual(tally.count("g", "u"), 1)
        self.assertTrue(tally.leave("w0", "g", "u", "a"))
        self.assertFalse(tally.leave("w0", "g", "u", "a"))
        self.assertFalse(tally.leave("w9", "g", "nobody", "x"))

    def test_the_same_session_name_on_two_holders_is_two_sessions(self):
        tally = MemberTally()
        self.assertTrue(tally.join("w0", "g", "u", "1.1"))
        self.assertFalse(tally.join("w1", "g", "u", "1.1"))
        self.assertFalse(tally.leave("w0", "g", "u", "1.1"))
        self.assertTrue(tally.leave("w1", "g", "u", "1.1"))

    def test_a_dropped_holder_takes_the_last_sessions_it_held(self):
        """A worker ends: the users it held the last session of have left,
        in order; the others stay."""
        tally = MemberTally()
        tally.join("w0", "g", "ann", "a1")
        tally.join("w1", "g", "ann", "a2")
        tally.join("w1", "g", "bob", "b1")
        tally.join("w1", "h", "bob", "b2")
        tally.join("w1", "h", "bob", "b3")
        self.assertEqual(tally.drop("w1"), [("g", "bob"), ("h", "bob")])
        self.assertEqual(tally.drop("w1"), [])
        self.assertEqual(tally.count("g", "ann"), 1)
        self.assertEqual(tally.drop("w0"), [("g", "ann")])
        self.assertEqual((tally.members, tally.held), ({}, {}))

    def test_the_one_process_broker_answers_from_its_tally(self):
        broker = LocalBroker()
        answers = []
        for session, joined in (("a", True), ("b", True), ("a", False), ("b", False)):
            broker.member("g", "u", session, joined).addCallback(answers.append)
        self.assertEqual(answers, [True, False, False, True])


class AnnouncerTests(unittest.TestCase):

    def test_the_event_to_the_group_and_its_webhook(self):
        apps = Apps(check_apps([{"id": "1001", "key": "k", "secret": "s", "webhooks": [
            {"url": "http://x/hook", "events": ["member_added", "member_removed"]}]}]))
        published, hooks = [], []

        class Webhooks:
            def apps(self):
                return apps

            def emit(self, app, event):
                hooks.append((app.id, event))
        ids = iter(range(1, 100))
        announcer = Announcer(published.append, lambda: f"m{next(ids)}", lambda: 65536,
                              Webhooks())
        announcer.added("pusher.1001:presence-r", "ann", {"name": "Ann"}, "1.2")
        announcer.changed("pusher.1001:presence-r", "ann", None, False)
        announcer.removed("lobby", "bob")  # not an app's channel: no webhook
        frames = [json.loads(m.frame) for m in published]
        self.assertEqual([(f["id"], f["event"], f.get("socket_id")) for f in frames], [
            ("m1", "pusher_internal:member_added", "1.2"),
            ("m2", "pusher_internal:member_removed", None),
            ("m3", "pusher_internal:member_removed", None)])
        self.assertEqual(json.loads(frames[0]["data"]),
                         {"user_id": "ann", "user_info": {"name": "Ann"}})
        self.assertEqual(hooks, [
            ("1001", {"name": "member_added", "channel": "presence-r", "user_id": "ann"}),
            ("1001", {"name": "member_removed", "channel": "presence-r",
                      "user_id": "ann"})])


class RedisPresenceTests(BrokerTestCase):
    """The scripts, from real RedisBrokers (heartbeat 0.2 s: a member is
    gone after 0.6 s of silence)."""

    async def broker(self, node: str, heartbeat: float = 0.2, prefix: str = "pushsvc:"):
        broker = RedisBroker(settings(redis=self.redis.url, node=node, redis_prefix=prefix,
                                      redis_heartbeat=heartbeat, redis_timeout=1.0),
                             f"{node}.0", reactor, token=f"host:{node}")
        broker.attach(FakeEngine(broker.owner))
        self.addCleanup(broker.close)
        await eventually(lambda: broker.health() is None, 10, f"{node} connected")
        return broker

    def test_entries(self):
        raw = entry("pusher.1:presence-a", "ünï", "1.2")
        self.assertEqual(parse_entry(raw), ("pusher.1:presence-a", "ünï", "1.2"))

    @run
    async def test_joins_and_leaves_at_the_same_instant_on_two_nodes(self):
        """Both calls leave before either is answered: one first, one last."""
        await self.start_redis()
        a, b = await self.broker("a"), await self.broker("b")
        for _ in range(3):
            joined = await gatherResults([a.member("g", "u", "1.1", True),
                                          b.member("g", "u", "1.1", True)])
            self.assertEqual(sorted(joined), [False, True])
            left = await gatherResults([b.member("g", "u", "1.1", False),
                                        a.member("g", "u", "1.1", False)])
            self.assertEqual(sorted(left), [False, True])
        self.assertEqual(counts(self.redis, "g"), {})

    @run
    async def test_a_dead_member_is_swept_once_and_one_cut_off_comes_back(self):
        """b holds u's last session and stops beating: a's heartbeat sweeps
        it and is told u left (once); b beating again finds its entries
        gone and counts them again: u is back."""
        await self.start_redis()
        a, b, c = [await self.broker(name) for name in "abc"]
        told = {name: [] for name in "abc"}
        for name, broker in zip("abc", (a, b, c)):
            broker.on_member = (lambda n: lambda *change: told[n].append(change))(name)
        self.assertTrue(await a.member("g", "u", "1.1", True, {"n": 1}))
        self.assertFalse(await b.member("g", "u", "2.1", True, {"n": 2}))
        self.assertTrue(await b.member("g", "v", "2.2", True))
        self.assertFalse(await a.member("g", "u", "1.1", False))
        b._members.stop()  # b is silent from now on, its connections open
        await eventually(lambda: told["a"] or told["c"], 5, "the sweep")
        await deferLater(reactor, 0.5)  # a second sweep would have come by now
        swept = told["a"] + told["c"]
        self.assertEqual(sorted(swept), [("g", "u", None, False), ("g", "v", None, False)])
        self.assertEqual(counts(self.redis, "g"), {})
        b._members.start()
        await eventually(lambda: len(told["b"]) == 2, 5, "b counted again")
        self.assertEqual(sorted(told["b"]), [("g", "u", {"n": 2}, True),
                                             ("g", "v", None, True)])
        self.assertFalse(await a.member("g", "u", "1.3", True))  # u is there (b's)

    @run
    async def test_a_closed_member_is_swept_at_the_next_heartbeat(self):
        await self.start_redis()
        a = await self.broker("a")
        b = await self.broker("b", heartbeat=5.0)  # it lives 15 s
        told = []
        a.on_member = lambda *change: told.append(change)
        self.assertTrue(await b.member("g", "u", "1.1", True))
        await b.close()
        await eventually(lambda: told, 2, "the sweep of a closed member")
        self.assertEqual(told, [("g", "u", None, False)])

    @run
    async def test_every_key_in_the_slot_of_the_prefix(self):
        """A Redis Cluster shard's prefix carries a hash tag: every presence
        key is in its slot (the sweep's too)."""
        await self.start_redis()
        prefix = "{pushsvc:0.3}"
        a = await self.broker("a", prefix=prefix)
        b = await self.broker("b", prefix=prefix)
        told = []
        a.on_member = lambda *change: told.append(change)
        for group in ("g", "h"):
            self.assertTrue(await b.member(group, "u", "1.1", True))
        keys = [k for k in self.redis.call("KEYS", "*presence*")]
        self.assertEqual(len(keys), 3, keys)  # holders, entries, counts
        self.assertEqual({key_slot(k) for k in keys}, {key_slot(prefix.encode())})
        b._members.stop()
        await eventually(lambda: len(told) == 2, 5, "the sweep")
        self.assertEqual(self.redis.call("KEYS", "*presence_of*"), [])

    @run
    async def test_a_change_while_redis_is_away_is_counted_when_it_is_back(self):
        """Redis is killed and restarts empty: a leave made meanwhile fails,
        and each engine sets its entries right at its next heartbeat, the
        transitions it makes announced there: the user who left meanwhile
        (its entry lost with Redis's data, nobody else holding one), and,
        as the restart lost the data, the members that stayed are
        announced added again."""
        await self.start_redis()
        a, b = await self.broker("a"), await self.broker("b")
        told = {"a": [], "b": []}
        a.on_member = lambda *change: told["a"].append(change)
        b.on_member = lambda *change: told["b"].append(change)
        self.assertTrue(await a.member("g", "ann", "1.1", True, {"n": 1}))
        self.assertTrue(await b.member("g", "bob", "2.1", True))
        await self.redis.stop()
        with self.assertRaises(Exception):
            await b.member("g", "bob", "2.1", False)
        await self.redis.start()
        await eventually(lambda: a.health() is None and b.health() is None, 10, "back")
        await eventually(lambda: told["a"] and told["b"], 5, "both synced")
        await deferLater(reactor, 0.5)  # a second sync would have come by now
        self.assertEqual(told, {"a": [("g", "ann", {"n": 1}, True)],
                                "b": [("g", "bob", None, False)]})
        self.assertEqual(counts(self.redis, "g"), {"ann": 1})

    @run
    async def test_a_leave_redis_missed_is_announced_once_at_the_next_heartbeat(self):
        """A leave whose call was lost (as with a dropped connection; Redis
        kept its data): the next heartbeat's sync removes the entry, and
        the user's departure is announced once."""
        await self.start_redis()
        a = await self.broker("a")
        told = []
        a.on_member = lambda *change: told.append(change)
        self.assertTrue(await a.member("g", "ann", "1.1", True))
        presence = a._presence
        key = entry("g", "ann", "1.1")
        del presence.entries[key]  # the leave, as member() records it ...
        presence._lost(Failure(ConnectionError("lost")), key)  # ... its call lost
        await eventually(lambda: told, 5, "the sync")
        await deferLater(reactor, 0.5)
        self.assertEqual(told, [("g", "ann", None, False)])
        self.assertEqual(counts(self.redis, "g"), {})

    @run
    async def test_several_shards_count_each_group_on_its_channels_shard(self):
        """Several Redis: a group's presence is counted on the shard of its
        channel, and a dead engine's is swept there."""
        shards = [RedisServer(self), RedisServer(self)]
        for server in shards:
            await server.start()
        groups = {shard_of(f"group:{g}", 2): g for g in map(str, range(20))}
        self.assertEqual(len(groups), 2)
        url = " ".join(server.url for server in shards)

        async def sharded(node: str) -> ShardedRedisBroker:
            broker = ShardedRedisBroker(settings(redis=url, node=node, redis_heartbeat=0.2,
                                                 redis_timeout=1.0), f"{node}.0", reactor,
                                        token=f"host:{node}")
            broker.attach(FakeEngine(broker.owner))
            self.addCleanup(broker.close)
            await eventually(lambda: broker.health() is None, 10, f"{node} connected")
            return broker
        a, b = await sharded("a"), await sharded("b")
        told = []
        a.on_member = lambda *change: told.append(change)
        for n, group in groups.items():
            self.assertTrue(await b.member(group, "u", "1.1", True))
            self.assertFalse(await a.member(group, "u", "2.1", True))
            self.assertEqual(counts(shards[n], group), {"u": 2})
            self.assertEqual(counts(shards[1 - n], group), {})
            self.assertFalse(await a.member(group, "u", "2.1", False))
        for shard in b.shards:
            shard._members.stop()
        await eventually(lambda: len(told) == 2, 5, "both shards swept")
        self.assertEqual(sorted(told), sorted((g, "u", None, False) for g in groups.values()))
