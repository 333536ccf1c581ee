"""Per-app limits of the Pusher layer (docs/pusher.md, "Per-app limits"):
the decisions without I/O (pusher/rates.py, pusher/origins.py, the
session's client-event rate), then on a real one-process server from raw
clients, time driven by a task.Clock: an 11th client event in a second gets
4301 and the connection stays, an app's API events over its rate get 429, a
page from an origin the app does not allow is refused with 4009, and a
reload changes each of them."""

from __future__ import annotations

import json
from dataclasses import replace

from twisted.internet import task
from twisted.trial import unittest

from pushsvc.pusher.apps import Apps, check_apps
from pushsvc.pusher.names import CLIENT_EVENT_RATE_LIMIT, PusherError
from pushsvc.pusher.origins import AllowedOrigins, check_allowed_origins
from pushsvc.pusher.protocol import parse_frame
from pushsvc.pusher.rates import AppRates, EventRate, OverRate
from pushsvc.pusher.session import PusherSession
from pushsvc.pusher.signatures import channel_auth
from tests.helpers import ServerTestCase, run
from tests.raw import text
from tests.test_pusher_http import PusherSDKMixin, pusher_overrides
from tests.test_pusher_ws import PusherEdge

CHAT = {"id": "2001", "key": "chat-key", "secret": "chat-secret", "client_events": True}
WEB = {"id": "2002", "key": "web-key", "secret": "web-secret",
       "allowed_origins": ["https://app.example", "*.example.com"]}
API = {"id": "2003", "key": "api-key", "secret": "api-secret",
       "max_backend_events_per_second": 3}
TABLES = [CHAT, WEB, API]
APPS = Apps(check_apps(TABLES))


def origins(*entries: str) -> AllowedOrigins:
    return AllowedOrigins(check_allowed_origins(list(entries), "allowed_origins"))


class EventRateTests(unittest.TestCase):
    """A burst of N, then N a second; a reload's figure from the next event."""

    def test_burst_then_rate(self):
        rate = EventRate()
        self.assertEqual([rate.admit(10, 100.0) for _ in range(11)], [True] * 10 + [False])
        self.assertEqual(rate.retry_after(), 1)
        self.assertFalse(rate.admit(10, 100.05))
        self.assertTrue(rate.admit(10, 100.15))   # a tenth of a second: one more
        self.assertFalse(rate.admit(10, 100.15))
        self.assertEqual(sum(rate.admit(10, 101.2) for _ in range(20)), 10)

    def test_no_limit_and_a_new_figure(self):
        rate = EventRate()
        self.assertTrue(all(rate.admit(0, 1.0) for _ in range(1000)))
        self.assertIsNone(rate.bucket)
        self.assertEqual(sum(rate.admit(2, 1.0) for _ in range(5)), 2)
        self.assertEqual(sum(rate.admit(5, 2.0) for _ in range(9)), 5)  # raised: refills to 5
        self.assertEqual(sum(rate.admit(1, 2.0) for _ in range(3)), 0)  # lowered: owes nothing more
        self.assertTrue(rate.admit(0, 2.0))

    def test_a_cost_over_the_burst_is_served_by_a_full_bucket_then_owed(self):
        rate = EventRate()
        self.assertTrue(rate.admit(3, 0.0, cost=7))
        self.assertFalse(rate.admit(3, 1.0))
        self.assertEqual(rate.retry_after(), 1)    # 4 owed at 3 a second: 5/3 s from 0
        self.assertFalse(rate.admit(3, 1.5))
        self.assertTrue(rate.admit(3, 1.7))
        self.assertFalse(rate.admit(3, 1.7, cost=3))
        self.assertEqual(rate.retry_after(3), 1)


class AppRatesTests(unittest.TestCase):

    def test_per_app_and_retry_after(self):
        rates, app = AppRates(), APPS.by_id("2003")
        rates.check(app, 2, 10.0)
        with self.assertRaises(OverRate) as e:
            rates.check(app, 2, 10.0)
        self.assertEqual((e.exception.code, e.exception.retry_after), (429, 1))
        self.assertIn("may trigger 3 a second", e.exception.message)
        rates.check(app, 1, 10.0)                  # the refused ones were not counted
        rates.check(APPS.by_id("2001"), 10 ** 6, 10.0)  # 0: no limit, nothing kept
        self.assertEqual(list(rates.rates), ["2003"])
        with self.assertRaises(OverRate) as e:
            rates.check(app, 30, 10.5)
        self.assertEqual(e.exception.retry_after, 1)
        rates.check(app, 30, 11.0)                 # a full bucket serves it
        with self.assertRaises(OverRate) as e:
            rates.check(app, 1, 11.0)
        self.assertEqual(e.exception.retry_after, 10)  # 27 owed, then one: 28 / 3 s
        rates.keep(["2001"])
        self.assertEqual(rates.rates, {})


