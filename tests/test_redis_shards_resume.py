"""Resume across Redis shards (issue 15, points 3 and 4): the cursor's wire,
the merge of the shards' replays, then two real nodes of two workers on
three redis-servers: a client that missed messages on channels of every
shard, one shard restarted empty (a new epoch), one shard down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from twisted.internet import reactor
from twisted.trial import unittest

from pushsvc.broker.redis_shards import interleave, merge, shard_of
from pushsvc.client import PushClient
from pushsvc.cursor import cursor, join_epochs, resume_problem, shard_tag, with_shard
from pushsvc.frames import message_frame, with_position
from pushsvc.protocol import Address
from pushsvc.routing import channels as route
from tests.helpers import eventually, run
from tests.test_redis_broker import NodesTestCase
from tests.test_pusher_ws_js import PusherJs as NodeChild
from tests.test_redis_shards import on_each, order_kept

JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser", "shards_resume.js")
JS_CLIENT = os.path.join(os.path.dirname(JS), "..", "..", "pushsvc", "static", "pushsvc.js")
NODE = shutil.which("node")


def node_websocket_missing() -> str | None:
    """Why pushsvc.js cannot run in Node here (None: it can)."""
    if NODE is None:
        return "node is not on PATH"
    ran = subprocess.run([NODE, "--experimental-websocket", "-e",
                          "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
                         capture_output=True)
    return None if ran.returncode == 0 else "this node has no WebSocket (Node >= 20.10)"


class CursorTests(unittest.TestCase):

    def test_epochs_join_and_positions_count_where_their_part_is_the_same(self):
        self.assertEqual(join_epochs(["e0", None, "e2"]), "e0~~e2")
        self.assertIsNone(join_epochs([None, None]))
        self.assertEqual(cursor(7, "e", "e"), [7])
        self.assertEqual(cursor(7, "old", "e"), [None])
        self.assertEqual(cursor(7, "e", None), [None])
        self.assertEqual(cursor((1, 2, 3), "a~b~c", "a~B~c"), [1, None, 3])
        self.assertEqual(cursor((1, 2, 3), "a~~c", "a~~c"), [1, None, 3])  # a shard never seen
        self.assertEqual(cursor((1, 2), "a~b", "a~b~c"), [None, None, None])  # shards added
        self.assertEqual(cursor(5, "a", "a~b"), [None, None])

    def test_a_shard_tag_follows_the_position(self):
        frame = with_position(message_frame("m1", Address(group=("g",)), "x"), 12)
        tagged = with_shard(frame, 2)
        self.assertEqual(list(json.loads(tagged).items())[:4],
                         [("op", "msg"), ("pos", 12), ("shard", 2), ("id", "m1")])
        self.assertEqual((shard_tag(tagged), shard_tag(frame)), (2, 0))
        unkept = message_frame("m2", Address(group=("g",)), "x")
        self.assertIs(with_shard(unkept, 1), unkept)
        self.assertEqual(shard_tag(unkept), 0)

    def test_resume_problems(self):
        for since, epoch in ((3, "e"), ([1, 2, 3], "a~b~c"), ([0], "e"), (0, "")):
            self.assertIsNone(resume_problem(since, epoch, 200), (since, epoch))
        for since, epoch, problem in (
                (-1, "e", "whole number"), ([1, -2], "a~b", "one per shard"),
                ([], "", "one per shard"), ([1] * 257, "~" * 256, "at most 256"),
                ([1, True], "a~b", "one per shard"), ([1, 2], "a", "2 parts"),
                (1, "a~b", "epoch of the welcome"), ([1, 2], "x" * 401 + "~", "2 parts")):
            self.assertIn(problem, resume_problem(since, epoch, 200), (since, epoch))


# What a client is handed, in turn: (the welcome's epoch, a msg frame, or a
# list of them held while resuming); and what it must make of it: the ids it
# hands on, and its last positions after each step.
SCENARIO = [
    ("a~b~c", {"pos": 3, "shard": 1, "id": "m1"}),
    ("a~b~c", {"pos": 2, "shard": 1, "id": "m0"}),   # shard 1 numbering again
    ("a~b~c", {"pos": 7, "shard": 0, "id": "m1"}),   # had through shard 1
    ("a~b~c", [{"pos": 9, "shard": 0, "id": "m4"}, {"pos": 4, "shard": 2, "id": "m2"},
               {"pos": 9, "shard": 0, "id": "m4"}]),  # the server's order, once each
    ("e", {"pos": 5, "id": "m3"}),                   # one shard now: positions anew
    ("e", {"pos": 5, "id": "m3"}),
    ("e", [{"pos": 8, "id": "m5"}, {"pos": 6, "id": "m1"}]),  # pos order; m1 had
]
EXPECTED = (["m1", "m0", "m4", "m2", "m3", "m5"],
            [[None, 3, None], [None, 2, None], [7, 2, None], [9, 2, 4], 5, 5, 8])

JS_SCENARIO = """
const {PushClient} = require(process.argv[1]);
const c = new PushClient("ws://127.0.0.1:1/ws", {});
const got = [], positions = [];
c.on("message", (m) => got.push(m.id));
for (const [epoch, step] of JSON.parse(process.argv[2])) {
  c.epoch = epoch;
  if (Array.isArray(step)) { c._buffer = step; c._flushBuffer(); } else c._deliver(step);
  positions.push(c.lastPos);
}
console.log(JSON.stringify([got, positions]));
"""


class ClientStateTests(unittest.TestCase):
    """What PushClient and pushsvc.js keep of the positions per shard, on
    the same frames (``SCENARIO``)."""

    def test_the_python_client(self):
        client = PushClient("ws://127.0.0.1:1/ws")
        got, positions = [], []
        client.on("message", lambda m: got.append(m["id"]))
        for epoch, step in SCENARIO:
            client.epoch = epoch
            if isinstance(step, list):
                client._buffer = list(step)
                client._flush_buffer()
            else:
                client._deliver(step)
            positions.append(client.last_pos)
        self.assertEqual((got, positions), EXPECTED)

    def test_pushsvc_js(self):
        if NODE is None:
            raise unittest.SkipTest("node is not on PATH")
        ran = subprocess.run([NODE, "-e", JS_SCENARIO, JS_CLIENT, json.dumps(SCENARIO)],
                             capture_output=True, text=True, check=True)
        self.assertEqual(tuple(json.loads(ran.stdout)), EXPECTED)


def kept(msg_id: str, position: int, **to) -> tuple[str, bytes]:
    """A replayed message: (id, frame with its position)."""
    address = Address(**{k: tuple(v) for k, v in to.items()})
    return msg_id, with_position(message_frame(msg_id, address, "x"), position)


class MergeTests(unittest.TestCase):
    """``redis_shards.merge`` on made-up answers of shards 0 and 1."""

    def setUp(self):
        self.g0, self.g1 = on_each(2)

    def test_each_message_once_keeping_both_shards_orders(self):
        both = {"group": [self.g0, self.g1]}
        answers = {0: ([kept("a", 5, group=[self.g0]), kept("m", 6, **both),
                        kept("b", 7, group=[self.g0])], []),
                   1: ([kept("x", 3, group=[self.g1]), kept("m", 4, **both)], [])}
        asked = {0: [f"group:{self.g0}"], 1: [f"group:{self.g1}"]}
        messages, gaps, unavailable, had = merge(answers, asked)
        self.assertEqual([i for i, _ in messages], ["a", "x", "m", "b"])
        self.assertEqual([(json.loads(f)["shard"], json.loads(f)["pos"]) for _, f in messages],
                         [(0, 5), (1, 3), (0, 6), (0, 7)])
        self.assertEqual((gaps, unavailable, had), ([], [], set()))

    def test_a_message_another_shard_shows_as_had_is_dropped_unless_that_shard_has_a_gap(self):
        both = {"group": [self.g0, self.g1]}
        asked = {0: [f"group:{self.g0}"], 1: [f"group:{self.g1}"]}
        # m is on shard 1's replay only: on shard 0, where the client is on
        # g0 too, it was at or below the client's position.
        answers = {0: ([kept("a", 9, group=[self.g0])], []),
                   1: ([kept("m", 4, **both), kept("y", 5, group=[self.g1])], [])}
        messages, _, _, had = merge(answers, asked)
        self.assertEqual(([i for i, _ in messages], had), (["a", "y"], {"m"}))
        answers[0] = ([kept("a", 9, group=[self.g0])], [f"group:{self.g0}"])
        messages, gaps, _, had = merge(answers, asked)
        self.assertEqual(([i for i, _ in messages], gaps, had),
                         (["a", "m", "y"], [f"group:{self.g0}"], set()))

    def test_a_shard_not_read_answers_its_channels_unavailable(self):
        asked = {0: [f"group:{self.g0}", "all"], 1: [f"group:{self.g1}"]}
        both = {"group": [self.g0, self.g1]}
        answers = {0: None, 1: ([kept("m", 4, **both)], [])}
        messages, gaps, unavailable, had = merge(answers, asked)
        self.assertEqual(([i for i, _ in messages], gaps, unavailable, had),
                         (["m"], [], ["all", f"group:{self.g0}"], set()))

    def test_interleave_keeps_each_sequences_order(self):
        sequences = {0: [("a", 0), ("m", 0), ("b", 0)], 1: [("x", 1), ("y", 1), ("m", 1)],
                     2: [("m", 2), ("z", 2)]}
        out = [(n, i) for n, i, _ in interleave(sequences)]
        self.assertEqual([i for _, i in out], ["a", "x", "y", "m", "b", "z"])
        self.assertEqual(dict((i, n) for n, i in out)["m"], 0)
        # orders that disagree: the lowest sequence's head first, each once
        self.assertEqual([i for _, i, _ in interleave({0: [("a", 0), ("b", 0)],
                                                       1: [("b", 1), ("a", 1)]})], ["a", "b"])


class ShardedResumeBase(NodesTestCase):
    """Two nodes of two workers on three redis-servers; ann is in a group on
    each shard (``g``), and her user and ``all`` channels live on some."""

    timeout = 180
    workers = 2  # per node

    async def start(self):
        await self.start_nodes(workers=self.workers, shards=3)
        self.g = on_each(3)
        self.channels = ["all", "user:ann", *(f"group:{g}" for g in self.g)]
        self.to_of: dict[str, Address] = {}

    async def shard_back(self, n: int) -> None:
        """Start shard ``n`` again (empty), and wait until each node answers
        healthy and every engine has registered on the shard again: /healthz
        is one worker's answer, and a resume through a worker whose link to
        the shard is not back yet answers the shard's channels unavailable."""
        await self.shards[n].start()
        for node in self.nodes.values():
            await self.wait_healthy(node)
        engines = len(self.nodes) * self.workers
        await eventually(lambda: self.shards[n].call("ZCARD", "pushsvc:_members") == engines,
                         20, f"every engine registered on shard {n} again")

    def cursor_of(self, client) -> tuple[list[int], str]:
        """(since, epoch) for a resume after what ``client`` got."""
        epoch = next(f for f in client.frames if f["op"] == "welcome")["epoch"]
        since = [0, 0, 0]
        for m in client.messages:
            since[m["shard"]] = max(since[m["shard"]], m["pos"])
        return since, epoch

    async def pushes(self, node: str, count: int, tag: str = "") -> list[str]:
        """Pushes through ``node`` to ann's channels (one group, several
        groups of several shards, her user, all) and to others; the ids
        ann should get."""
        g = self.g
        targets = [{"group": g[0]}, {"group": [g[1], g[2]]}, {"user": "ann"},
                   {"group": g[2]}, {"group": "elsewhere"}, {"all": True},
                   {"group": [g[0], g[1], g[2]]}, {"group": g[1], "user": "bob"}]
        wanted, self.batch = [], []
        for n in range(count):
            to = targets[n % len(targets)]
            msg_id = await self.push_on(node, to, f"{tag}{n}")
            self.to_of[msg_id] = Address.from_json(to)
            self.batch.append(msg_id)
            if to != {"group": "elsewhere"}:
                wanted.append(msg_id)
        return wanted

    async def ann_on(self, node: str):
        return await self.client_on(node, "ann", self.g)

    async def ann_leaves(self):
        """ann gets 8 messages on node a and leaves: (her client, their
        ids, since, epoch)."""
        first = await self.ann_on("a")
        had = await self.pushes("a", 8, "had")
        await first.wait_for_messages(len(had))
        since, epoch = self.cursor_of(first)
        await first.disconnect()
        return first, had, since, epoch

    async def python_client(self):
        """A started PushClient of ann on node a, with the messages and
        resumed events it gets."""
        await self.start()
        self.use_port(self.nodes["a"].port)
        client = PushClient(self.url, user="ann", groups=self.g, min_delay=1.0,
                            random=lambda: 0.5)
        self.addCleanup(client.stop)
        got, resumed = [], []
        client.on("message", got.append)
        client.on("resumed", resumed.append)
        await client.start()
        return client, got, resumed

    @staticmethod
    def cursor_of_got(messages) -> list[int]:
        since = [None, None, None]
        for m in messages:
            since[m["shard"]] = max(since[m["shard"]] or 0, m["pos"])
        return since

    def on_shards_but(self, ids, shard: int) -> list[str]:
        """Those of ``ids`` on a channel of ann's on a shard other than ``shard``."""
        return [i for i in ids if any(shard_of(c, 3) != shard and c in self.channels
                                      for c in route(self.to_of[i]))]


