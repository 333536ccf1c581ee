"""History, resume and the mailbox across machines: Redis keeps them.

First the scripts' logic through RedisBrokers in this process on a real
redis-server, then real nodes (``twistd pushsvc --redis``, two workers each):
a client that comes back on another node gets what it missed.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from pushsvc.broker.redis_scripts import (BASE, MAGIC, body, parse_body, parse_payload,
                                          parse_replay, payload_body, payload_head)
from pushsvc.frames import message_frame, with_position
from pushsvc.history import in_order
from pushsvc.ids import owner
from pushsvc.wire.records import pack_publish
from pushsvc.protocol import Address
from pushsvc.wire.values import Message
from tests.helpers import eventually, run
from tests.test_redis_broker import (BrokerTestCase, FakeEngine, NodesTestCase, collect_log,
                                     message)

TARGETS = [{"user": "ann"}, {"group": "g1"}, {"group": "g2"}, {"all": True},
           {"group": "elsewhere"}, {"user": "bob"}]


class FramesEngine(FakeEngine):
    """A FakeEngine that keeps every frame it is handed, decoded."""

    def __init__(self, name: str):
        super().__init__(name)
        self.frames: list[bytes] = []

    def deliver(self, message, alone=False):
        super().deliver(message, alone)
        self.frames.append(message.frame)

    def positions(self) -> list[int | None]:
        return [json.loads(f).get("pos") for f in self.frames]


def ids(messages) -> list[str]:
    return [msg_id for msg_id, _ in messages]


# -- no Redis needed ----------------------------------------------------------------

class PureTests(unittest.TestCase):

    def test_a_payload_round_trip(self):
        _, m1 = message("a.0.x.M1", group=["g"])
        _, m2 = message("a.0.x.M2", session=["a.0.x.1"])
        records = [pack_publish(["group:g", "user:u"], m1.id, b'{"group":["g"]}', m1.frame),
                   pack_publish(["worker:a.0"], m2.id, b'{"session":["a.0.x.1"]}', m2.frame)]
        payload = payload_head(b"a.0.x", 7) + BASE.pack(41) + payload_body([1, 0], records)
        origin, seq, got = parse_payload(payload)
        self.assertEqual((origin, seq), (b"a.0.x", 7))
        self.assertEqual([(several, pos, msg_id) for several, pos, msg_id, _, _ in got],
                         [(True, 41, m1.id), (False, None, m2.id)])
        self.assertEqual(got[0][4], m1.frame)
        with self.assertRaises(ValueError):
            parse_payload(b"PS1" + payload[3:])
        with self.assertRaises(ValueError):
            parse_payload(payload[:-3])
        self.assertEqual(MAGIC, b"PS2")

    def test_bodies_and_replay_answers(self):
        frame = b'{"op":"msg","id":"m\xc3\xa9","data":1}'
        self.assertEqual(parse_body(body("m\u00e9", frame)), ("m\u00e9", frame))
        self.assertEqual(parse_replay([0, b"E"]), (0, [], []))
        self.assertEqual(parse_replay([1, b"E", 1, b"group:g", b"3", b"x", b"5", b"y"]),
                         (1, ["group:g"], [(3, b"x"), (5, b"y")]))

    def test_in_order_gives_each_message_once_by_position(self):
        self.assertEqual(in_order([(5, "b", b"B"), (2, "a", b"A"), (5, "b", b"B"),
                                   (9, "a", b"A2")]),
                         [("a", b"A"), ("b", b"B")])


# -- the scripts against a real redis-server -----------------------------------------

class RedisHistoryTests(BrokerTestCase):

    async def pair(self, **overrides):
        """Brokers a and b, each engine keeping frames; the history's epoch."""
        await self.start_redis()
        a, _ = await self.broker("a", **overrides)
        b, _ = await self.broker("b", **overrides)
        a.receiver = ea = FramesEngine("a.0")
        b.receiver = eb = FramesEngine("b.0")
        return a, ea, b, eb

    async def settle(self, *brokers) -> None:
        """Every publish so far has been through Redis and back."""
        for broker in brokers:
            broker._publisher.flush()
            await broker._context.eval("return 1", [], [])
        await deferLater(reactor, 0.05, lambda: None)

    @run
    async def test_redis_numbers_kept_messages_and_every_copy_carries_the_position(self):
        a, ea, b, eb = await self.pair()
        self.assertEqual(a.epoch, b.epoch)
        self.assertEqual(a.epoch, self.redis.call("HGET", "pushsvc:_history", "epoch").decode())
        await self.subscribe(a, "group:g", "user:u", "worker:a.0")
        await self.subscribe(b, "group:g", "user:u")
        sent = [message("a.0.x.M1", group=["g"]), message("a.0.x.M2", group=["g"], user=["u"]),
                message("a.0.x.M3", session=["a.0.x.1"])]
        for names, msg in sent:
            a.publish(names, msg)
        await eventually(lambda: len(ea.frames) == 3 and len(eb.frames) == 2, 5, "delivered")
        b.publish(*message("b.0.x.M1", user=["u"]))
        await eventually(lambda: len(ea.frames) == 4 and len(eb.frames) == 3, 5, "b's")
        # a gets its own messages back from Redis, numbered, in order with b's
        self.assertEqual(ea.positions(), [1, 2, None, 3])
        self.assertEqual(eb.positions(), [1, 2, 3])
        mine = dict(zip(ea.delivered, ea.frames))
        theirs = dict(zip(eb.delivered, eb.frames))
        for msg_id in ("a.0.x.M1", "a.0.x.M2", "b.0.x.M1"):
            self.assertEqual(mine[msg_id], theirs[msg_id])  # the very same bytes
        self.assertEqual(mine["a.0.x.M1"], with_position(sent[0][1].frame, 1))
        self.assertEqual(self.redis.call("HGET", "pushsvc:_history", "pos"), b"3")

    @run
    async def test_replay_each_once_in_order_with_the_gaps_of_the_count_cap(self):
        a, ea, b, eb = await self.pair(max_per_channel=3)
        for n in range(5):
            a.publish(*message(f"a.0.x.G{n}", group=["g"]))
        b.publish(*message("b.0.x.U1", user=["u"], group=["g"]))
        b.publish(*message("b.0.x.O1", group=["other"]))
        b.publish(*message("b.0.x.S1", session=["b.0.x.1"]))  # not kept
        await self.settle(a, b)
        messages, gaps = await b.replay(["group:g", "user:u"], 0, a.epoch)
        self.assertEqual(ids(messages), ["a.0.x.G3", "a.0.x.G4", "b.0.x.U1"])
        self.assertEqual(gaps, ["group:g"])
        self.assertEqual([json.loads(f)["pos"] for _, f in messages], [4, 5, 6])
        self.assertEqual(await a.replay(["group:g"], 3, a.epoch),
                         (messages, []))  # since 3: nothing lost after it
        self.assertEqual(await a.replay(["user:u", "tag:none"], 0, a.epoch),
                         (messages[2:], []))
        self.assertEqual(await a.replay(["group:g", "all"], 5, "another"),
                         (messages, ["all", "group:g"]))  # what this epoch keeps
        self.assertEqual(await a.replay(["group:g"], 99, a.epoch), ([], ["group:g"]))
        self.assertEqual(await a.replay(["group:g"], 0, None), ([], ["group:g"]))

    @run
    async def test_the_ttl_lets_messages_go_and_a_channel_listed_anew_counts_it(self):
        a, ea, b, eb = await self.pair(ttl=0.5)
        a.publish(*message("a.0.x.M1", group=["g"]))
        a.publish(*message("a.0.x.M2", group=["h"]))
        await self.settle(a)
        await deferLater(reactor, 0.7, lambda: None)
        self.assertEqual(await b.replay(["group:g"], 0, a.epoch), ([], ["group:g"]))
        self.assertEqual(await b.replay(["group:g"], 2, a.epoch), ([], []))
        a.publish(*message("a.0.x.M3", group=["g"]))
        await self.settle(a)
        messages, gaps = await b.replay(["group:g", "group:h"], 0, a.epoch)
        self.assertEqual((ids(messages), gaps), (["a.0.x.M3"], ["group:g", "group:h"]))
        messages, gaps = await b.replay(["group:g", "group:h"], 2, a.epoch)
        self.assertEqual((ids(messages), gaps), (["a.0.x.M3"], []))
        self.assertEqual(self.redis.call("ZCARD", "pushsvc:_history_log"), 1)
        self.assertEqual(self.redis.call("HLEN", "pushsvc:_history_frames"), 1)
        # a channel whose list went whole (by time) and is listed anew has
        # lost what the history let go of meanwhile (as it had, unlisted)
        self.assertEqual(self.redis.call("ZCARD", "pushsvc:_history_index"), 1)
        self.assertEqual(await b.replay(["group:h"], 1, a.epoch), ([], ["group:h"]))
        a.publish(*message("a.0.x.M4", group=["h"]))
        await self.settle(a)
        messages, gaps = await b.replay(["group:h"], 1, a.epoch)
        self.assertEqual((ids(messages), gaps), (["a.0.x.M4"], ["group:h"]))
        self.assertEqual((await b.replay(["group:h"], 2, a.epoch))[1], [])

    @run
    async def test_past_the_byte_budget_the_oldest_go(self):
        names, first = message("a.0.x.M0", group=["g"])
        size = len(body(first.id, first.frame)) + len("group:g") + 200
        a, ea, b, eb = await self.pair(max_memory=3 * size)
        for n in range(5):
            a.publish(*message(f"a.0.x.M{n}", group=["g"]))
        await self.settle(a)
        messages, gaps = await b.replay(["group:g"], 0, a.epoch)
        self.assertEqual((ids(messages), gaps),
                         ([f"a.0.x.M{n}" for n in (2, 3, 4)], ["group:g"]))
        self.assertEqual(int(self.redis.call("HGET", "pushsvc:_history", "bytes")), 3 * size)

    def keys(self) -> dict[str, int]:
        """How much each of the history's keys holds."""
        return {"log": self.redis.call("ZCARD", "pushsvc:_history_log"),
                "frames": self.redis.call("HLEN", "pushsvc:_history_frames"),
                "meta": self.redis.call("HLEN", "pushsvc:_history_meta"),
                "refs": self.redis.call("HLEN", "pushsvc:_history_refs"),
                "bytes": int(self.redis.call("HGET", "pushsvc:_history", "bytes"))}

    @run
    async def test_what_leaves_every_channel_is_let_go_at_once(self):
        """Past its channel's count cap a message no channel lists is freed
        in the same call, not at its ttl: it stops counting (issue 17)."""
        a, ea, b, eb = await self.pair(max_per_channel=5)
        sizes = {}
        for n in range(1, 21):
            names, msg = message(f"a.0.x.G{n}", group=["g"])
            sizes[msg.id] = len(body(msg.id, msg.frame)) + len("group:g") + 200
            a.publish(names, msg)
        await self.settle(a)
        kept = [f"a.0.x.G{n}" for n in range(16, 21)]
        self.assertEqual(self.keys(), {"log": 5, "frames": 5, "meta": 5, "refs": 0,
                                       "bytes": sum(sizes[i] for i in kept)})
        self.assertEqual(await b.replay(["group:g"], 0, a.epoch), (
            [(i, with_position(message(i, group=["g"])[1].frame, n))
             for n, i in enumerate(kept, 16)], ["group:g"]))
        # listed by two channels: kept while one of them lists it
        a.publish(*message("a.0.x.U", group=["g"], user=["u"]))
        for n in range(5):
            a.publish(*message(f"a.0.x.H{n}", group=["g"]))
        await self.settle(a)
        self.assertEqual(ids((await b.replay(["user:u"], 0, a.epoch))[0]), ["a.0.x.U"])
        self.assertEqual(self.keys()["log"], 6)
        for n in range(5):
            a.publish(*message(f"a.0.x.V{n}", user=["u"]))
        await self.settle(a)
        self.assertEqual(self.keys()["log"], 10)
        self.assertEqual(self.keys()["refs"], 0)
        messages, gaps = await b.replay(["user:u", "group:g"], 20, a.epoch)
        self.assertEqual(len(messages), 10)
        self.assertEqual(gaps, ["group:g", "user:u"])

    @run
    async def test_a_quiet_channel_survives_a_flood_of_others(self):
        """Strangers flooding their own groups push out their own messages,
        not a quiet user's, and the memory they take stays under the budget
        (issue 17: 6 clients x 195 big messages left the quiet user with
        nothing to replay)."""
        a, ea, b, eb = await self.pair(max_memory=500_000)
        a.publish(*message("a.0.x.quiet", user=["quiet"]))
        for n in range(195):
            for sender in range(6):
                address = Address(group=(f"flood{sender}",))
                msg = Message(f"b.0.x.F{sender}.{n}", address,
                              message_frame("x", address, "x" * 16_000))
                b.publish({f"group:flood{sender}"}, msg)
            if n % 20 == 0:
                await self.settle(a, b)
        await self.settle(a, b)
        self.assertLessEqual(self.keys()["bytes"], 500_000)
        self.assertEqual(self.keys()["frames"], self.keys()["log"])
        messages, gaps = await a.replay(["user:quiet"], 0, a.epoch)
        self.assertEqual((ids(messages), gaps), (["a.0.x.quiet"], []))
        for sender in range(6):  # each flood lost its own, and says so
            messages, gaps = await a.replay([f"group:flood{sender}"], 0, a.epoch)
            self.assertEqual(gaps, [f"group:flood{sender}"])
            self.assertTrue(messages)
            self.assertEqual(ids(messages)[-1], f"b.0.x.F{sender}.194")

    @run
    async def test_a_channel_let_go_whole_for_others_reports_its_gap(self):
        """A channel whose only message went to make room has no list left:
        its mark says what it lost; once the mark is gone, the floor does,
        moved by the ticks (all that came after was let go of early, so no
        message old enough to expire moves it)."""
        a, ea, b, eb = await self.pair(max_memory=100_000, max_per_channel=1, ttl=0.8)

        def big(msg_id, group, size):
            address = Address(group=(group,))
            a.publish({f"group:{group}"},
                      Message(msg_id, address, message_frame(msg_id, address, "x" * size)))
        a.publish(*message("a.0.x.small", group=["q"]))
        big("a.0.x.big", "big", 60_000)
        big("a.0.x.O0", "o0", 20_000)
        big("a.0.x.O1", "o1", 20_000)  # past the budget: big holds the most
        await self.settle(a)
        self.assertIsNone(self.redis.call("ZSCORE", "pushsvc:_history_chans", "group:big"))
        self.assertEqual(await b.replay(["group:big"], 1, a.epoch), ([], ["group:big"]))
        self.assertEqual(ids((await b.replay(["group:q"], 0, a.epoch))[0]), ["a.0.x.small"])
        self.redis.call("HDEL", "pushsvc:_history_lost", "group:big")  # as if settled
        for n in range(12):  # the newest stay young; the others go at once
            big(f"a.0.x.O0.{n}", "o0", 20_000)
            big(f"a.0.x.O1.{n}", "o1", 20_000)
            await self.settle(a)
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(await b.replay(["group:big"], 1, a.epoch), ([], ["group:big"]))
        self.assertEqual(await b.replay(["group:q"], 0, a.epoch), ([], ["group:q"]))
        self.assertEqual(self.keys()["log"], 2)

    @run
    async def test_a_redis_that_lost_its_data_has_a_new_epoch(self):
        a, ea, b, eb = await self.pair()
        old = a.epoch
        a.publish(*message("a.0.x.M1", group=["g"]))
        await self.settle(a)
        self.redis.call("FLUSHALL")
        await eventually(lambda: a.epoch != old and b.epoch != old, 5, "a new epoch")
        self.assertEqual(a.epoch, b.epoch)
        self.assertEqual(await b.replay(["group:g"], 0, old), ([], ["group:g"]))
        a.publish(*message("a.0.x.M2", group=["g"]))
        await self.settle(a)
        messages, gaps = await b.replay(["group:g"], 0, a.epoch)
        self.assertEqual((ids(messages), gaps), (["a.0.x.M2"], []))
        self.assertEqual(json.loads(messages[0][1])["pos"], 1)

    @run
    async def test_a_channel_list_that_outlived_its_history_hands_over_nothing(self):
        a, ea, b, eb = await self.pair()
        a.publish(*message("a.0.x.M1", user=["alice"]))
        await self.settle(a)
        self.redis.call("DEL", "pushsvc:_history")  # evicted: a new epoch
        b.publish(*message("b.0.x.M1", user=["bob"]))  # position 1 again, in the new epoch
        await self.settle(b)
        # alice's listing of it outlived the old epoch (the index restored)
        self.redis.call("ZADD", "pushsvc:_history_index", 0, b"user:alice\xff" + b"1".zfill(16))
        messages, gaps = await a.replay(["user:alice"], 0, b.epoch)
        self.assertEqual((messages, gaps), ([], ["user:alice"]))

    @run
    async def test_while_redis_is_away_local_delivery_goes_on_without_positions(self):
        a, ea, b, eb = await self.pair()
        await self.subscribe(a, "group:g")
        await self.subscribe(b, "group:g")
        await eventually(lambda: len(a.members) == 2, 5, "two members")
        await self.redis.stop()
        await eventually(lambda: a.health() is not None, 5, "degraded")
        await a.publish(*message("a.0.x.M1", group=["g"]))
        await eventually(lambda: ea.delivered == ["a.0.x.M1"], 5, "local delivery")
        self.assertEqual(ea.positions(), [None])
        self.assertIsNotNone(a.epoch)  # the last one known
        with self.assertRaises(Exception):
            await a.replay(["group:g"], 0, a.epoch)
        self.assertEqual(await a.mail("ann"), [])
        await self.redis.start()
        await eventually(lambda: a.health() is None and b.health() is None, 10, "back")
        # sent when b is back: numbered in the new history
        await eventually(lambda: eb.delivered == ["a.0.x.M1"], 10, "the kept message")
        self.assertEqual(eb.positions(), [1])
        a.publish(*message("a.0.x.M2", group=["g"]))
        await eventually(lambda: len(ea.frames) == 2 and len(eb.frames) == 2, 5, "both")
        self.assertEqual((ea.positions(), eb.positions()), ([None, 2], [1, 2]))

    @run
    async def test_a_redis_out_of_memory_carries_messages_without_history(self):
        a, ea, b, eb = await self.pair()
        await self.subscribe(b, "group:g")
        logged = collect_log(self)
        self.redis.call("CONFIG", "SET", "maxmemory", "1")
        for n in range(2):
            a.publish(*message(f"a.0.x.M{n}", group=["g"]))
            await eventually(lambda: len(eb.frames) == n + 1, 5, "delivered")
        self.assertEqual(eb.positions(), [None, None])
        self.assertEqual(sum("redis refuses to keep history" in line for line in logged), 1)
        self.redis.call("CONFIG", "SET", "maxmemory", "0")
        a.publish(*message("a.0.x.M2", group=["g"]))
        await eventually(lambda: len(eb.frames) == 3, 5, "delivered")
        self.assertEqual(eb.positions(), [None, None, 1])
        self.assertTrue(any("redis keeps history again" in line for line in logged))

    @run
    async def test_the_mailbox_keeps_stored_messages_for_offline_users_only(self):
        a, ea, b, eb = await self.pair(max_per_channel=2)
        await self.subscribe(b, "user:bob")
        a.publish(*message("a.0.x.M1", user=["ann", "bob"], group=["g"]), store=True)
        for n in (2, 3, 4):  # at most 2 per user: the oldest go
            a.publish(*message(f"a.0.x.M{n}", user=["cy"]), store=True)
        a.publish(*message("a.0.x.M5", user=["dee"]))  # not stored
        await self.settle(a)
        self.assertEqual(await b.mail("bob"), [])  # online: delivered live
        self.assertEqual(ids(await b.mail("ann")), ["a.0.x.M1"])
        self.assertEqual(await a.mail("ann"), [])  # taken once
        taken = await b.mail("cy")
        self.assertEqual(ids(taken), ["a.0.x.M3", "a.0.x.M4"])
        self.assertNotIn(b'"pos"', taken[0][1])
        self.assertEqual(await b.mail("dee"), [])
        self.assertEqual(self.redis.call("EXISTS", "pushsvc:_mail:group:g"), 0)

    @run
    async def test_the_mailbox_lets_go_after_the_ttl(self):
        a, ea, b, eb = await self.pair(ttl=0.5)
        a.publish(*message("a.0.x.M1", user=["ann"]), store=True)
        await self.settle(a)
        await deferLater(reactor, 0.7, lambda: None)
        self.assertEqual(await b.mail("ann"), [])
        self.assertEqual(self.redis.call("EXISTS", "pushsvc:_mail:ann"), 0)

    @run
    async def test_the_mailbox_keeps_what_its_byte_budget_allows(self):
        names, first = message("a.0.x.N0", user=["bo"])
        size = len(body(first.id, first.frame)) + 200
        a, ea, b, eb = await self.pair(max_memory=2 * size)
        for n in range(3):
            a.publish(*message(f"a.0.x.N{n}", user=["bo"]), store=True)
        await self.settle(a)
        self.assertEqual(ids(await b.mail("bo")), ["a.0.x.N0", "a.0.x.N1"])

    @run
    async def test_a_mail_waits_for_the_users_subscription(self):
        a, ea, b, eb = await self.pair()
        a.publish(*message("a.0.x.M1", user=["ann"]), store=True)
        await self.settle(a)
        subscribed = b.subscribe("user:ann")
        taken = b.mail("ann")
        self.assertFalse(taken.called)
        await subscribed
        self.assertEqual(ids(await taken), ["a.0.x.M1"])
        # from now on the user is online: a stored push is delivered, not kept
        a.publish(*message("a.0.x.M2", user=["ann"]), store=True)
        await eventually(lambda: eb.delivered == ["a.0.x.M2"], 5, "live")
        self.assertEqual(await b.mail("ann"), [])

    @run
    async def test_without_history_nothing_is_numbered_or_kept(self):
        a, ea, b, eb = await self.pair(ttl=0)
        self.assertIsNone(a.epoch)
        await self.subscribe(b, "group:g")
        a.publish(*message("a.0.x.M1", group=["g"], user=["ann"]), store=True)
        await eventually(lambda: eb.delivered == ["a.0.x.M1"], 5, "live")
        self.assertEqual(eb.positions(), [None])
        self.assertEqual(await b.replay(["group:g"], 0, "x"), ([], ["group:g"]))
        self.assertEqual(await b.mail("ann"), [])
        self.assertEqual(self.redis.call("EXISTS", "pushsvc:_history_log"), 0)


