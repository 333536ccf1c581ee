"""Pusher webhooks (pusher/webhooks.py, pusher/webhook_sender.py): every
request goes to a real twisted.web receiver on 127.0.0.1 and is checked with
the official SDK's ``validate_webhook``.  The sender alone (its windows and
retries on a Clock): batching, the events each URL asks for, retries, the
bounds.  Then the server: each event type from a Pusher connection on one
process (with and without Redis), and channel_occupied/vacated on a pool
of two workers (decided by the hub; with Redis, by the workers in Redis).  Across Redis nodes:
test_pusher_webhooks_redis."""

from __future__ import annotations

import json

import pusher
from twisted.internet import reactor, task
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pushsvc.ids import owner
from pushsvc.keeper import SubscriptionTable
from pushsvc.metrics import local_values, render
from pushsvc.pusher.apps import Apps, check_apps
from pushsvc.pusher.events import webhook_event
from pushsvc.pusher.signatures import channel_auth
from pushsvc.pusher.webhook_sender import WebhookSender, watch_occupancy
from pushsvc.pusher.webhooks import RETRY_DELAYS, WINDOW, Destination, occupancy
from tests.helpers import ServerTestCase, eventually, free_port, run
from tests.raw import connect_raw, handshake, text
from tests.redis_helpers import RedisServer
from tests.test_pool import PoolTestCase
from tests.test_pusher_http import pusher_overrides

ALL = ["channel_occupied", "channel_vacated", "member_added", "member_removed",
       "client_event"]


class Receiver(Resource):
    """A webhook endpoint: records each request; answers ``statuses`` in
    turn, then 200; with ``hold``, answers nothing until ``release``."""
    isLeaf = True

    def __init__(self, statuses=()):
        super().__init__()
        self.statuses = list(statuses)
        self.requests: list[tuple[bytes, dict, bytes]] = []  # (path, headers, body)
        self.hold = False
        self.held: list = []

    def render_POST(self, request):
        body = request.content.read()
        headers = {name: request.getHeader(name) for name in
                   ("x-pusher-key", "x-pusher-signature", "content-type")}
        self.requests.append((request.path, headers, body))
        request.setResponseCode(self.statuses.pop(0) if self.statuses else 200)
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return b"{}"

    def release(self):
        held, self.held = self.held, []
        for request in held:
            request.write(b"{}")
            request.finish()

    def events(self, path: bytes | None = None) -> list[dict]:
        return [e for p, _, body in self.requests if path in (None, p)
                for e in json.loads(body)["events"]]


def listen(test, receiver: Receiver) -> str:
    """Serve ``receiver`` on 127.0.0.1, port 0; its base URL."""
    site = Site(receiver)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


def validated(app: dict, headers: dict, body: bytes) -> dict:
    """The body as the official SDK's validate_webhook reads it (None: refused)."""
    client = pusher.Pusher(app_id=app["id"], key=app["key"], secret=app["secret"])
    return client.validate_webhook(headers["x-pusher-key"], headers["x-pusher-signature"],
                                   body)


class CoreTests(unittest.TestCase):
    """The rules without I/O."""

    def test_occupancy_maps_a_keeper_channel_to_its_app(self):
        apps = Apps(check_apps([{"id": "1001", "key": "k", "secret": "s"}]))
        app, event = occupancy(apps, "group:pusher.1001:chat", True)
        self.assertEqual((app.id, event), ("1001", {"name": "channel_occupied",
                                                    "channel": "chat"}))
        self.assertEqual(occupancy(apps, "group:pusher.1001:chat", False)[1]["name"],
                         "channel_vacated")
        for other in ("group:lobby", "user:pusher.1001:chat", "group:pusher.9:chat"):
            self.assertIsNone(occupancy(apps, other, True))

    def test_a_destination_batches_bounds_and_backs_off(self):
        dest = Destination("1", "http://x", max_queued=3, max_batch=2)
        self.assertEqual([dest.add({"n": i}) for i in range(4)], [True, True, True, False])
        self.assertEqual(json.loads(dest.take(7)), {"time_ms": 7,
                                                    "events": [{"n": 0}, {"n": 1}]})
        self.assertEqual([dest.failed() for _ in RETRY_DELAYS], list(RETRY_DELAYS))
        self.assertIsNone(dest.failed())  # given up
        self.assertIsNone(dest.body)
        self.assertEqual(dest.recovered(), 1)
        self.assertEqual(dest.recovered(), 0)

    def test_the_table_watches_first_and_last_subscribers(self):
        """Occupied at a channel's first subscriber, vacated at its last
        (a worker's removal too), once each."""
        table, seen = SubscriptionTable(), []
        table.watcher = lambda channel, occupied: seen.append((channel, occupied))
        table.subscribe("a", ["group:g"])
        table.subscribe("b", ["group:g"])
        table.unsubscribe("a", ["group:g"])
        table.remove_worker("b")
        self.assertEqual(seen, [("group:g", True), ("group:g", False)])