class OriginTests(unittest.TestCase):
    """What an entry matches; a handshake without Origin is always allowed."""

    def test_any(self):
        for policy in (AllowedOrigins(), origins("*"), origins("https://a.example", "*")):
            self.assertTrue(policy.allows("https://anything.example"))
            self.assertTrue(policy.allows("null"))

    def test_origins(self):
        policy = origins("https://app.example", "https://*.example.com", "http://localhost:3000")
        for ok in ("https://app.example", "HTTPS://APP.example:443", "https://a.example.com",
                   "https://a.b.example.com", "http://localhost:3000", None):
            self.assertTrue(policy.allows(ok), ok)
        for no in ("http://app.example", "https://app.example:8443", "https://example.com",
                   "https://evil.example", "http://localhost:3001", "null",
                   "https://app.example.evil", ""):
            self.assertFalse(policy.allows(no), no)

    def test_hosts_as_reverb_takes_them(self):
        policy = origins("app.example", "*.example.com", "[::1]")
        for ok in ("https://app.example", "http://app.example:8080", "https://x.example.com",
                   "http://a.b.example.com:3000", "http://[::1]:8080"):
            self.assertTrue(policy.allows(ok), ok)
        for no in ("https://example.com", "https://xapp.example", "https://app.example.net",
                   "null", "https://.example.com", "garbage"):
            self.assertFalse(policy.allows(no), no)

    def test_null_only_when_listed(self):
        self.assertTrue(origins("null").allows("null"))
        self.assertFalse(origins("null").allows("https://app.example"))
        self.assertFalse(origins("app.example").allows("null"))

    def test_the_app_carries_its_policy(self):
        web = APPS.by_id("2002")
        self.assertFalse(web.allowed_origins.allows("https://evil.example"))
        self.assertTrue(APPS.by_id("2001").allowed_origins.any)


class ClientEventRuleTests(unittest.TestCase):
    """PusherSession.spend_client_event: the app's figure, read at each event."""

    def test_the_eleventh_in_a_second_is_refused_with_4301(self):
        s = PusherSession(APPS.by_id("2001"), "1.2")
        event = parse_frame(json.dumps({"event": "client-typing", "channel": "private-x",
                                        "data": 1}))
        for _ in range(10):
            s.spend_client_event(event, 5.0)
        with self.assertRaises(PusherError) as e:
            s.spend_client_event(event, 5.0)
        self.assertEqual(e.exception.code, CLIENT_EVENT_RATE_LIMIT)
        self.assertIn("client event rejected due to rate limit: at most 10", e.exception.message)
        self.assertIn("client-typing on private-x", e.exception.message)
        s.spend_client_event(event, 5.2)
        s.app = replace(s.app, max_client_events_per_second=0)  # a reload: no limit
        for _ in range(100):
            s.spend_client_event(event, 5.2)

    def test_no_rate_is_kept_without_a_limit(self):
        s = PusherSession(replace(APPS.by_id("2001"), max_client_events_per_second=0), "1.2")
        s.spend_client_event(parse_frame(json.dumps(
            {"event": "client-a", "channel": "private-x", "data": 1})), 1.0)
        self.assertIsNone(s.event_rate)