# -- real nodes ------------------------------------------------------------------------

class ResumeAcrossNodesTests(NodesTestCase):
    """Two nodes of two workers on one redis-server."""

    timeout = 180

    def welcome(self, client) -> dict:
        return [f for f in client.frames if f["op"] == "welcome"][-1]

    async def come_back(self, node: str, since: int, epoch: str, avoid: str | None = None):
        """ann again on ``node``, in g1 and g2, on a worker other than
        ``avoid``, resuming from ``since``: (client, ok)."""
        c = await self.client_on(node, "ann", ["g1", "g2"])
        while avoid is not None and owner(c.session) == avoid:
            await c.disconnect()
            c = await self.client_on(node, "ann", ["g1", "g2"])
        ok = await c.request("resume", since=since, epoch=epoch)
        return c, ok

    @run
    async def test_a_client_back_on_another_node_and_worker_gets_all_it_missed_once(self):
        await self.start_nodes(workers=2)
        first = await self.client_on("a", "ann", ["g1", "g2"])
        # ann's other device stays: it sees the cluster's order live
        watcher = await self.client_on("b", "ann", ["g1", "g2"])
        epoch = self.welcome(first)["epoch"]
        self.assertEqual(self.welcome(watcher)["epoch"], epoch)
        seen = await self.push_on("a", {"user": "ann"}, "before")
        [before] = await first.wait_for_messages(1)
        self.assertEqual(before["id"], seen)
        await watcher.wait_for_messages(1)
        await first.disconnect()
        del watcher.messages[:]

        wanted = set()
        for n in range(74):  # 50 to ann's user and groups, 24 to others
            to = TARGETS[n % len(TARGETS)]
            msg_id = await self.push_on("ab"[n % 2], to, n)  # through both nodes
            if to not in ({"group": "elsewhere"}, {"user": "bob"}):
                wanted.add(msg_id)
        self.assertEqual(len(wanted), 50)
        await watcher.wait_for_messages(50)
        await watcher.barrier()
        live_order = [m["id"] for m in watcher.messages]  # in position order
        self.assertEqual(set(live_order), wanted)

        for node, avoid in (("b", None), ("a", owner(first.session))):
            again, ok = await self.come_back(node, before["pos"], epoch, avoid)
            self.assertEqual(self.welcome(again)["epoch"], epoch)
            got = [m["id"] for m in again.messages]
            self.assertEqual(ok, {"op": "ok", "ref": ok["ref"], "replayed": len(live_order),
                                  "gaps": []})
            self.assertEqual(got, live_order)  # all of them, in order, once
            positions = [m["pos"] for m in again.messages]
            self.assertEqual(positions, [m["pos"] for m in watcher.messages])
            self.assertEqual(positions, sorted(set(positions)))
            self.assertGreater(positions[0], before["pos"])
            # live messages follow, once
            live = await self.push_on("b" if node == "a" else "a", {"group": "g1"}, "live")
            await again.wait_for_messages(len(got) + 1)
            await again.barrier()
            self.assertEqual([m["id"] for m in again.messages], got + [live])
            self.assertGreater(again.messages[-1]["pos"], positions[-1])
            await again.disconnect()
            await watcher.wait_for_messages(len(live_order) + 1)
            live_order.append(live)  # the next one comes back after it too

    @run
    async def test_gaps_past_the_history_and_after_redis_lost_it(self):
        await self.start_nodes(workers=2, config_text="[history]\nmax_per_channel = 5\n")
        c = await self.client_on("a", "ann", ["g1"])
        epoch = self.welcome(c)["epoch"]
        await c.disconnect()
        for n in range(8):  # through one worker of a: numbered in this order
            await self.push_on("a", {"group": "g1"}, n)
        await self.push_on("a", {"user": "ann"}, "kept")
        again, ok = await self.come_back("b", 0, epoch)
        self.assertEqual(ok["gaps"], ["group:g1"])
        self.assertEqual([m["data"] for m in again.messages], [3, 4, 5, 6, 7, "kept"])
        last = again.messages[-1]["pos"]
        await again.disconnect()

        # Redis restarted empty: a new epoch, and the old one is a gap everywhere
        await self.redis.stop()
        await self.redis.start()
        for node in self.nodes.values():
            await self.wait_healthy(node)
        fresh = await self.client_on("b", "ann", ["g1"])
        self.assertNotEqual(self.welcome(fresh)["epoch"], epoch)
        ok = await fresh.request("resume", since=last, epoch=epoch)
        self.assertEqual((ok["replayed"], ok["gaps"]), (0, ["all", "group:g1", "user:ann"]))

    @run
    async def test_a_stored_push_waits_for_the_user_on_another_node(self):
        await self.start_nodes(workers=2)
        bob = await self.client_on("a", "bob")
        stored = []
        for n in range(3):
            status, body = await self.on("a", "POST", "/api/push", {
                "to": {"user": ["ann", "bob"]}, "data": n, "store": True})
            self.assertEqual(status, 202, body)
            stored.append(body["id"])
        plain = await self.push_on("a", {"user": "ann"}, "not stored")
        await bob.wait_for_messages(3)
        ann = await self.client_on("b", "ann")
        self.assertEqual([m["id"] for m in ann.messages], stored)  # before the auth's ok
        self.assertNotIn(plain, [m["id"] for m in ann.messages])
        again = await self.client_on("b", "ann")
        self.assertEqual(again.messages, [])  # taken by the first
        other = await self.client_on("a", "bob")
        self.assertEqual(other.messages, [])  # bob was online: nothing kept
        # a resume after the mailbox does not give them twice
        ok = await ann.request("resume", since=0, epoch=self.welcome(ann)["epoch"])
        await ann.barrier()
        self.assertEqual([m["id"] for m in ann.messages], stored + [plain])
        self.assertEqual(ok["replayed"], 1)