class SenderTests(unittest.TestCase):
    """WebhookSender against a real receiver; its timers on a Clock."""

    def sender(self, hooks, statuses=(), **kw):
        self.receiver = Receiver(statuses)
        base = listen(self, self.receiver)
        self.app = {"id": "1001", "key": "app-key", "secret": "app-secret",
                    "webhooks": [{"url": base + path, "events": events}
                                 for path, events in hooks]}
        apps = Apps(check_apps([self.app]))
        self.clock = task.Clock()
        sender = WebhookSender(reactor, lambda: apps, clock=self.clock, **kw)
        self.addCleanup(sender.close)
        return sender, apps.by_id("1001")

    def requests(self, n: int):
        return eventually(lambda: len(self.receiver.requests) >= n, 10,
                          f"{n} webhook requests")

    @run
    async def test_each_event_type_signed_as_the_sdk_checks(self):
        sender, app = self.sender([("/hook", ALL)])
        events = [webhook_event("channel_occupied", "presence-p"),
                  webhook_event("member_added", "presence-p", user_id="ann"),
                  webhook_event("client_event", "presence-p", event="client-x",
                                data='{"a":1}', socket_id="1.2", user_id="ann"),
                  webhook_event("member_removed", "presence-p", user_id="ann"),
                  webhook_event("channel_vacated", "presence-p")]
        for event in events:
            sender.emit(app, event)
        self.clock.advance(WINDOW)
        await self.requests(1)
        path, headers, body = self.receiver.requests[0]
        self.assertEqual((headers["x-pusher-key"], headers["content-type"]),
                         ("app-key", "application/json"))
        got = validated(self.app, headers, body)
        self.assertIsNotNone(got, "validate_webhook refused it")
        self.assertEqual(got["events"], events)
        self.assertIsNone(validated({**self.app, "secret": "other"}, headers, body))
        await eventually(lambda: sender.counters["webhook_sent"] == 5)

    @run
    async def test_a_window_is_one_request_and_a_batch_holds_at_most_100(self):
        sender, app = self.sender([("/hook", ALL)])
        for i in range(150):
            sender.emit(app, webhook_event("channel_occupied", f"c{i}"))
        self.clock.advance(WINDOW - 0.01)
        await deferLater(reactor, 0.05)
        self.assertEqual(self.receiver.requests, [])  # still gathering
        self.clock.advance(0.01)
        await self.requests(1)
        self.assertEqual(len(self.receiver.events()), 100)
        await eventually(lambda: sender.counters["webhook_sent"] == 100)
        self.clock.advance(0)  # the rest has waited its window: it goes at once
        await self.requests(2)
        self.assertEqual([e["channel"] for e in self.receiver.events()],
                         [f"c{i}" for i in range(150)])
        await eventually(lambda: sender.counters["webhook_sent"] == 150)

    @run
    async def test_each_url_gets_the_events_it_lists(self):
        sender, app = self.sender([("/rooms", ["channel_occupied", "channel_vacated"]),
                                   ("/chat", ["client_event"])])
        sender.emit(app, webhook_event("channel_occupied", "c"))
        sender.emit(app, webhook_event("member_added", "c", user_id="u"))  # nobody's
        sender.emit(app, webhook_event("client_event", "c", event="client-e", data="d",
                                       socket_id="1.1"))
        self.clock.advance(WINDOW)
        await self.requests(2)
        self.assertEqual([e["name"] for e in self.receiver.events(b"/rooms")],
                         ["channel_occupied"])
        self.assertEqual([e["name"] for e in self.receiver.events(b"/chat")],
                         ["client_event"])
        await eventually(lambda: sender.counters["webhook_sent"] == 2)  # answers in

    @run
    async def test_a_failing_receiver_is_retried_with_backoff_then_succeeds(self):
        """500, then 503, then 200: the same body three times, after 1 s
        then 2 s; counted once sent, twice retried."""
        sender, app = self.sender([("/hook", ALL)], statuses=[500, 503])
        sender.emit(app, webhook_event("channel_occupied", "c"))
        self.clock.advance(WINDOW)
        await self.requests(1)
        await eventually(lambda: sender.counters["webhook_retried"] == 1)
        self.clock.advance(RETRY_DELAYS[0] - 0.01)
        await deferLater(reactor, 0.05)
        self.assertEqual(len(self.receiver.requests), 1)  # backing off
        self.clock.advance(0.01)
        await self.requests(2)
        await eventually(lambda: sender.counters["webhook_retried"] == 2)
        self.clock.advance(RETRY_DELAYS[1])
        await self.requests(3)
        await eventually(lambda: sender.counters["webhook_sent"] == 1)
        self.assertEqual(len({body for _, _, body in self.receiver.requests}), 1)
        self.assertIsNotNone(validated(self.app, *self.receiver.requests[2][1:]))

    @run
    async def test_a_batch_is_given_up_after_its_retries(self):
        sender, app = self.sender([("/hook", ALL)], statuses=[500] * 10)
        sender.emit(app, webhook_event("channel_occupied", "c"))
        self.clock.advance(WINDOW)
        for attempt, delay in enumerate(RETRY_DELAYS, 1):
            await eventually(lambda: sender.counters["webhook_retried"] == attempt)
            self.clock.advance(delay)
        await eventually(lambda: sender.counters["webhook_failed"] == 1)
        self.assertEqual(len(self.receiver.requests), len(RETRY_DELAYS) + 1)

    @run
    async def test_a_full_queue_drops_counts_and_logs_once(self):
        """Over ``max_queued``: dropped and counted, one line when it starts
        dropping and one saying how many once the queue has room again."""
        lines: list[str] = []

        def observe(event):
            if "webhooks of app" in event.get("log_format", ""):
                lines.append(event["log_format"])
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        sender, app = self.sender([("/hook", ALL)], max_queued=2)
        for i in range(5):
            sender.emit(app, webhook_event("channel_occupied", f"c{i}"))
        self.assertEqual(sender.counters["webhook_dropped"], 3)
        self.assertEqual(len(lines), 1)
        self.clock.advance(WINDOW)
        await eventually(lambda: sender.counters["webhook_sent"] == 2)
        self.assertEqual([e["channel"] for e in self.receiver.events()], ["c0", "c1"])
        self.assertEqual(len(lines), 2)
        self.assertIn("were dropped", lines[1])

    @run
    async def test_requests_in_flight_are_capped(self):
        """With ``max_in_flight`` 1, a second URL's batch waits for the
        first request's answer."""
        sender, app = self.sender([("/a", ALL), ("/b", ALL)], max_in_flight=1)
        self.receiver.hold = True
        sender.emit(app, webhook_event("channel_occupied", "c"))
        self.clock.advance(WINDOW)
        await self.requests(1)
        await deferLater(reactor, 0.1)
        self.assertEqual((len(self.receiver.requests), sender.in_flight), (1, 1))
        self.receiver.hold = False
        self.receiver.release()
        await self.requests(2)
        await eventually(lambda: sender.counters["webhook_sent"] == 2)


