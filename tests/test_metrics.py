"""``GET /metrics`` (one process, a pool of 2 workers), the values behind it,
the log's JSON format and the fields of error events, and the demotion of
per-connection lines to debug."""

from __future__ import annotations

import json
import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from prometheus_client.parser import text_string_to_metric_families

from pushsvc import loglevel, metrics
from pushsvc.control import LocalControl
from pushsvc.protocol import Address

from .helpers import ChildTestCase, eventually, free_port, run, settings
from .test_pool import PoolTestCase


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class MetricsTestCase(PoolTestCase):
    async def scrape(self, headers: dict[str, str] | None = None,
                     status: int = 200) -> dict:
        """GET /metrics: its samples (and the answer's content type in ``self.type``)."""
        hdrs = Headers({k: [v] for k, v in (headers or {}).items()})
        response = await (self.agent or Agent(reactor)).request(
            b"GET", (self.base + "/metrics").encode(), hdrs)
        body = (await readBody(response)).decode()
        self.assertEqual(response.code, status, body)
        self.type = response.headers.getRawHeaders(b"content-type")[0].decode()
        return samples(body) if status == 200 else json.loads(body)

    def check(self, found: dict, name: str, value: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.assertIn(key, found, sorted(k for k in found if k[0] == name))
        self.assertEqual(found[key], value, key)

    async def traffic(self, clients, group: str = "g", count: int = 3) -> list[str]:
        """``count`` pushes to ``group`` (every client is in it), all delivered."""
        ids = [await self.push({"group": group}, {"n": n}) for n in range(count)]
        await eventually(lambda: all(len(c.messages) >= count for c in clients),
                         what=f"{count} messages at every client")
        return ids


class OneProcessTests(MetricsTestCase):
    """``--workers 0``: the one process answers for itself."""

    @run
    async def test_figures(self):
        self.start_server()
        clients = [await self.client(f"u{i}" if i < 2 else None, groups=("g",))
                   for i in range(3)]
        await self.traffic(clients)
        await self.push({"user": "u0"}, "to u0")
        await clients[0].wait_for_messages(4)
        await clients[2].request("send", to={"group": "g"}, data="hi")
        await eventually(lambda: len(clients[0].messages) == 5
                         and all(len(c.messages) == 4 for c in clients[1:]))

        found = await self.scrape()
        self.assertTrue(self.type.startswith("text/plain"), self.type)
        self.check(found, "pushsvc_workers", 1)
        self.check(found, "pushsvc_connections", 3)
        self.check(found, "pushsvc_sessions", 2, state="authenticated")
        self.check(found, "pushsvc_sessions", 1, state="anonymous")
        self.check(found, "pushsvc_connections_opened_total", 3)
        self.check(found, "pushsvc_messages_in_total", 4, kind="group")
        self.check(found, "pushsvc_messages_in_total", 1, kind="user")
        self.check(found, "pushsvc_messages_in_total", 0, kind="all")
        self.check(found, "pushsvc_messages_out_total", 12, kind="group")
        self.check(found, "pushsvc_messages_out_total", 1, kind="user")
        self.check(found, "pushsvc_client_messages_total", 1)
        self.check(found, "pushsvc_worker_restarts_total", 0)
        # Each client got its welcome, two oks (auth, join) or one, and its messages.
        frames = sum(len(json.dumps(f, separators=(",", ":"))) for c in clients
                     for f in c.frames)
        self.assertGreaterEqual(found[("pushsvc_bytes_sent_total", ())], frames)
        self.assertGreater(found[("pushsvc_bytes_received_total", ())], 0)
        self.assertNotIn(("pushsvc_hub_round_trip_seconds_count", ()), found)

    @run
    async def test_drops_and_reloads(self):
        self.start_server(max_message_bytes=100)
        c = await self.client()
        c.sendMessage(b'{"op":"ping","pad":"' + b"x" * 200 + b'"}')
        await c.closed
        self.assertEqual(c.close_code, 1009)
        control = LocalControl(self.server)
        await control.reload()
        found = await self.scrape()
        self.check(found, "pushsvc_dropped_total", 1, cause="too_large")
        self.check(found, "pushsvc_dropped_total", 0, cause="slow_reader")
        self.check(found, "pushsvc_connections", 0)
        self.check(found, "pushsvc_reloads_total", 1, result="ok")
        self.check(found, "pushsvc_reloads_total", 0, result="failed")

    @run
    async def test_api_keys(self):
        """With API keys, /metrics needs one: a read key is enough."""
        self.start_server(api_keys=["writer"], api_read_keys=["reader"])
        body = await self.scrape(status=401)
        self.assertEqual(body["error"]["code"], "unauthorized")
        await self.scrape({"Authorization": "Bearer wrong"}, status=401)
        for key in ("reader", "writer"):
            found = await self.scrape({"Authorization": f"Bearer {key}"})
            self.check(found, "pushsvc_workers", 1)
        status, _ = await self.http("POST", "/metrics", {},
                                    headers={"Authorization": "Bearer writer"})
        self.assertEqual(status, 405)

    @run
    async def test_openmetrics_when_asked(self):
        self.start_server()
        await self.scrape({"Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertTrue(self.type.startswith("application/openmetrics-text"), self.type)


class RedisMetricsTests(MetricsTestCase):
    @run
    async def test_redis_round_trips(self):
        """With --redis, the calls to Redis are timed (the heartbeat's at least)."""
        from tests.redis_helpers import RedisServer
        redis = RedisServer(self)
        await redis.start()
        self.start_server(redis=redis.url, redis_heartbeat=0.1)
        trips = self.engine.meter.round_trips  # made at the first observation
        await eventually(lambda: "redis" in trips and trips["redis"].count >= 2,
                         what="two calls to redis timed")
        found = await self.scrape()
        self.assertGreaterEqual(found[("pushsvc_redis_round_trip_seconds_count", ())], 2)
        self.assertGreater(found[("pushsvc_redis_round_trip_seconds_sum", ())], 0)


class PoolMetricsTests(MetricsTestCase):
    """A pool of 2 workers: whichever worker serves /metrics answers for both."""

    @run
    async def test_summed_over_the_workers(self):
        await self.start_pool(2)
        clients, by_worker = await self.spread_clients(20, groups=("g",))
        self.assertEqual(len(by_worker), 2)
        for c in clients[:10]:
            await c.request("auth", user=f"u{clients.index(c)}")
        await self.traffic(clients, count=3)

        found = await self.scrape()
        self.check(found, "pushsvc_workers", 2)
        self.check(found, "pushsvc_connections", 20)
        self.check(found, "pushsvc_sessions", 10, state="authenticated")
        self.check(found, "pushsvc_sessions", 10, state="anonymous")
        self.check(found, "pushsvc_connections_opened_total", 20)
        self.check(found, "pushsvc_messages_in_total", 3, kind="group")
        self.check(found, "pushsvc_messages_out_total", 60, kind="group")
        self.assertGreater(found[("pushsvc_bytes_sent_total", ())], 60 * 30)
        # The master timed its Perform to each worker for this very scrape.
        self.assertGreaterEqual(found[("pushsvc_hub_round_trip_seconds_count", ())], 2)
        self.assertEqual(found[("pushsvc_hub_round_trip_seconds_bucket", (("le", "+Inf"),))],
                         found[("pushsvc_hub_round_trip_seconds_count", ())])

        # A worker killed: one restart; its counts stay in the sums.
        victim = self.pool.workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        await eventually(lambda: self.pool.restarts == 1 and len(self.pool.ready) == 2
                         and self.pool.workers[0] is not victim, 20, "the restart")
        found = await self.scrape()
        self.check(found, "pushsvc_worker_restarts_total", 1)
        self.check(found, "pushsvc_workers", 2)
        self.check(found, "pushsvc_messages_out_total", 60, kind="group")
        self.check(found, "pushsvc_connections_opened_total", 20)
        survivors = [c for c in clients if not c.session.startswith("test.0.")]
        await eventually(lambda: all(c.close_code is not None for c in clients
                                     if c not in survivors), what="the victim's clients gone")
        found = await self.scrape()
        self.check(found, "pushsvc_connections", len(survivors))

        # Reloads, counted by the master.
        results = await self.master.control.reload()
        self.assertTrue(all(r["ok"] for r in results), results)
        found = await self.scrape()
        self.check(found, "pushsvc_reloads_total", 1, result="ok")
        self.check(found, "pushsvc_reloads_total", 0, result="failed")


class ValueTests(unittest.TestCase):
    def test_address_kind(self):
        self.assertEqual([metrics.address_kind(a) for a in (
            Address(group=("g",)), Address(user=("a", "b")), Address(session=("s",)),
            Address(tag=("t",)), Address(all=True), Address(group=("g",), user=("u",)),
            Address(all=True, tag=("t",)))],
            ["group", "user", "session", "tag", "all", "mixed", "mixed"])

    def test_histograms_add_up_and_render_cumulative(self):
        a, b = metrics.Histogram(), metrics.Histogram()
        for seconds in (0.0002, 0.003, 0.003, 20.0):
            a.observe(seconds)
        b.observe(0.0009)
        values = metrics.machine_values([{"round_trips": {"redis": a.to_json()}},
                                         {"round_trips": {"redis": b.to_json()}}],
                                        workers=1)
        body, content_type = metrics.render(values)
        found = samples(body.decode())
        count = ("pushsvc_redis_round_trip_seconds_count", ())
        self.assertEqual(found[count], 5)
        bucket = lambda le: found[("pushsvc_redis_round_trip_seconds_bucket",  # noqa: E731
                                   (("le", le),))]
        self.assertEqual([bucket(le) for le in ("0.0005", "0.001", "0.005", "10.0", "+Inf")],
                         [1, 2, 4, 4, 5])
        self.assertAlmostEqual(found[("pushsvc_redis_round_trip_seconds_sum", ())], 20.0071)

    def test_redis_broker_times_its_calls(self):
        from pushsvc.broker.redis import RedisBroker
        broker = RedisBroker(settings(redis="redis://127.0.0.1:1"), "test.0", reactor)
        meter = metrics.Meter()
        broker.timed(meter.round_trip("redis"))

        class Commands:
            def eval(self, script, keys, args):
                return succeed(1)
        broker._cmd.protocol = Commands()
        broker._context.eval("return 1", [], [])
        self.assertEqual(meter.round_trips["redis"].count, 1)

    def test_ended_workers_keep_their_counts_not_their_levels(self):
        ended = metrics.counts_only({"connections": 5, "sessions": {"anonymous": 5},
                                     "messages_out": {"all": 7}})
        self.assertEqual(ended, {"messages_out": {"all": 7}})
        live = {"connections": 2, "sessions": {"anonymous": 2}, "messages_out": {"all": 1}}
        self.assertEqual(metrics.machine_values([ended, live]),
                         {"connections": 2, "sessions": {"anonymous": 2},
                          "messages_out": {"all": 8}})


# -- logs ---------------------------------------------------------------------------

FAILING_APP = '''
def on_message(session, api, to, data):
    raise RuntimeError("the hook broke")
'''


class LogTests(unittest.TestCase):
    def setUp(self):
        self.addCleanup(loglevel.set_level, loglevel.current())

    def test_per_connection_lines_are_debug(self):
        seen: list[dict] = []
        log = Logger(namespace="twisted.protocols.amp", observer=loglevel.filtered(seen.append))
        loglevel.set_level("info")
        log.info("{cls} connection established (HOST:{host} PEER:{peer})",
                 cls="AdminProtocol", host="h", peer="p")
        Logger(namespace="twisted.web.http.HTTPChannel", observer=loglevel.filtered(
            seen.append)).info("Timing out client: {peer}", peer="IPv4Address(...)")
        Logger(namespace="autobahn.twisted.websocket.WebSocketServerProtocol",
               observer=loglevel.filtered(seen.append)).warn(
            'failing WebSocket connection (code={code}): "{reason}"', code=1009, reason="big")
        log.info("something else")
        self.assertEqual([e["log_format"] for e in seen], ["something else"])
        loglevel.set_level("debug")
        log.info("{cls} connection lost (HOST:{host} PEER:{peer})", cls="X", host=1, peer=2)
        self.assertEqual(seen[-1]["log_level"], LogLevel.debug)

    def test_json_line(self):
        events: list[dict] = []
        log = Logger(namespace="pushsvc.test", observer=events.append)
        log.info("hello {who}", who="you", data=b"\xff", odd=object())
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it broke for session {session}", session="s1", user="u1")
        first, second = (json.loads(loglevel.json_line(e, {"worker": 0})) for e in events)
        self.assertEqual((first["level"], first["namespace"], first["text"], first["who"],
                          first["worker"], first["data"]),
                         ("info", "pushsvc.test", "hello you", "you", 0, "\ufffd"))
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        self.assertIn("object object", first["odd"])
        self.assertEqual((second["level"], second["session"], second["user"]),
                         ("critical", "s1", "u1"))
        self.assertIn("ZeroDivisionError", second["traceback"])
        # A worker's event as the master re-emits it: its own text, no "index".
        relayed = json.loads(loglevel.json_line(
            {"log_format": loglevel.RELAYED, "log_level": LogLevel.warn, "log_time": 0,
             "log_namespace": "pushsvc.x", "index": 1, "worker": 1, "text": "hi"}))
        self.assertEqual((relayed["text"], relayed["worker"]), ("hi", 1))
        self.assertNotIn("index", relayed)


    def test_json_under_twist_and_twistd(self):
        """--log-format json: twist's log file observer and twistd's --logfile
        both write JSON lines, behind the level filter."""
        import io
        from twisted.application.service import Application, Service
        from twisted.logger import ILogObserver
        out = io.StringIO()
        runner = {"fileLogObserverFactory": lambda f: None}
        service = Service()
        self.assertIs(loglevel.under_runner(service, runner, "json"), service)
        observer = runner["fileLogObserverFactory"](out)
        loglevel.set_level("info")
        Logger(namespace="x", observer=observer).debug("hidden")
        Logger(namespace="x", observer=observer).info("shown {n}", n=1)
        self.assertEqual([(line["text"], line["n"]) for line in map(
            json.loads, out.getvalue().splitlines())], [("shown 1", 1)])

        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        path = os.path.abspath(self.mktemp())
        application = Application("pushsvc")
        loglevel.under_runner(Service(), {"logfile": path, "nodaemon": True}, "json",
                              {"worker": 0}).setServiceParent(application)
        Logger(namespace="x", observer=application.getComponent(ILogObserver)).warn("w")
        with open(path) as f:
            [line] = map(json.loads, f)
        self.assertEqual((line["level"], line["text"], line["worker"]), ("warn", "w", 0))

class OneProcessLogTests(MetricsTestCase):
    @run
    async def test_hook_error_carries_session_user_and_worker(self):
        """One process: the failure of a hook has the session and the user,
        and its JSON line says worker 0 (as tap.makeService sets it)."""
        path = os.path.abspath(self.mktemp() + ".py")
        with open(path, "w") as f:
            f.write(FAILING_APP)
        self.start_server(app=path)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        c = await self.client("alice", groups=("g",))
        reply = c.request("send", to={"group": "g"}, data="x")
        await eventually(lambda: any(e.get("log_failure") for e in events))
        self.flushLoggedErrors(RuntimeError)
        reply.addErrback(lambda f: None)
        [event] = [e for e in events if e.get("log_failure")]
        line = json.loads(loglevel.json_line(event, {"worker": 0}))
        self.assertEqual((line["session"], line["user"], line["worker"], line["hook"]),
                         (c.session, "alice", 0, "on_message"))
        self.assertIn("RuntimeError: the hook broke", line["traceback"])


class JsonLogTests(ChildTestCase):
    """The real ``twistd -n pushsvc --workers 2 --log-format json``."""

    @run
    async def test_every_line_is_json_and_worker_lines_say_which(self):
        with open(os.path.join(self.cwd, "app.py"), "w") as f:
            f.write(FAILING_APP)
        port = free_port()
        child = self.spawn("twistd", "--workers", "2", "--port", str(port),
                           "--log-format", "json", "--app", "app.py")
        await self.wait_serving(child, port, workers=2)
        c = await self.client("bob", groups=("g",))
        reply = c.request("send", to={"group": "g"}, data="x")
        error = await reply.addErrback(lambda f: f.value)
        self.assertEqual(error.code, "internal")
        await eventually(lambda: b"the hook broke" in child.stdout, what="the error logged")
        await eventually(lambda: os.path.exists(os.path.join(self.cwd, "pushsvc-admin.sock")))
        child.transport.signalProcess("TERM")
        self.assertEqual(await self.wait_exit(child), 0, child.output())

        lines = [json.loads(line) for line in child.stdout.decode().splitlines() if line]
        for line in lines:
            self.assertLessEqual({"time", "level", "namespace", "text"}, set(line), line)
        listening = [line for line in lines if line["text"].startswith("listening on inherited")]
        self.assertEqual(sorted(line["worker"] for line in listening), [0, 1])
        [error] = [line for line in lines if "traceback" in line]
        self.assertEqual((error["level"], error["session"], error["user"], error["hook"]),
                         ("critical", c.session, "bob", "on_message"))
        self.assertIn(error["worker"], (0, 1))
        self.assertEqual(c.session.split(".")[1], str(error["worker"]))
        self.assertIn("RuntimeError: the hook broke", error["traceback"])
        # No per-connection lines at info: the workers' pipes and the like.
        self.assertEqual([line["text"] for line in lines if "connection established" in
                          line["text"] or "connection lost" in line["text"]], [])
