"""The Redis broker: in this process against a real redis-server, then real
nodes (``twistd pushsvc --redis``) on one Redis, then Redis going away.

Every test starts its own redis-server on a free port (``redis_helpers``);
without redis-server they are skipped, or fail with CI=true.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from pushsvc.broker import make_broker
from pushsvc.broker.interface import Command, Message
from pushsvc.broker.local import LocalBroker
from pushsvc.broker.redis import RedisBroker
from pushsvc.broker.redis_calls import _calls
from pushsvc.broker.redis_context import MISSED_BEATS
from pushsvc.broker.redis_link import RETRY_MAX, _Link
from pushsvc.broker.redis_url import RedisURL, parse_redis_url
from pushsvc.config import ConfigError, build_settings
from pushsvc.frames import message_frame
from pushsvc.ids import owner
from pushsvc.protocol import Address
from pushsvc.routing import channels as route
from tests.helpers import ChildTestCase, eventually, free_port, run, settings
from tests.redis_helpers import RedisServer


# -- the URL and the settings (no Redis needed) -----------------------------------

class RedisUrlTests(unittest.TestCase):

    def test_plain_urls(self):
        self.assertEqual(parse_redis_url("redis://127.0.0.1:7000/3"),
                         RedisURL((("127.0.0.1", 7000),), 3))
        self.assertEqual(parse_redis_url("redis://cache"), RedisURL((("cache", 6379),), 0))
        url = parse_redis_url("redis://me:s%40cret@[::1]:6380/1")
        self.assertEqual((url.hosts, url.db, url.username, url.password),
                         ((("::1", 6380),), 1, "me", "s@cret"))
        self.assertEqual(url.describe(), "redis://me:***@[::1]:6380/1")
        self.assertEqual(parse_redis_url("redis://:pw@h/").password, "pw")

    def test_sentinel_urls(self):
        url = parse_redis_url("redis+sentinel://:pw@s1:26380,s2/mymaster/2")
        self.assertEqual((url.hosts, url.service, url.db, url.password, url.sentinel),
                         ((("s1", 26380), ("s2", 26379)), "mymaster", 2, "pw", True))
        self.assertEqual(parse_redis_url("redis+sentinel://s1/m").db, 0)

    def test_bad_urls_say_what_is_wrong(self):
        for text, words in [
                ("", "must be a Redis URL"), ("http://h", "must start with redis://"),
                ("redis:/h", "must start with"), ("redis://a,b", "takes one host"),
                ("redis://h:99999", "must be 1-65535"), ("redis://h:0", "must be 1-65535"),
                ("redis://h/x", "whole number"), ("redis://h/1/2", "unexpected path"),
                ("redis://h?db=1", "not supported"), ("redis://h h", "bad host"),
                ("redis+sentinel://s1", "service name"), ("redis+sentinel://s1/", "service"),
                ("redis://", "bad host")]:
            with self.assertRaises(ValueError, msg=text) as caught:
                parse_redis_url(text)
            self.assertIn(words, str(caught.exception), text)

    def test_settings(self):
        s = build_settings(None, {"url": "redis://127.0.0.1:7000/0"})
        self.assertEqual((s.redis, s.redis_prefix, s.redis_timeout, s.redis_heartbeat),
                         ("redis://127.0.0.1:7000/0", "pushsvc:", 5.0, 2.0))
        self.assertEqual(build_settings().redis, "")
        with self.assertRaises(ConfigError) as caught:
            build_settings(None, {"url": "redis://h/x"})
        self.assertTrue(str(caught.exception).startswith("--redis: "))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[redis]\nurl = "redis+sentinel://s/m"\nprefix = "app1:"\n'
                    "heartbeat = 0.5\nmax_queued_messages = 5\n")
        s = build_settings(path)
        self.assertEqual((s.redis, s.redis_prefix, s.redis_heartbeat, s.redis_max_queued),
                         ("redis+sentinel://s/m", "app1:", 0.5, 5))
        with open(path, "w") as f:
            f.write('[redis]\nprefix = "a b"\n')
        self.assertRaises(ConfigError, build_settings, path)

    def test_make_broker_picks_redis_only_when_set(self):
        local = LocalBroker()
        self.assertIs(make_broker(settings(), 0, reactor, otherwise=lambda: local), local)
        broker = make_broker(settings(redis="redis://127.0.0.1:1/0", node="n"), 3, reactor,
                             otherwise=lambda: local, master_pid=1234)
        self.assertIsInstance(broker, RedisBroker)
        self.assertEqual(broker.owner, "n.3")
        self.assertTrue(broker.token.endswith(":1234"))
        self.assertEqual(broker.health(),
                         "redis unavailable: not connected yet to redis://127.0.0.1:1/0")


class BackoffTests(unittest.TestCase):

    def test_delays_double_up_to_the_cap(self):
        delays = [_Link.delay(n) for n in range(1, 12)]
        self.assertTrue(0.08 <= delays[0] <= 0.12, delays)
        self.assertTrue(0.16 <= delays[1] <= 0.24, delays)
        self.assertTrue(all(d <= RETRY_MAX * 1.2 for d in delays), delays)
        self.assertGreaterEqual(delays[-1], RETRY_MAX * 0.8)

    def test_failed_attempts_are_retried_with_backoff_and_logged_once(self):
        clock = Clock()

        class Nowhere:
            url = parse_redis_url("redis://127.0.0.1:1/0")

            def __init__(self):
                self.attempts: list[float] = []

            def connect(self, factory):
                self.attempts.append(clock.seconds())
                return fail(ConnectionRefusedError())

        broker = RedisBroker(settings(redis="redis://127.0.0.1:1/0", node="n"), "n.0",
                             reactor, clock, token="t")
        broker._cmd.server, broker._sub.server = commands, subscriber = Nowhere(), Nowhere()
        logged = collect_log(self)
        broker.attach(FakeEngine("n.0"))
        for _ in range(600):
            clock.advance(0.05)
        for attempts in (commands.attempts, subscriber.attempts):
            gaps = [b - a for a, b in zip(attempts, attempts[1:])]
            self.assertTrue(0.05 <= gaps[0] <= 0.2, gaps)
            self.assertEqual(gaps[:5], sorted(gaps[:5]), gaps)
            self.assertGreater(max(gaps), RETRY_MAX * 0.75, gaps)
            self.assertLessEqual(max(gaps), RETRY_MAX * 1.25, gaps)
        self.assertEqual(sum("redis unavailable" in line for line in logged), 1, logged)
        self.assertIn("Connection was refused", broker.health())
        self.assertTrue(broker.health().startswith("redis unavailable: "))
        broker.close()


class CallTests(unittest.TestCase):
    """``_calls``: every session gets one publisher's messages in order."""

    CHANNELS = ["all", "user:a", "user:b", "worker:x", "worker:y", "group:g", "group:h",
                "tag:t"]

    def test_calls_keep_the_order_for_every_session(self):
        import itertools
        import random
        rng = random.Random(5)
        sessions = [{"all", user, worker, *groups}
                    for user in ("user:a", "user:b") for worker in ("worker:x", "worker:y")
                    for groups in ([], ["group:g"], ["group:g", "group:h", "tag:t"])]
        for _ in range(300):
            entries = [(tuple(rng.sample(self.CHANNELS, rng.choice([1, 1, 1, 2, 3]))),
                        b"%d" % n) for n in range(rng.randint(1, 12))]
            calls = _calls(entries)
            self.assertEqual(sum(len(set().union(*c.values())) for c in calls)
                             if calls else 0, len(entries))
            for wanted in itertools.chain(sessions, [set(self.CHANNELS)]):
                got = []  # what a subscriber of ``wanted``'s channels processes
                for call in calls:
                    seen = set()
                    for channel, records in call.items():
                        if channel in wanted:
                            got += [r for r in records if r not in seen]
                            seen.update(records)
                for session in sessions:
                    mine = [r for r in got if set(entries[int(r)][0]) & session]
                    self.assertEqual(mine, sorted(mine, key=int), (entries, calls))

    def test_common_batches_make_one_call(self):
        for channels in (["all"] * 50, [f"user:{n % 7}" for n in range(50)],
                         [f"worker:n.{n % 3}" for n in range(50)], ["group:g"] * 50):
            self.assertEqual(len(_calls([((c,), b"r") for c in channels])), 1, channels)
        self.assertEqual(len(_calls([(("group:g",), b"r"), (("group:h",), b"r"),
                                     (("group:g",), b"r")])), 2)
        many = _calls([(("all",), b"x" * 1000)] * 2500)
        self.assertEqual([len(c["all"]) for c in many], [1000, 1000, 500])