class EdgeCaseTests(unittest.TestCase):
    """A URL nobody listens on, and a stop with events queued."""

    def sender(self, url):
        self.clock = task.Clock()
        apps = Apps(check_apps([{"id": "1001", "key": "k", "secret": "s",
                                 "webhooks": [{"url": url, "events": ALL}]}]))
        sender = WebhookSender(reactor, lambda: apps, clock=self.clock)
        self.addCleanup(sender.close)
        return sender, apps.by_id("1001")

    @run
    async def test_a_refused_connection_is_retried(self):
        sender, app = self.sender(f"http://127.0.0.1:{free_port()}/hook")
        sender.emit(app, webhook_event("channel_occupied", "c"))
        self.clock.advance(WINDOW)
        await eventually(lambda: sender.counters["webhook_retried"] == 1)
        self.assertEqual(sender.in_flight, 0)

    @run
    async def test_what_waits_at_the_stop_is_dropped_and_counted(self):
        sender, app = self.sender("http://127.0.0.1:9/hook")
        for name in ("channel_occupied", "channel_vacated"):
            sender.emit(app, webhook_event(name, "c"))
        await sender.close()
        self.assertEqual(sender.counters["webhook_dropped"], 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        sender.emit(app, webhook_event("channel_occupied", "c"))  # ignored
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReloadTests(unittest.TestCase):
    """The sender reads the apps at each request, as a reload leaves them."""

    @run
    async def test_a_new_secret_signs_and_a_removed_url_is_given_up(self):
        receiver = Receiver(statuses=[500])
        url = listen(self, receiver) + "/hook"
        table = {"id": "1001", "key": "k", "secret": "old",
                 "webhooks": [{"url": url, "events": ALL}]}
        current = [Apps(check_apps([table]))]
        clock = task.Clock()
        sender = WebhookSender(reactor, lambda: current[0], clock=clock)
        self.addCleanup(sender.close)
        sender.emit(current[0].by_id("1001"), webhook_event("channel_occupied", "c"))
        clock.advance(WINDOW)
        await eventually(lambda: sender.counters["webhook_retried"] == 1)
        new = {**table, "secret": "new"}
        current[0] = Apps(check_apps([new]))  # a reload, before the retry
        clock.advance(RETRY_DELAYS[0])
        await eventually(lambda: sender.counters["webhook_sent"] == 1)
        self.assertIsNotNone(validated(new, *receiver.requests[1][1:]))
        self.assertIsNone(validated(table, *receiver.requests[1][1:]))
        sender.emit(current[0].by_id("1001"), webhook_event("channel_vacated", "c"))
        current[0] = Apps(check_apps([{**new, "webhooks": []}]))
        clock.advance(WINDOW)
        self.assertEqual(sender.counters["webhook_failed"], 1)
        self.assertEqual(len(receiver.requests), 2)


class OneProcessTests(ServerTestCase):
    """A one-process server sends each event type, from a Pusher connection."""

    async def presence_flow(self, **overrides) -> tuple[Receiver, dict, str]:
        """A Pusher connection subscribes to presence-p as ann, sends a
        client event and unsubscribes; the receiver, the app and its socket id."""
        receiver = Receiver()
        app = {"id": "1001", "key": "app-key", "secret": "app-secret",
               "client_events": True,
               "webhooks": [{"url": listen(self, receiver) + "/hook", "events": ALL}]}
        self.start_server(**pusher_overrides([app]), **overrides)
        apps = Apps(check_apps([app]))
        client = await connect_raw(self.port, handshake("/app/app-key?protocol=7"))
        self.addCleanup(lambda: client.transport.loseConnection())

        def event(name):
            return [f for f in client.json_frames() if f.get("event") == name]
        await client.wait_for(lambda: event("pusher:connection_established"))
        socket_id = json.loads(event("pusher:connection_established")[0]["data"])["socket_id"]
        data = json.dumps({"user_id": "ann"})
        client.transport.write(text({"event": "pusher:subscribe", "data": {
            "channel": "presence-p", "channel_data": data,
            "auth": channel_auth(apps.by_id("1001"), socket_id, "presence-p", data)}}))
        await client.wait_for(lambda: event("pusher_internal:subscription_succeeded"))
        client.transport.write(text({"event": "client-typing", "channel": "presence-p",
                                     "data": {"on": True}}))
        await eventually(lambda: any(e["name"] == "client_event" for e in receiver.events()),
                         what="the client event's webhook")
        client.transport.write(text({"event": "pusher:unsubscribe",
                                     "data": {"channel": "presence-p"}}))
        await eventually(lambda: any(e["name"] == "member_removed"
                                     for e in receiver.events()), what="member_removed")
        await deferLater(reactor, 2 * WINDOW)  # nothing more comes
        for _, headers, body in receiver.requests:
            self.assertIsNotNone(validated(app, headers, body))
        await eventually(lambda: self.engine.counters["webhook_sent"] == len(
            receiver.events()), what="every answer in")
        return receiver, app, socket_id

    @run
    async def test_every_event_type_from_a_pusher_connection(self):
        receiver, app, socket_id = await self.presence_flow()
        self.assertEqual(receiver.events(), [
            {"name": "channel_occupied", "channel": "presence-p"},
            {"name": "member_added", "channel": "presence-p", "user_id": "ann"},
            {"name": "client_event", "channel": "presence-p", "event": "client-typing",
             "data": '{"on":true}', "socket_id": socket_id, "user_id": "ann"},
            # The keeper sees the channel empty at the leave; the member is
            # counted gone once the presence command has answered.
            {"name": "channel_vacated", "channel": "presence-p"},
            {"name": "member_removed", "channel": "presence-p", "user_id": "ann"}])
        exposition, _ = render(local_values(self.engine))
        self.assertIn(b'pushsvc_pusher_webhook_events_total{result="sent"} 5.0', exposition)

    @run
    async def test_with_redis_every_event_type_too(self):
        """With Redis, Redis decides occupied and vacated
        (broker/redis_occupancy.py; across nodes: test_pusher_webhooks_redis)."""
        redis = RedisServer(self)
        await redis.start()
        receiver, _, _ = await self.presence_flow(redis=redis.url, redis_heartbeat=0.2)
        names = [e["name"] for e in receiver.events()]
        self.assertEqual(sorted(names), sorted(ALL))
        self.assertLess(names.index("channel_occupied"), names.index("channel_vacated"))
        self.assertEqual(redis.call("HLEN", "pushsvc:_occupied"), 0)


class PoolTests(PoolTestCase):
    """On a pool of two workers the hub decides occupied and vacated (with
    Redis, the workers do)."""

    @run
    async def test_two_members_on_two_workers_one_occupied_one_vacated(self):
        receiver = Receiver()
        app = {"id": "1001", "key": "app-key", "secret": "app-secret",
               "webhooks": [{"url": listen(self, receiver) + "/hook",
                             "events": ["channel_occupied", "channel_vacated"]}]}
        await self.start_pool(2, **pusher_overrides([app]))
        clients, by_worker = await self.spread_clients(20)
        first, second = (members[0] for members in by_worker.values())
        self.assertNotEqual(owner(first.session), owner(second.session))
        channel = "group:pusher.1001:chat"
        for c in (first, second):
            status, _ = await self.http("POST", "/api/join", {"session": c.session,
                                                              "group": "pusher.1001:chat"})
            self.assertEqual(status, 200)
        self.assertEqual(len(self.subscribers(channel)), 2)
        await eventually(lambda: receiver.events(), what="channel_occupied")
        await first.disconnect()
        await eventually(lambda: len(self.subscribers(channel)) == 1, what="one left")
        await second.disconnect()
        await eventually(lambda: not self.subscribers(channel), what="none left")
        await eventually(lambda: len(receiver.events()) == 2, what="channel_vacated")
        await deferLater(reactor, 2 * WINDOW)  # nothing more comes
        self.assertEqual(receiver.events(), [
            {"name": "channel_occupied", "channel": "chat"},
            {"name": "channel_vacated", "channel": "chat"}])
        for _, headers, body in receiver.requests:
            self.assertIsNotNone(validated(app, headers, body))
        await eventually(lambda: self.pool.webhooks.counters["webhook_sent"] == 2)


    @run
    async def test_with_redis_the_workers_decide(self):
        """A pool with Redis: each worker's engine asks Redis (the hub's table
        is one node's), and the master sends none of them."""
        redis = RedisServer(self)
        await redis.start()
        receiver = Receiver()
        app = {"id": "1001", "key": "app-key", "secret": "app-secret",
               "webhooks": [{"url": listen(self, receiver) + "/hook",
                             "events": ["channel_occupied", "channel_vacated"]}]}
        await self.start_pool(2, redis=redis.url, redis_heartbeat=0.2,
                              **pusher_overrides([app]))
        await eventually(lambda: redis.call("ZCARD", "pushsvc:_members") == 2, 20,
                         "both workers registered")
        _, by_worker = await self.spread_clients(20)
        first, second = (members[0] for members in by_worker.values())
        for c in (first, second):
            status, _ = await self.http("POST", "/api/join", {"session": c.session,
                                                              "group": "pusher.1001:chat"})
            self.assertEqual(status, 200)
        await eventually(lambda: receiver.events(), what="channel_occupied")
        await first.disconnect()
        await deferLater(reactor, 2 * WINDOW)
        self.assertEqual(len(receiver.events()), 1)  # second is still there
        await second.disconnect()
        await eventually(lambda: len(receiver.events()) == 2, what="channel_vacated")
        await deferLater(reactor, 2 * WINDOW)  # nothing more comes
        self.assertEqual(receiver.events(), [
            {"name": "channel_occupied", "channel": "chat"},
            {"name": "channel_vacated", "channel": "chat"}])
        self.assertEqual(self.pool.webhooks.counters["webhook_sent"], 0)


class WatchTests(unittest.TestCase):
    def test_watch_occupancy_emits_for_app_groups_only(self):
        apps = Apps(check_apps([{"id": "1001", "key": "k", "secret": "s"}]))
        sent = []

        class Sender:
            def apps(self):
                return apps

            def emit(self, app, event):
                sent.append((app.id, event["name"], event["channel"]))
        table = SubscriptionTable()
        watch_occupancy(table, Sender())
        table.subscribe("w", ["group:pusher.1001:c", "group:lobby", "worker:x.0"])
        table.remove_worker("w")
        self.assertEqual(sent, [("1001", "channel_occupied", "c"),
                                ("1001", "channel_vacated", "c")])