class ShardedResumeTests(ShardedResumeBase):
    """What the server does for a resume across shards (a Redis Cluster's
    logical shards run these again: test_redis_cluster_nodes)."""

    @run
    async def test_a_client_back_gets_each_missed_message_of_every_shard_once_in_order(self):
        """ann gets messages of every shard (one of three shards among them),
        leaves, misses more through both nodes, and resumes on the other
        node: each missed message once, in each channel's order, none she
        had; then live ones once.  bob, alone in g0 on the same node, makes
        shard 0's copy of a message of several shards come there first: ann
        still gets it from her own channel's shard."""
        await self.start()
        bob = await self.client_on("a", "bob", [self.g[0]])
        first, had, since, epoch = await self.ann_leaves()
        order_kept(self, first.messages, had)
        self.assertEqual({m["shard"] for m in first.messages}, {0, 1, 2})
        for m in first.messages:  # each tagged with a shard of one of ann's channels
            shards = {shard_of(c, 3) for c in route(Address.from_json(m["to"]))
                      if c in self.channels}
            self.assertIn(m["shard"], shards)
        self.assertEqual(len(epoch.split("~")), 3)

        missed = await self.pushes("a", 16, "missed")
        again = await self.ann_on("b")
        ok = await again.request("resume", since=since, epoch=epoch)
        self.assertEqual(ok, {"op": "ok", "ref": ok["ref"], "replayed": len(missed), "gaps": []})
        order_kept(self, again.messages, missed)
        del again.messages[:]
        live = await self.pushes("b", 3, "live")
        await again.wait_for_messages(3)
        await again.barrier()
        order_kept(self, again.messages, live)
        self.assertIn(bob.messages[0]["id"], had)

    @run
    async def test_a_connected_client_goes_on_through_a_shard_restarted_empty(self):
        """Shard 1 restarts with nothing while PushClient is connected: what
        is pushed after comes, though shard 1 numbers from 1 again; at the
        next reconnect the resume reports a gap for shard 1's channels only,
        and nothing comes twice."""
        client, got, resumed = await self.python_client()
        had = await self.pushes("b", 8, "had")
        await eventually(lambda: len(got) == len(had), 10, "the first messages")
        await self.shards[1].stop()
        await self.shard_back(1)
        after = await self.pushes("b", 8, "after")
        await eventually(lambda: len(got) == len(had) + len(after), 20, "the ones after")
        order_kept(self, got[len(had):], after)
        last_before = max(m["pos"] for m in got[:len(had)] if m["shard"] == 1)
        self.assertTrue(any(m["shard"] == 1 and m["pos"] <= last_before
                            for m in got[len(had):]), got)

        client.protocol.transport.abortConnection()
        await eventually(lambda: client.state == "waiting", 5, "away")
        missed = await self.pushes("b", 8, "missed")
        await client.when_ready()
        await eventually(lambda: len(got) == len(had) + len(after) + len(missed), 10,
                         "the missed ones")
        await client.ping()
        self.assertEqual(len(got), len({m["id"] for m in got}))
        order_kept(self, got[len(had) + len(after):], missed)
        [info] = resumed
        self.assertEqual((info["gaps"], info["epoch_changed"]),
                         (sorted(c for c in self.channels if shard_of(c, 3) == 1), True))
        self.assertEqual(client.pos_epoch, client.epoch)

    @run
    async def test_a_shard_restarted_empty_gives_gaps_for_its_channels_only(self):
        """Shard 1 restarts with nothing (a new epoch): the resume replays
        what shards 0 and 2 kept after ann's positions there and what shard
        1 kept since its restart, and reports a gap for shard 1's channels
        only.  What she had from shard 1 may come again from another shard."""
        await self.start()
        first, had, since, epoch = await self.ann_leaves()
        before = await self.pushes("a", 8, "before")
        await self.shards[1].stop()
        await self.shard_back(1)
        after = await self.pushes("b", 8, "after")
        on_shard_1 = [i for i in self.batch
                      if any(shard_of(c, 3) == 1 for c in route(self.to_of[i]))]
        await eventually(lambda: self.shards[1].call("ZCARD", "pushsvc:_history_log")
                         == len(on_shard_1), 20, "shard 1 keeps what came after")
        again = await self.ann_on("b")
        ok = await again.request("resume", since=since, epoch=epoch)
        on_1 = sorted(c for c in self.channels if shard_of(c, 3) == 1)
        self.assertEqual((ok["gaps"], ok.get("unavailable")), (on_1, None))
        kept = self.on_shards_but(before, 1)
        self.assertLess(len(kept), len(before))  # some were on shard 1 only
        # A message ann had from shard 1 that is on another shard of hers too
        # comes again: shard 1 no longer shows she had it (she hears of a gap).
        again_had = [m for m in again.messages if m["id"] in had]
        for m in again_had:
            shards = {shard_of(c, 3) for c in route(self.to_of[m["id"]]) if c in self.channels}
            self.assertTrue(1 in shards and len(shards) > 1, m)
            self.assertEqual(next(f for f in first.messages if f["id"] == m["id"])["shard"], 1)
        order_kept(self, [m for m in again.messages if m["id"] not in had], kept + after)

    @run
    async def test_one_shard_down_answers_its_channels_unavailable_and_the_rest_replays(self):
        """Shard 2 is down at the resume: its channels are ``unavailable``,
        the other shards replay what ann missed on theirs, once; once it is
        back, a new resume replays shard 2's."""
        await self.start()
        first, had, since, epoch = await self.ann_leaves()
        missed = await self.pushes("a", 16, "missed")
        await self.shards[2].stop()
        again = await self.ann_on("b")
        ok = await again.request("resume", since=since, epoch=epoch)
        on_2 = sorted(c for c in self.channels if shard_of(c, 3) == 2)
        self.assertEqual((ok["unavailable"], ok["gaps"]), (on_2, []))
        elsewhere = self.on_shards_but(missed, 2)
        self.assertTrue(0 < len(elsewhere) < len(missed))
        order_kept(self, again.messages, elsewhere)
        self.assertEqual(ok["replayed"], len(elsewhere))
        await again.disconnect()

        await self.shard_back(2)  # restarted empty: its part of the epoch changes
        last = await self.ann_on("b")
        ok = await last.request("resume", since=since, epoch=epoch)
        self.assertEqual((ok["gaps"], ok.get("unavailable")), (on_2, None))
        order_kept(self, last.messages, elsewhere)