def collect_log(testcase) -> list[str]:
    """Every log line from now to the end of the test, as text."""
    lines: list[str] = []

    def observer(event):
        lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


# -- RedisBroker in this process ---------------------------------------------------

HEARTBEAT = 0.5  # the nodes' [redis] heartbeat (quick: quick to see who is back)


class HeartbeatTests(unittest.TestCase):
    """redis_members.Members: a beat asked for while one is under way goes
    out right after it (the subscriber became ready: register now, not a
    heartbeat later)."""

    def test_beat_now_during_a_beat_beats_again_after_it(self):
        from types import SimpleNamespace
        from twisted.internet.defer import Deferred
        from pushsvc.broker.redis_members import Members
        clock, calls = Clock(), []

        def evaluate(script, keys, args):
            calls.append(args[3])  # whether the subscriber was ready
            calls_d.append(Deferred())
            return calls_d[-1]
        calls_d: list = []
        ctx = SimpleNamespace(
            clock=clock, closed=False, sub_ready=False, interval=2.0, members_key=b"m",
            node_key=b"n", history_keys=[], id_b=b"a.0", ttl_ms=6000, token="t",
            cmd=SimpleNamespace(protocol=object()), sub=SimpleNamespace(ping=lambda now: None),
            candidate=lambda: b"", eval=evaluate, set_epoch=lambda epoch: None)
        members = Members(ctx, on_beat=lambda: None, on_fatal=self.fail)
        members.beat_now()
        clock.advance(0)
        self.assertEqual(calls, [b"0"])       # under way, before the subscriber is ready
        ctx.sub_ready = True
        members.beat_now()
        clock.advance(0)
        self.assertEqual(calls, [b"0"])       # one beat at a time
        calls_d[0].callback((1, b"", [b"a.0"], b"e"))
        self.assertEqual(calls, [b"0", b"1"])  # and the asked one right after: registered
        calls_d[1].callback((1, b"", [b"a.0"], b"e"))
        clock.advance(0)
        self.assertEqual(calls, [b"0", b"1"])