class LimitEdgeTests(PusherSDKMixin, PusherEdge, ServerTestCase):
    """/app/{key} and /apps/{id}/events on a real one-process server."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)

    def start(self, tables=TABLES, **overrides):
        return self.start_server(**pusher_overrides(tables), **overrides)

    def app_client(self, key="chat-key", headers=None):
        return self.pusher_client(f"/app/{key}?protocol=7", headers)

    async def subscribed(self, channel="private-room", key="chat-key", table=CHAT):
        client = await self.app_client(key)
        socket_id = (await self.established(client))["socket_id"]
        app = Apps(check_apps([table])).by_id(table["id"])
        client.transport.write(text({"event": "pusher:subscribe", "data": {
            "channel": channel, "auth": channel_auth(app, socket_id, channel)}}))
        await client.wait_for(lambda: self.events(client, "pusher_internal:subscription_succeeded"))
        return client

    @staticmethod
    def whisper(client, *names):
        client.transport.write(b"".join(
            text({"event": n, "channel": "private-room", "data": n}) for n in names))

    @run
    async def test_an_eleventh_client_event_in_a_second_gets_4301_and_the_connection_stays(self):
        self.start()
        sender, receiver = await self.subscribed(), await self.subscribed()
        names = [f"client-n{i}" for i in range(11)]
        self.whisper(sender, *names)
        await sender.wait_for(lambda: self.events(sender, "pusher:error"))
        error = self.events(sender, "pusher:error")[0]["data"]
        self.assertEqual(error["code"], 4301)
        self.assertIn("at most 10 client events a second (client-n10 on private-room",
                      error["message"])
        self.clock.advance(1)
        self.whisper(sender, "client-later")
        await receiver.wait_for(lambda: self.events(receiver, "client-later"))
        got = [f["event"] for f in receiver.json_frames() if f["event"].startswith("client-")]
        self.assertEqual(got, names[:10] + ["client-later"])
        self.assertIsNone(sender.close_code)
        self.assertEqual(len(self.events(sender, "pusher:error")), 1)
        self.assertEqual(self.engine.counters["rate_limited"], 1)
        self.assertEqual(self.engine.counters["dropped_flood"], 0)

    @run
    async def test_a_reload_changes_the_client_event_rate_of_open_connections(self):
        server = self.start()
        sender, receiver = await self.subscribed(), await self.subscribed()
        server.reload(replace(server.settings, **pusher_overrides(
            [dict(CHAT, max_client_events_per_second=2), WEB, API])))
        self.whisper(sender, "client-a", "client-b", "client-c")
        await sender.wait_for(lambda: self.events(sender, "pusher:error"))
        self.assertIn("at most 2 client events", self.events(sender, "pusher:error")[0]
                      ["data"]["message"])
        server.reload(replace(server.settings, **pusher_overrides(
            [dict(CHAT, max_client_events_per_second=0), WEB, API])))
        self.whisper(sender, *[f"client-{i}" for i in range(30)])
        await receiver.wait_for(lambda: self.events(receiver, "client-29"))
        self.assertEqual(len([f for f in receiver.json_frames()
                              if f["event"].startswith("client-")]), 32)
        self.assertEqual(len(self.events(sender, "pusher:error")), 1)

    async def refused(self, key, origin):
        client = await self.app_client(key, {"Origin": origin} if origin else None)
        await client.wait_for(client.has_close)
        return client.close_code, [f["data"] for f in self.events(client, "pusher:error")]

    @run
    async def test_an_origin_the_app_does_not_allow_is_refused_with_4009(self):
        server = self.start()
        code, errors = await self.refused("web-key", "https://evil.example")
        self.assertEqual(code, 4009)
        self.assertEqual(errors[0]["code"], 4009)
        self.assertIn("Origin not allowed: 'https://evil.example'", errors[0]["message"])
        self.assertEqual(self.engine.counters["refused_origin"], 1)
        for origin in ("https://app.example", "http://chat.example.com:8080", None):
            await self.established(await self.app_client(
                "web-key", {"Origin": origin} if origin else None))
        # Another app's list is its own.
        await self.established(await self.app_client("chat-key",
                                                        {"Origin": "https://evil.example"}))
        # A reload: new connections are held to the new list, open ones stay.
        kept = await self.app_client("web-key", {"Origin": "https://app.example"})
        await self.established(kept)
        server.reload(replace(server.settings, **pusher_overrides(
            [CHAT, dict(WEB, allowed_origins=["https://evil.example"]), API])))
        self.assertEqual((await self.refused("web-key", "https://app.example"))[0], 4009)
        await self.established(await self.app_client("web-key",
                                                        {"Origin": "https://evil.example"}))
        kept.transport.write(text({"event": "pusher:ping", "data": {}}))
        await kept.wait_for(lambda: self.events(kept, "pusher:pong"))
        self.assertIsNone(kept.close_code)

    @run
    async def test_the_process_wide_list_refuses_first_with_403(self):
        """``http.allowed_origins`` refuses before the upgrade, as at /ws."""
        self.start(allowed_origins=["https://app.example", "https://evil.example"])
        client = await self.app_client("web-key", {"Origin": "https://other.example"})
        await client.wait_for(client.complete)
        self.assertEqual(client.status, 403)
        self.assertIn("is not allowed", client.body["error"]["message"])
        self.assertEqual((await self.refused("web-key", "https://evil.example"))[0], 4009)
        await self.established(await self.app_client("web-key",
                                                        {"Origin": "https://app.example"}))

    @run
    async def test_api_events_over_the_app_rate_get_429(self):
        """Three events a second, one per channel: a trigger to two channels
        passes, the next one is refused whole (Retry-After), and one second
        later they pass again."""
        server = self.start()
        receiver = await self.subscribed("c1", "api-key", API)

        def trigger(name):
            body = json.dumps({"name": name, "data": "x", "channels": ["c1", "c2"]}).encode()
            return self.signed("POST", "/apps/2003/events", body, table=API)

        self.assertEqual((await trigger("first"))[0], 200)
        status, ctype, body = await trigger("refused")
        self.assertEqual((status, ctype), (429, "text/plain; charset=utf-8"))
        self.assertIn("app 2003 may trigger 3 a second", body)
        self.assertEqual(self.last_headers.getRawHeaders(b"retry-after"), [b"1"])
        batch = json.dumps({"batch": [{"name": "b", "channel": "c1", "data": "x"}]}).encode()
        self.assertEqual((await self.signed("POST", "/apps/2003/batch_events", batch,
                                            table=API))[0], 200)   # the third
        self.clock.advance(1)
        self.assertEqual((await trigger("second"))[0], 200)
        await receiver.wait_for(lambda: self.events(receiver, "second"))
        self.assertEqual([f["event"] for f in receiver.json_frames() if "channel" in f
                          and not f["event"].startswith("pusher")], ["first", "b", "second"])
        # Reads are not counted; a reload lifts the limit.
        self.assertEqual((await self.signed("GET", "/apps/2003/channels", table=API))[0], 200)
        server.reload(replace(server.settings, **pusher_overrides(
            [CHAT, WEB, dict(API, max_backend_events_per_second=0)])))
        for _ in range(3):
            self.assertEqual((await trigger("free"))[0], 200)
