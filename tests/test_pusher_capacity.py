"""An app's ``max_connections`` across the cluster (docs/pusher.md, "Per-app
limits"): every engine counts its own Pusher connections exactly and the
others' as they last reported them, every ``limits.count_interval``.

- ``CapacityTests``, ``CountsTests``, ``CountExchangeTests``: the decision,
  the reports and the exchange's loop (no I/O; a ``task.Clock``);
- ``HubCountsTests``: two workers' brokers and the hub, over AMP in memory;
- ``RedisScriptTests``: the counts script on a real redis-server;
- ``PoolCapacityTests``: a real pool of two workers admits N connections in
  all, then refuses with 4100 whichever worker takes the connection;
- ``NodesCapacityTests``: two real nodes through a real redis-server, the
  same; a killed node's connections stop counting once its report expires.
"""

from __future__ import annotations

import json
from collections import Counter

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest

from pushsvc.broker.amp import AmpBroker, WorkerProtocol
from pushsvc.broker.counts import CountExchange, add_up, check_counts
from pushsvc.broker.redis_counts import COUNTS_SCRIPT, encode, parse_totals
from pushsvc.pool.hub import Hub, HubProtocol
from pushsvc.pusher.capacity import Capacity
from tests.helpers import eventually, run
from tests.raw import connect_raw, handshake
from tests.redis_helpers import RedisServer
from tests.test_pool import PoolTestCase
from tests.test_pusher_http import pusher_overrides
from tests.test_redis_broker import NodesTestCase

INTERVAL = 0.1   # limits.count_interval in the pool and nodes tests
CAP = {"id": "2001", "key": "cap-key", "secret": "cap-secret"}


class CapacityTests(unittest.TestCase):
    def test_own_exact_plus_others_last_known(self):
        capacity = Capacity()
        for _ in range(3):
            capacity.opened("a")
        capacity.opened("b")
        capacity.learned({"a": 5})
        self.assertEqual((capacity.total("a"), capacity.total("b"), capacity.total("c")),
                         (8, 1, 0))
        self.assertTrue(capacity.admits("a", 9))
        self.assertFalse(capacity.admits("a", 8))
        self.assertTrue(capacity.admits("a", 0))  # no cap
        capacity.closed("a")
        self.assertTrue(capacity.admits("a", 8))
        self.assertEqual(capacity.report(), {"a": 2, "b": 1})
        capacity.closed("b")
        self.assertEqual(capacity.report(), {"a": 2})  # an app at 0 is not reported

    def test_nothing_to_report_while_no_app_has_a_cap(self):
        capped = [False]
        capacity = Capacity(lambda: capped[0])
        capacity.opened("a")
        capacity.learned({"a": 4})
        self.assertIsNone(capacity.report())
        self.assertEqual(capacity.others, {})  # stale once a cap comes back
        capped[0] = True
        self.assertEqual(capacity.report(), {"a": 1})


class CountsTests(unittest.TestCase):
    def test_check_counts(self):
        self.assertEqual(check_counts({"a": 0, "b-1_x": 7}), {"a": 0, "b-1_x": 7})
        for bad in ([], {"a": -1}, {"a": True}, {"a": 1.5}, {"": 1}, {"a b": 1}, {1: 1},
                    {"a": "1"}):
            self.assertRaises(ValueError, check_counts, bad)

    def test_add_up(self):
        self.assertEqual(add_up([{"a": 1, "b": 0}, {"a": 2, "c": 3}, {}]), {"a": 3, "c": 3})
        self.assertEqual(add_up([]), {})


class CountExchangeTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.sent: list[tuple[dict, Deferred]] = []
        self.counts: dict | None = {"a": 1}
        self.learned: list[dict] = []
        self.exchange = CountExchange(self.clock, self.send, lambda: self.counts,
                                      self.learned.append, 1.0)

    def send(self, counts):
        d = Deferred()
        self.sent.append((counts, d))
        return d

    def test_every_interval_one_at_a_time(self):
        self.exchange.start()
        self.clock.advance(0.99)
        self.assertEqual(self.sent, [])
        self.clock.advance(0.01)
        self.assertEqual([c for c, _ in self.sent], [{"a": 1}])
        self.clock.advance(1.0)  # the first is not answered yet: none more
        self.assertEqual(len(self.sent), 1)
        self.sent[0][1].callback({"a": 4})
        self.assertEqual(self.learned, [{"a": 4}])
        self.counts = {"a": 2}
        self.clock.advance(1.0)
        self.assertEqual([c for c, _ in self.sent], [{"a": 1}, {"a": 2}])
        self.exchange.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_sent_while_there_is_nothing_to_report(self):
        self.counts = None
        self.exchange.start()
        self.clock.advance(3.0)
        self.assertEqual(self.sent, [])
        self.exchange.stop()

    def test_a_failure_or_a_bad_answer_keeps_what_was_learned(self):
        answers = [fail(ConnectionError("gone")), succeed({"a": -3}), succeed({"a": 2})]
        exchange = CountExchange(self.clock, lambda counts: answers.pop(0),
                                 lambda: {"a": 1}, self.learned.append, 1.0)
        exchange.start()
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.learned, [{"a": 2}])
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        exchange.stop()