class RepeatedErrorTests(unittest.TestCase):
    """A heartbeat call's Redis error is logged when it comes and when it
    changes, not at every beat; a lost connection is not its to log."""

    def test_logged_once_per_error_and_again_after_a_success(self):
        import txredisapi
        from twisted.python.failure import Failure
        from pushsvc.broker.redis_context import RepeatedError
        logged = []
        observer = lambda event: logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        errors = RepeatedError("the test heartbeat")
        noscript, oom = (Failure(txredisapi.ResponseError(e)) for e in ("NOSCRIPT", "OOM"))
        for failure in (noscript, noscript, Failure(txredisapi.ConnectionError("gone")), oom):
            errors.failed(failure)
        errors.ok()
        errors.failed(oom, "sweeping")
        self.assertEqual([line for line in logged if "failed:" in line],
                         ["the test heartbeat failed: NOSCRIPT",
                          "the test heartbeat failed: OOM", "sweeping failed: OOM"])


class FakeEngine:
    """An IReceiver that records what it is handed."""

    def __init__(self, name: str):
        self.name = name
        self.delivered: list[str] = []
        self.performed: list[Command] = []

    def deliver(self, message, alone=False):
        self.delivered.append(message.id)

    def perform(self, command):
        self.performed.append(command)
        return {"worker": self.name, "count": 1, "names": [self.name]}


def message(msg_id: str, **to) -> tuple[set[str], Message]:
    address = Address(**{k: tuple(v) if isinstance(v, list) else v for k, v in to.items()})
    return route(address), Message(msg_id, address, message_frame(msg_id, address, "x"))