class ShardedClientResumeTests(ShardedResumeBase):
    """The clients (PushClient, pushsvc.js) resume across shards by
    themselves: what they keep is the same whatever the kind of shard."""

    @run
    async def test_the_python_client_resumes_across_shards_by_itself(self):
        """PushClient keeps a position per shard and resumes with them: what
        it missed while away comes once, nothing it had comes again."""
        client, got, resumed = await self.python_client()
        had = await self.pushes("b", 8, "had")
        await eventually(lambda: len(got) == len(had), 10, "the first messages")
        self.assertEqual(len(client.positions), 3)
        self.assertEqual(client.last_pos, self.cursor_of_got(got))
        client.protocol.transport.abortConnection()
        await eventually(lambda: client.state == "waiting", 5, "away")
        missed = await self.pushes("b", 16, "missed")
        await client.when_ready()
        await eventually(lambda: len(got) == len(had) + len(missed), 10, "the missed ones")
        await client.ping()
        order_kept(self, got[:len(had)], had)
        order_kept(self, got[len(had):], missed)
        [info] = resumed
        self.assertEqual((info["replayed"], info["gaps"], info["epoch_changed"]),
                         (len(missed), [], False))
        self.assertEqual(client.last_pos, self.cursor_of_got(got))

    @run
    async def test_pushsvc_js_resumes_across_shards_by_itself(self):
        """pushsvc.js (in Node) keeps a position per shard and resumes with
        them after its socket drops: what it missed comes once, in each
        channel's order; ``lastPos`` has one position per shard."""
        missing = node_websocket_missing()
        if missing:
            if os.environ.get("CI") == "true":
                self.fail(missing)
            raise unittest.SkipTest(missing)
        await self.start()
        js = NodeChild()
        reactor.spawnProcess(js, NODE, [NODE, "--experimental-websocket", JS,
                                        f"ws://127.0.0.1:{self.nodes['a'].port}/ws", "ann",
                                        *self.g], env=os.environ.copy())
        self.addCleanup(js.kill)
        ready = await js.wait("ready")
        self.assertEqual(len(ready["epoch"].split("~")), 3)
        had = await self.pushes("b", 8, "had")
        await eventually(lambda: len(js.all("message")) == len(had), 10, "the first ones")
        got = [e["value"] for e in js.all("message")]
        order_kept(self, got, had)
        self.assertEqual(js.all("message")[-1]["lastPos"], self.cursor_of_got(got))
        js.send(**{"do": "drop"})
        await eventually(lambda: [e for e in js.all("state") if e["value"]["state"] == "waiting"],
                         10, f"away (seen: {js.seen[-3:]})")
        missed = await self.pushes("b", 16, "missed")
        resumed = await js.wait("resumed")
        self.assertEqual((resumed["value"]["replayed"], resumed["value"]["gaps"],
                          resumed["value"]["epochChanged"]), (len(missed), [], False))
        self.assertEqual(resumed["value"]["since"], self.cursor_of_got(got))
        await eventually(lambda: len(js.all("message")) == len(had) + len(missed), 10,
                         "the missed ones")
        again = [e["value"] for e in js.all("message")][len(had):]
        order_kept(self, again, missed)
        self.assertEqual(js.all("message")[-1]["lastPos"], self.cursor_of_got(got + again))
        self.assertEqual(js.all("gap"), [])