class FakeWorkerProcess:
    def __init__(self, index: int):
        self.index = index


class HubCountsTests(unittest.TestCase):
    """Two workers' AmpBrokers talk to the hub over AMP (in memory)."""

    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(None, self.clock, None)
        self.pumps = []
        self.workers = [FakeWorkerProcess(n) for n in range(2)]
        self.capacities = [Capacity(), Capacity()]
        self.brokers = []
        for worker, capacity in zip(self.workers, self.capacities):
            broker = AmpBroker(self.clock)
            broker.share_counts(capacity.report, capacity.learned, 1.0)
            end = WorkerProtocol(broker)
            hub_end = HubProtocol(self.hub, worker)
            pump = iosim.connect(hub_end, iosim.makeFakeServer(hub_end),
                                 end, iosim.makeFakeClient(end))
            broker.connect(end)
            self.pumps.append(pump)
            self.brokers.append(broker)
            self.addCleanup(broker.close)

    def tick(self):
        self.clock.advance(1.0)
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()

    def test_each_worker_learns_the_others_and_a_gone_one_stops_counting(self):
        a, b = self.capacities
        a.opened("1001")
        a.opened("1001")
        b.opened("1001")
        b.opened("1002")
        self.tick()  # each reported; the first to report knew nothing of the other yet
        self.tick()
        self.assertEqual((a.others, b.others), ({"1001": 1, "1002": 1}, {"1001": 2}))
        self.assertEqual(self.hub.counts, {self.workers[0]: {"1001": 2},
                                           self.workers[1]: {"1001": 1, "1002": 1}})
        self.hub.gone(self.workers[1])
        self.tick()
        self.assertEqual(a.others, {})


class RedisScriptTests(unittest.TestCase):
    """``COUNTS_SCRIPT`` on a real redis-server."""

    async def count(self, member: str, counts: dict, ttl_ms: int = 60_000) -> dict:
        answer = self.redis.call("EVAL", COUNTS_SCRIPT, 1, "p_counts", member, ttl_ms,
                                 encode(counts))
        return parse_totals(answer)

    @run
    async def test_others_summed_and_the_expired_swept(self):
        self.redis = RedisServer(self)
        await self.redis.start()
        self.assertEqual(await self.count("e1", {"a": 2}), {})
        self.assertEqual(await self.count("e2", {"a": 3, "b": 1}), {"a": 2})
        self.assertEqual(await self.count("e1", {"a": 2}), {"a": 3, "b": 1})
        # a dead engine's report whose time has passed, and one Redis cannot read
        self.redis.call("HSET", "p_counts", "e3", "1000 a 7", "e4", "garbage")
        self.assertEqual(await self.count("e1", {}), {"a": 3, "b": 1})
        self.assertEqual(sorted(self.redis.call("HKEYS", "p_counts")), [b"e1", b"e2"])
        self.assertEqual(await self.count("e2", {"b": 1}), {})  # e1 reported none


def reports(redis) -> dict[bytes, tuple[int, dict[str, int]]]:
    """The engines' reports in Redis: member id -> (expiry, counts)."""
    flat = redis.call("HGETALL", "pushsvc:_counts")
    found = {}
    for member, value in zip(flat[::2], flat[1::2]):
        expiry, *rest = value.decode().split()
        found[member] = (int(expiry), {rest[i]: int(rest[i + 1])
                                       for i in range(0, len(rest), 2)})
    return found


class CapacityClientMixin:
    """Raw Pusher connections to the capped app on ``self.port``; the
    admitted ones in ``clients``, by socket id."""

    def setUp(self):
        super().setUp()
        self.clients = {}

    async def attempt(self):
        """A connection: (socket id, None) when admitted, (None, close code)
        when refused (after its pusher:error with the same code)."""
        client = await connect_raw(self.port, handshake("/app/cap-key?protocol=7"))
        self.addCleanup(client.transport.loseConnection)

        def named(name):
            return [f for f in client.json_frames() if f.get("event") == name]
        await client.wait_for(lambda: named("pusher:connection_established")
                               or client.has_close())
        established = named("pusher:connection_established")
        if established:
            socket_id = json.loads(established[0]["data"])["socket_id"]
            self.clients[socket_id] = client
            return socket_id, None
        await client.wait_for(client.has_close)
        self.assertEqual([e["data"]["code"] for e in named("pusher:error")],
                         [client.close_code])
        return None, client.close_code