class BrokerTestCase(unittest.TestCase):
    """RedisBrokers in this process on one redis-server."""

    timeout = 60

    async def start_redis(self) -> RedisServer:
        self.redis = RedisServer(self)
        await self.redis.start()
        return self.redis

    async def broker(self, node: str, worker: int = 0, token: str | None = None,
                     url: str | None = None, **overrides) -> tuple[RedisBroker, FakeEngine]:
        s = settings(redis=url or self.redis.url, node=node, redis_heartbeat=0.2,
                     redis_timeout=1.0, **overrides)
        fatal: list[str] = []
        broker = RedisBroker(s, f"{node}.{worker}", reactor, token=token or f"host:{node}",
                             on_fatal=fatal.append)
        broker.fatal = fatal
        engine = FakeEngine(broker.owner)
        broker.attach(engine)
        self.addCleanup(broker.close)
        await eventually(lambda: broker.health() is None, 10, f"{node} connected")
        return broker, engine

    async def subscribe(self, broker: RedisBroker, *names: str) -> None:
        for name in names:
            d = broker.subscribe(name)
            if d is not None:
                await d


class RedisBrokerTests(BrokerTestCase):

    @run
    async def test_each_message_reaches_each_subscriber_once(self):
        await self.start_redis()
        a, ea = await self.broker("a")
        b, eb = await self.broker("b")
        await self.subscribe(a, "group:g")
        await self.subscribe(b, "group:g", "user:u", "tag:t", "all")
        published = []
        for n, to in enumerate([{"group": ["g"]}, {"user": ["u"]}, {"all": True},
                                {"group": ["g"], "user": ["u"], "tag": ["t"]},
                                {"user": ["nobody"]}, {"group": ["g", "h"]}]):
            names, msg = message(f"a.0.x.M{n}", **to)
            await a.publish(names, msg)
            published.append(msg.id)
        for n in range(3):  # a single-channel one and a multi-channel one, same turn
            a.publish(*message(f"a.0.x.N{n}", group=["g"], user=["u"]))
        await eventually(lambda: len(eb.delivered) >= 8, 5, "b has everything")
        await a.command(Command("stats", {}))  # after every message before it
        self.assertEqual(eb.delivered, [published[i] for i in (0, 1, 2, 3, 5)]
                         + [f"a.0.x.N{n}" for n in range(3)])
        self.assertGreaterEqual(b.counters["duplicates"], 4)
        # a delivers its own messages itself, once, and drops its copies from Redis
        self.assertEqual(ea.delivered, [published[i] for i in (0, 3, 5)]
                         + [f"a.0.x.N{n}" for n in range(3)])

    @run
    async def test_through_a_sentinel(self):
        redis = await self.start_redis()
        sentinel = RedisServer(self, monitor=redis.port)
        await sentinel.start()
        a, ea = await self.broker(
            "a", url=f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0")
        b, eb = await self.broker("b")
        await self.subscribe(a, "user:u")
        await self.subscribe(b, "user:u")
        await b.publish(*message("b.0.x.M1", user=["u"]))
        await a.publish(*message("a.0.x.M1", user=["u"]))
        both = ["a.0.x.M1", "b.0.x.M1"]
        await eventually(lambda: sorted(ea.delivered) == sorted(eb.delivered) == both,
                         5, "both ways")
        self.assertEqual(redis.numsub("pushsvc:user:u"), 2)
        results = await b.command(Command("stats", {}))
        self.assertEqual(sorted(r["worker"] for r in results), ["a.0", "b.0"])

    @run
    async def test_subscribes_in_redis_only_what_is_wanted(self):
        redis = await self.start_redis()
        a, _ = await self.broker("a")
        b, eb = await self.broker("b")
        self.assertEqual(redis.numsub("pushsvc:group:g"), 0)
        await self.subscribe(b, "group:g")
        self.assertEqual(redis.numsub("pushsvc:group:g"), 1)
        b.unsubscribe("group:g")
        await eventually(lambda: redis.numsub("pushsvc:group:g") == 0, 5, "unsubscribed")
        await a.publish(*message("a.0.x.M1", group=["g"]))
        await a.command(Command("stats", {}))
        self.assertEqual(eb.delivered, [])
        self.assertEqual(redis.numsub("pushsvc:_cmd"), 2)

    @run
    async def test_commands_answer_for_every_member(self):
        await self.start_redis()
        a, ea = await self.broker("a")
        b, eb = await self.broker("b")
        c, ec = await self.broker("b", 1)
        await eventually(lambda: len(a.members) == 3, 5, "three members")
        results = await a.command(Command("user", {"user": "u"}))
        self.assertEqual(sorted(r["worker"] for r in results), ["a.0", "b.0", "b.1"])
        self.assertEqual(results[0]["worker"], "a.0")  # its own first
        self.assertEqual([c.args for c in eb.performed], [{"user": "u"}])
        # a member that does not answer: the others' results after the timeout
        self.redis.call("ZADD", "pushsvc:_members", "99999999999999", "ghost.0.x")
        logged = collect_log(self)
        started = reactor.seconds()
        results = await b.command(Command("stats", {}))
        self.assertGreaterEqual(reactor.seconds() - started, 0.9)
        self.assertEqual(sorted(r["worker"] for r in results), ["a.0", "b.0", "b.1"])
        self.assertTrue(any("no answer from ghost.0.x" in line for line in logged), logged)

    @run
    async def test_a_duplicate_node_name_is_refused(self):
        await self.start_redis()
        a, _ = await self.broker("a", token="host1:100")
        same, _ = await self.broker("a", 1, token="host1:100")  # a's other worker
        logged = collect_log(self)
        other, _ = await self.broker("a", 0, token="host2:200")
        await eventually(lambda: other.fatal, 5, "the duplicate refused")
        self.assertIn("another pushsvc node (host1:100) runs with the node name 'a'",
                      other.fatal[0])
        self.assertTrue(any("is held in redis by another process" in line
                            for line in logged))
        self.assertEqual(a.fatal + same.fatal, [])

    @run
    async def test_a_node_that_stopped_leaves_its_name_and_membership(self):
        await self.start_redis()
        a, _ = await self.broker("a", token="host1:100")
        b, _ = await self.broker("b")
        await eventually(lambda: len(b.members) == 2, 5, "two members")
        await a.close()
        self.assertEqual(self.redis.call("ZSCORE", "pushsvc:_members", a.id), None)
        # a new run of node a (another master pid) takes the name once it expires
        again, _ = await self.broker("a", token="host1:101")
        await eventually(lambda: again.id in b.members, 5, "the new a registered")
        self.assertEqual(again.fatal, [])

    @run
    async def test_redis_going_away_and_back(self):
        redis = await self.start_redis()
        a, ea = await self.broker("a", redis_max_queued=3)
        b, eb = await self.broker("b")
        await self.subscribe(a, "group:g")
        await self.subscribe(b, "group:g", "user:u")
        await eventually(lambda: len(a.members) == 2, 5, "two members")
        logged = collect_log(self)
        await redis.stop()
        await eventually(lambda: a.health() is not None and b.health() is not None, 5,
                         "both degraded")
        self.assertTrue(a.health().startswith("redis unavailable: "), a.health())
        # local delivery goes on; subscriptions stand at once
        for n in range(5):
            await a.publish(*message(f"a.0.x.M{n}", group=["g"]))
        self.assertIsNone(b.subscribe("tag:t"))
        b.unsubscribe("user:u")
        await eventually(lambda: len(ea.delivered) == 5, 5, "local delivery")
        self.assertEqual(len(a._publisher._queue), 3)  # bounded: the newest 3 kept
        self.assertEqual(a.counters["dropped"], 2)
        results = await a.command(Command("stats", {}))  # this process alone
        self.assertEqual([r["worker"] for r in results], ["a.0"])
        await redis.start()
        await eventually(lambda: a.health() is None and b.health() is None, 10, "back")
        # resubscribed: what b wants now, no more
        self.assertEqual(redis.numsub("pushsvc:group:g"), 2)
        self.assertEqual(redis.numsub("pushsvc:tag:t"), 1)
        self.assertEqual(redis.numsub("pushsvc:user:u"), 0)
        # the kept messages reach b once it is back, then new ones
        await eventually(lambda: len(eb.delivered) == 3, 5, "the kept messages")
        self.assertEqual(eb.delivered, [f"a.0.x.M{n}" for n in (2, 3, 4)])
        await a.publish(*message("a.0.x.M9", tag=["t"]))
        await eventually(lambda: eb.delivered[-1:] == ["a.0.x.M9"], 5, "new messages")
        text = "\n".join(logged)
        self.assertEqual(text.count("redis unavailable"), 2, text)  # once each
        self.assertEqual(text.count("redis is back"), 2, text)
        self.assertIn("dropped 2", text)


# -- real nodes: twistd pushsvc --redis ---------------------------------------------

class NodesTestCase(ChildTestCase):
    """A redis-server and pushsvc nodes (real ``twistd`` children) on it."""

    timeout = 120

    async def start_nodes(self, workers: int, names=("a", "b"), config_text: str = "",
                          shards: int = 1) -> None:
        """A redis-server (``shards`` of them: ``self.shards``, the first is
        ``self.redis``) and nodes ``names`` on it; ``config_text`` ends
        their config file."""
        self.shards = [RedisServer(self) for _ in range(shards)]
        for server in self.shards:
            await server.start()
        self.redis = self.shards[0]
        await self.spawn_nodes(" ".join(server.url for server in self.shards), workers, names,
                               config_text)
        # every engine of every node registered: commands wait for them all
        engines = len(names) * max(workers, 1)
        await eventually(lambda: self.redis.call("ZCARD", "pushsvc:_members") == engines,
                         20, "every engine registered")
        # ... and each has beaten since, so each knows them all (an engine
        # learns the members at its heartbeat; one that knows fewer would not
        # wait for the others after an outage: a member's score is the time
        # its registration expires, so since T means a score >= T + ttl)
        seconds, micros = self.redis.call("TIME")
        since = int(seconds) * 1000 + int(micros) // 1000 + int(MISSED_BEATS * HEARTBEAT * 1000)
        await eventually(lambda: len(self.redis.call(
            "ZRANGEBYSCORE", "pushsvc:_members", since, "+inf")) == engines,
            20, "every engine has learned the others")
        for name in names:  # each answers for all
            status, body = await self.on(name, "GET", "/api/stats")
            self.assertEqual(len(body["workers"]), engines, body)

    async def spawn_nodes(self, url: str, workers: int, names, config_text: str,
                          healthy_within: float = 20.0) -> None:
        """Nodes ``names`` of ``workers`` workers on Redis ``url``, once
        healthy; ``config_text`` ends their config file's [redis] table."""
        config = os.path.join(self.cwd, "pushsvc.toml")
        with open(config, "w") as f:  # quick heartbeats: quick to see who is back
            f.write(f"[redis]\nheartbeat = {HEARTBEAT}\ntimeout = 2.0\n" + config_text)
        self.nodes = {}
        for name in names:
            port = free_port()
            child = self.spawn("twistd", "--workers", str(workers), "--redis", url,
                               "--node", name, "--port", str(port), "--admin", "",
                               "--config", config)
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 1  # one worker per node takes every push
            self.addCleanup(pool.closeCachedConnections)
            self.nodes[name] = Node(name, port, child, Agent(reactor, pool=pool))
        for node in self.nodes.values():
            await self.wait_healthy(node, healthy_within)

    async def wait_healthy(self, node: "Node", timeout: float = 20.0) -> dict:
        """Poll /healthz until it answers 200 (503 while Redis is not there)."""
        deadline = reactor.seconds() + timeout
        while True:
            if node.child.done:
                self.fail(f"node {node.name} exited with {node.child.status}:\n"
                          f"{node.child.output()}")
            try:
                status, body = await self.on(node.name, "GET", "/healthz")
                if status == 200:
                    return body
            except ConnectError:
                pass
            if reactor.seconds() > deadline:
                self.fail(f"node {node.name} not healthy after {timeout} s:\n"
                          f"{node.child.output()}")
            await deferLater(reactor, 0.05, lambda: None)

    async def on(self, name: str, method: str, path: str, body=None):
        """One HTTP request to node ``name``: (status, JSON body)."""
        node = self.nodes[name]
        self.use_port(node.port)
        self.agent = node.agent
        return await self.http(method, path, body)

    async def client_on(self, name: str, user: str | None = None, groups=()):
        self.use_port(self.nodes[name].port)
        return await self.client(user, tuple(groups))

    async def push_on(self, name: str, to, data="x") -> str:
        status, body = await self.on(name, "POST", "/api/push", {"to": to, "data": data})
        self.assertEqual(status, 202, body)
        return body["id"]

    async def settle(self, clients, expected: dict) -> None:
        """Every client has exactly its ``expected`` message ids, in order: a
        last broadcast through node a is the last thing each one gets."""
        last = await self.push_on("a", {"all": True}, "sentinel")
        await eventually(lambda: all(c.messages and c.messages[-1]["id"] == last
                                     for c in clients), 10, "the sentinel everywhere")
        for c in clients:
            self.assertEqual([m["id"] for m in c.messages[:-1]], expected.get(c, []),
                             f"messages of {c.session}")
            del c.messages[:]


@dataclass
class Node:
    name: str
    port: int
    child: Any
    agent: Any


class TwoNodeTests(NodesTestCase):

    @run
    async def test_every_address_kind_reaches_each_session_once_across_nodes(self):
        await self.start_nodes(workers=2)
        clients = {}
        for name in ("a", "b"):
            for i in range(4):
                clients[f"{name}{i}"] = await self.client_on(name, f"{name}{i}", ["g"])
            clients[f"{name}-both"] = await self.client_on(name, "both")
        everyone = list(clients.values())
        self.assertEqual({owner(c.session)[0] for c in everyone}, {"a", "b"})
        expected: dict = {c: [] for c in everyone}

        b0 = clients["b0"]
        expected[b0].append(await self.push_on("a", {"session": b0.session}))
        msg = await self.push_on("a", {"user": "both"})
        for c in (clients["a-both"], clients["b-both"]):
            expected[c].append(msg)
        in_g = [c for key, c in clients.items() if "both" not in key]
        msg = await self.push_on("a", {"group": "g"})
        for c in in_g:
            expected[c].append(msg)
        msg = await self.push_on("a", {"all": True})
        for c in everyone:
            expected[c].append(msg)
        msg = await self.push_on("a", {"group": "g", "user": ["both", "b1"]})
        for c in everyone:  # on three channels at once, still once each
            expected[c].append(msg)
        self.assertEqual(await self.on("a", "POST", "/api/tag", {"user": "b1", "tag": "t"}),
                         (200, {"sessions": 1}))
        msg = await self.push_on("a", {"tag": "t"})
        expected[clients["b1"]].append(msg)
        await self.settle(everyone, expected)

        # and the other way: a push entering node b reaches node a
        msg = await self.push_on("b", {"user": "a2"})
        await eventually(lambda: clients["a2"].messages, 10, "b's push on a")
        await self.settle(everyone, {clients["a2"]: [msg]})

        # a client's send crosses too (the policy lets members send to their groups)
        sent = (await clients["b3"].request("send", to={"group": "g"}, data="hi"))["id"]
        await eventually(lambda: all(c.messages for c in in_g), 10, "the send")
        await self.settle(everyone, {c: [sent] for c in in_g})

    @run
    async def test_commands_and_presence_answer_for_the_cluster(self):
        await self.start_nodes(workers=2)
        bobs = [await self.client_on("b", "bob"), await self.client_on("b", "bob"),
                await self.client_on("a", "bob")]
        carol = await self.client_on("a", "carol")
        status, body = await self.on("a", "GET", "/api/stats")
        self.assertEqual([w["worker"] for w in body["workers"]], ["a.0", "a.1", "b.0", "b.1"])
        self.assertEqual(body["sessions"], 4)

        self.assertEqual(await self.on("a", "POST", "/api/join", {"user": "bob", "group": "g"}),
                         (200, {"sessions": 3, "refused": 0}))
        await eventually(lambda: all(c.frames[-1] == {"op": "joined", "group": "g",
                                                      "reason": "server"} for c in bobs))
        status, body = await self.on("b", "GET", "/api/groups/g")
        self.assertEqual(sorted(m["session"] for m in body["members"]),
                         sorted(c.session for c in bobs))
        status, body = await self.on("a", "GET", "/api/users/bob")
        self.assertEqual((body["online"], sorted(s["session"] for s in body["sessions"])),
                         (True, sorted(c.session for c in bobs)))
        self.assertEqual((await self.on("b", "GET", "/api/groups"))[1], {"groups": {"g": 3}})

        self.assertEqual(await self.on("a", "POST", "/api/leave",
                                       {"session": bobs[0].session, "group": "g"}),
                         (200, {"sessions": 1}))
        await eventually(lambda: bobs[0].frames[-1]["op"] == "left")
        msg = await self.push_on("a", {"group": "g"})
        await self.settle(bobs + [carol], {bobs[1]: [msg], bobs[2]: [msg]})

        self.assertEqual(await self.on("b", "POST", "/api/destroy", {"group": "g"}),
                         (200, {"sessions": 2}))
        await eventually(lambda: all(c.frames[-1] == {"op": "left", "group": "g",
                                                      "reason": "destroyed"}
                                     for c in bobs[1:]))
        self.assertEqual(await self.on("a", "GET", "/api/groups"), (200, {"groups": {}}))

        self.assertEqual(await self.on("a", "POST", "/api/kick", {"user": "bob", "reason": "bye"}),
                         (200, {"sessions": 3}))
        for c in bobs:
            self.assertEqual(await c.closed, (4000, "bye"))
        status, body = await self.on("b", "GET", "/api/users/bob")
        self.assertEqual(body["online"], False)
        self.assertEqual((await self.on("b", "GET", "/api/users/carol"))[1]["online"], True)


class RedisFaultTests(NodesTestCase):

    @run
    async def test_nodes_ride_out_redis_going_away(self):
        await self.start_nodes(workers=0)
        ca = await self.client_on("a", "ann", ["g"])
        cb = await self.client_on("b", "ben", ["g"])
        before = await self.push_on("a", {"group": "g"})
        await self.settle([ca, cb], {ca: [before], cb: [before]})

        await self.redis.stop()
        for name in ("a", "b"):
            status, body = await self.degraded(name)
            self.assertEqual(status, 503)
            self.assertEqual(body["status"], "degraded")
            self.assertTrue(body["reason"].startswith("redis unavailable: "), body)
        # local delivery goes on, and so do subscriptions (at once)
        during = await self.push_on("a", {"group": "g"})
        await eventually(lambda: [m["id"] for m in ca.messages] == [during], 5,
                         "local delivery")
        ch = await self.client_on("a", "hal", ["h"])
        self.assertEqual(cb.messages, [])

        await self.redis.start()
        for node in self.nodes.values():
            await self.wait_healthy(node)
        # the message kept while Redis was away reaches b once b is back
        try:
            await eventually(lambda: [m["id"] for m in cb.messages] == [during], 10,
                             "the kept message on b")
        except AssertionError as e:
            self.fail(f"{e}; node a:\n{self.nodes['a'].child.output()}\nnode b:\n"
                      f"{self.nodes['b'].child.output()}")
        del ca.messages[:], cb.messages[:]
        # b's pushes reach a again, on channels subscribed before and during the outage
        to_g = await self.push_on("b", {"group": "g"})
        to_h = await self.push_on("b", {"group": "h"})
        await eventually(lambda: [m["id"] for m in ca.messages] == [to_g]
                         and [m["id"] for m in ch.messages] == [to_h], 10, "a hears b")
        await eventually(lambda: [m["id"] for m in cb.messages] == [to_g], 5, "b itself")
        for node in self.nodes.values():
            out = node.child.output()
            self.assertEqual(out.count("redis unavailable:"), 1, out)
            self.assertEqual(out.count("redis is back after"), 1, out)
            self.assertIn("reconnecting with backoff", out)

    async def degraded(self, name: str):
        deadline = reactor.seconds() + 10
        while True:
            status, body = await self.on(name, "GET", "/healthz")
            if status != 200 or reactor.seconds() > deadline:
                return status, body
            await deferLater(reactor, 0.05, lambda: None)

    @run
    async def test_a_second_node_with_the_same_name_stops(self):
        await self.start_nodes(workers=0, names=("a",))
        config = os.path.join(self.cwd, "pushsvc.toml")
        twin = self.spawn("twistd", "--workers", "0", "--redis", self.redis.url, "--node", "a",
                          "--port", str(free_port()), "--admin", "", "--config", config)
        await self.wait_exit(twin)
        self.assertIn("another pushsvc node", twin.output())
        self.assertIn("runs with the node name 'a'", twin.output())
        self.assertIn("give each node its own --node", twin.output())
        self.assertFalse(self.nodes["a"].child.done)
        self.assertEqual((await self.on("a", "GET", "/api/stats"))[1]["workers"][0]["worker"],
                         "a.0")