class PoolCapacityTests(CapacityClientMixin, PoolTestCase):
    """A real pool of two workers: the hub sums their reports."""

    LIMIT = 6

    async def settle(self, total: int) -> None:
        """Until the hub holds both workers' reports adding up to ``total``,
        and each has reported once more (it learned the other's then)."""
        hub = self.pool.hub
        await eventually(lambda: len(hub.counts) == 2 and sum(
            c.get(CAP["id"], 0) for c in hub.counts.values()) == total, 5, "the reports")
        since = len(self.reported)
        await eventually(lambda: len(set(self.reported[since:])) == 2, 5, "reports again")

    def watch_reports(self) -> None:
        """Note which worker reports, in order."""
        self.reported: list = []
        hub = self.pool.hub
        counted = hub.counted

        def noted(worker, counts):
            self.reported.append(worker)
            return counted(worker, counts)
        hub.counted = noted

    async def spread(self) -> list[str]:
        """One connection on each worker (the workers' sockets share the
        port: the kernel picks one by the client's address); one that lands
        where the first is, is closed again.  Their socket ids."""
        first, _ = await self.attempt()
        await self.settle(1)
        for _ in range(30):
            socket_id, _ = await self.attempt()
            if socket_id.split(".")[0] != first.split(".")[0]:
                await self.settle(2)
                return [first, socket_id]
            self.clients.pop(socket_id).transport.loseConnection()
            await self.settle(1)
        self.fail("every connection landed on one worker")

    @run
    async def test_the_pool_admits_the_cap_in_all(self):
        app = {**CAP, "max_connections": self.LIMIT}
        await self.start_pool(2, count_interval=INTERVAL, **pusher_overrides([app]))
        self.watch_reports()
        accepted = await self.spread()  # both workers hold some
        while len(accepted) <= self.LIMIT:  # one at a time, each once both know
            socket_id, code = await self.attempt()
            if socket_id is None:
                self.assertEqual(code, 4100)
                break
            accepted.append(socket_id)
            await self.settle(len(accepted))
        self.assertEqual(len(accepted), self.LIMIT)
        for _ in range(4):  # whichever worker takes it
            self.assertEqual(await self.attempt(), (None, 4100))
        by_worker = Counter(socket_id.split(".")[0] for socket_id in accepted)
        self.assertEqual(len(by_worker), 2, accepted)
        self.assertEqual(sorted(sum(c.values()) for c in self.pool.hub.counts.values()),
                         sorted(by_worker.values()))


class NodesCapacityTests(CapacityClientMixin, NodesTestCase):
    """Two real nodes (one process each) through a real redis-server."""

    LIMIT = 4

    async def settle(self, total: int, engines: int = 2) -> None:
        """Until Redis holds ``engines`` reports adding up to ``total``, and
        each engine has run the script once more (it learned the others')."""
        await eventually(lambda: len(found := reports(self.redis)) == engines and sum(
            counts.get(CAP["id"], 0) for _, counts in found.values()) == total, 5,
            "the reports")
        marks = {member: expiry for member, (expiry, _) in reports(self.redis).items()}
        await eventually(lambda: all(reports(self.redis).get(m, (e,))[0] != e
                                     for m, e in marks.items()), 5, "reports again")

    def to(self, name: str) -> None:
        self.use_port(self.nodes[name].port)

    @run
    async def test_the_nodes_admit_the_cap_in_all_until_one_dies(self):
        toml = (f"[limits]\ncount_interval = {INTERVAL}\n"
                f'[[pusher.apps]]\nid = "{CAP["id"]}"\nkey = "{CAP["key"]}"\n'
                f'secret = "{CAP["secret"]}"\nmax_connections = {self.LIMIT}\n')
        await self.start_nodes(workers=0, config_text=toml)
        for name in ("a", "a", "b", "b"):
            self.to(name)
            socket_id, _ = await self.attempt()
            self.assertIsNotNone(socket_id, f"refused on node {name}")
        await self.settle(self.LIMIT)
        for name in ("a", "b"):
            self.to(name)
            self.assertEqual(await self.attempt(), (None, 4100))
        # b dies with its 2: once its report has expired (three intervals),
        # a counts its own alone
        await self.nodes["b"].child.kill()
        await eventually(lambda: len(reports(self.redis)) == 1, 5, "b's report swept")
        self.to("a")
        self.assertIsNotNone((await self.attempt())[0])
        self.assertIsNotNone((await self.attempt())[0])
        self.assertEqual(await self.attempt(), (None, 4100))
