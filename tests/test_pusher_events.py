"""The Pusher HTTP API's routes, bodies and answers, and webhook bodies
(pushsvc.pusher.events): bodies as the official Python server SDK builds
them, Pusher's limits, the answers' shapes of its HTTP API reference.  No
sockets."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from twisted.trial import unittest

from pushsvc.pusher import events as ev
from pushsvc.pusher.apps import Apps, check_apps
from pushsvc.pusher.events import ChannelStats, Route, Trigger
from pushsvc.pusher.protocol import PusherError, data_value
from tests.test_pusher_protocol import sdk

APP = Apps(check_apps([{"id": "3", "key": "k", "secret": "s"}])).by_id("3")
SMALL = Apps(check_apps([{"id": "3", "key": "k", "secret": "s", "max_event_bytes": 100,
                          "max_channel_name": 20}])).by_id("3")


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


class RouteTests(unittest.TestCase):

    def test_routes(self):
        self.assertEqual(ev.parse_route("POST", "/apps/3/events"), Route("events", "3"))
        self.assertEqual(ev.parse_route("POST", "/apps/3/batch_events"),
                         Route("batch_events", "3"))
        self.assertEqual(ev.parse_route("GET", "/apps/3/channels"), Route("channels", "3"))
        self.assertEqual(ev.parse_route("GET", "/apps/3/channels/presence-a%3Bb"),
                         Route("channel", "3", "presence-a;b"))
        self.assertEqual(ev.parse_route("GET", "/apps/3/channels/presence-a/users"),
                         Route("users", "3", "presence-a"))
        self.assertEqual(ev.parse_route("POST", "/apps/3/users/u%201/terminate_connections"),
                         Route("terminate_connections", "3", user="u 1"))
        self.assertEqual(ev.parse_route("post", "/apps/3/events").name, "events")

    def test_not_found(self):
        for path in ("/", "/apps", "/apps/3", "/apps//events", "/apps/3/event",
                     "/apps/3/channels/", "/apps/3/channels/a/b", "/api/push",
                     "/apps/3/events/", "apps/3/events", "/apps/3/users/u"):
            e = self.assertRaises(PusherError, ev.parse_route, "GET", path)
            self.assertEqual(e.code, 404, path)

    def test_wrong_method(self):
        self.assertEqual(self.assertRaises(PusherError, ev.parse_route, "GET",
                                           "/apps/3/events").code, 405)
        self.assertEqual(self.assertRaises(PusherError, ev.parse_route, "POST",
                                           "/apps/3/channels").code, 405)


class TriggerTests(unittest.TestCase):

    def refused(self, raw, app=APP, code=400) -> PusherError:
        e = self.assertRaises(PusherError, ev.parse_trigger, raw, app)
        self.assertEqual(e.code, code)
        return e

    def test_sdk_bodies(self):
        client = sdk().Pusher(app_id="3", key="k", secret="s")._pusher_client
        request = client.trigger.make_request(["chat", "presence-room"], "my-event",
                                              {"text": "hi é"}, socket_id="12.34")
        trigger = ev.parse_trigger(request.body, APP)
        self.assertEqual(trigger, Trigger("my-event", '{"text": "hi é"}',
                                          ("chat", "presence-room"), "12.34"))
        self.assertEqual(data_value(trigger.data), {"text": "hi é"})
        request = client.trigger.make_request("chat", "e", "plain text")
        self.assertEqual(ev.parse_trigger(request.body, APP).data, "plain text")
        request = client.trigger_batch.make_request([
            {"channel": "a", "name": "e1", "data": {"n": 1}},
            {"channel": "private-b", "name": "e2", "data": "x"}])
        batch = ev.parse_batch(request.body, APP)
        self.assertEqual([(t.name, t.channels, t.data) for t in batch],
                         [("e1", ("a",), '{"n": 1}'), ("e2", ("private-b",), "x")])
        request = client.trigger.make_request("#server-to-user-u1", "e", "x")  # send_to_user
        self.assertEqual(ev.parse_trigger(request.body, APP).channels, ("#server-to-user-u1",))

    def test_reference_example(self):
        raw = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
        self.assertEqual(ev.parse_trigger(raw, APP),
                         Trigger("foo", '{"some":"data"}', ("project-3",)))

    def test_channel_or_channels(self):
        self.assertEqual(ev.parse_trigger(body(name="e", data="x", channel="a"), APP).channels,
                         ("a",))
        self.assertEqual(ev.parse_trigger(body(name="e", data="x", channels=["a", "b", "a"]),
                                          APP).channels, ("a", "b"))
        self.refused(body(name="e", data="x"))
        self.refused(body(name="e", data="x", channel="a", channels=["b"]))
        self.refused(body(name="e", data="x", channels=[]))
        self.refused(body(name="e", data="x", channels="a"))
        self.assertEqual(len(ev.parse_trigger(body(name="e", data="x", channels=[
            f"c{i}" for i in range(100)]), APP).channels), 100)
        self.assertIn("100", self.refused(body(name="e", data="x", channels=[
            f"c{i}" for i in range(101)])).message)

    def test_channel_names(self):
        self.refused(body(name="e", data="x", channel="a b"))
        e = self.refused(body(name="e", data="x", channel="private-encrypted-a"))
        self.assertIn("not supported", e.message)
        self.refused(body(name="e", data="x", channel="a" * 21), app=SMALL)
        self.refused(body(name="e", data="x", channels=["ok", 5]))

    def test_name(self):
        for name in ("", None, 5, "x" * 201, "pusher:connection_established",
                     "pusher_internal:member_added"):
            self.refused(body(name=name, data="x", channel="a"))
        self.assertEqual(ev.parse_trigger(body(name="x" * 200, data="x", channel="a"),
                                          APP).name, "x" * 200)

    def test_data(self):
        self.refused(body(name="e", channel="a"))
        self.assertEqual(ev.parse_trigger(body(name="e", channel="a", data={"n": 1}), APP).data,
                         '{"n":1}')
        self.assertEqual(ev.parse_trigger(body(name="e", channel="a", data="é" * 50), SMALL)
                         .data, "é" * 50)  # 100 bytes
        e = self.refused(body(name="e", channel="a", data="é" * 51), app=SMALL, code=413)
        self.assertIn("102 bytes", e.message)
        self.refused(body(name="e", channel="a", data="x" * 10241), code=413)

    def test_socket_id_and_info(self):
        t = ev.parse_trigger(body(name="e", data="x", channel="presence-a", socket_id="1.2",
                                  info="user_count, subscription_count"), APP)
        self.assertEqual((t.socket_id, t.info), ("1.2", ("user_count", "subscription_count")))
        self.refused(body(name="e", data="x", channel="a", socket_id="12"))
        self.refused(body(name="e", data="x", channel="a", socket_id=12.5))
        self.refused(body(name="e", data="x", channel="a", info="members"))
        self.refused(body(name="e", data="x", channel="a", info=["user_count"]))

    def test_bad_bodies(self):
        for raw in (b"", b"nope", b"[]", b"\xff", b'"x"'):
            self.refused(raw)
            self.assertEqual(self.assertRaises(PusherError, ev.parse_batch, raw, APP).code, 400)

    def test_batch_limits(self):
        def batch(n, **extra):
            return body(batch=[{"name": "e", "data": "x", "channel": f"c{i}", **extra}
                               for i in range(n)])
        self.assertEqual(len(ev.parse_batch(batch(10), APP)), 10)
        for raw in (batch(11), batch(0), body(batch={"name": "e"}), body(events=[])):
            self.assertEqual(self.assertRaises(PusherError, ev.parse_batch, raw, APP).code, 400)
        self.assertEqual(len(ev.parse_batch(batch(20), APP, max_batch=20)), 20)
        e = self.assertRaises(PusherError, ev.parse_batch, body(batch=[
            {"name": "e", "data": "x", "channel": "a"}, {"name": "e", "data": "x"}]), APP)
        self.assertIn("batch[1].channel", e.message)
        e = self.assertRaises(PusherError, ev.parse_batch, body(batch=[
            {"name": "e", "data": "x" * 101, "channel": "a"}]), SMALL)
        self.assertEqual(e.code, 413)
        self.assertIn("batch[0].data", e.message)
        e = self.assertRaises(PusherError, ev.parse_batch, body(batch=[
            {"name": "e", "data": "x", "channels": ["a"]}]), APP)
        self.assertIn("batch[0].channel", e.message)


class AnswerTests(unittest.TestCase):

    stats = {"presence-a": ChannelStats(subscription_count=3, user_count=2),
             "presence-b": ChannelStats(subscription_count=1, user_count=1),
             "news": ChannelStats(subscription_count=5),
             "empty": ChannelStats(subscription_count=0),
             "#server-to-user-u1": ChannelStats(subscription_count=1)}

    def test_trigger_answers(self):
        t = ev.parse_trigger(body(name="e", data="x", channels=["presence-a", "news", "gone"]),
                             APP)
        self.assertEqual(ev.trigger_answer(t, self.stats), {})
        t = Trigger("e", "x", ("presence-a", "news", "gone"), None,
                    ("user_count", "subscription_count"))
        self.assertEqual(ev.trigger_answer(t, self.stats), {"channels": {
            "presence-a": {"user_count": 2, "subscription_count": 3},
            "news": {"subscription_count": 5},
            "gone": {"subscription_count": 0}}})

    def test_batch_answers(self):
        plain = [Trigger("e", "x", ("news",)), Trigger("e", "x", ("presence-a",))]
        self.assertEqual(ev.batch_answer(plain, self.stats), {})
        asked = [Trigger("e", "x", ("presence-a",), info=("user_count", "subscription_count")),
                 Trigger("e", "x", ("news",)),
                 Trigger("e", "x", ("news",), info=("subscription_count",))]
        self.assertEqual(ev.batch_answer(asked, self.stats), {"batch": [
            {"user_count": 2, "subscription_count": 3}, {}, {"subscription_count": 5}]})

    def test_channels(self):
        self.assertEqual(ev.channels_answer({}, self.stats), {"channels": {
            "news": {}, "presence-a": {}, "presence-b": {}}})
        self.assertEqual(ev.channels_answer({"filter_by_prefix": ["presence-"],
                                             "info": ["user_count"]}, self.stats),
                         {"channels": {"presence-a": {"user_count": 2},
                                       "presence-b": {"user_count": 1}}})
        self.assertEqual(ev.channels_answer({"filter_by_prefix": ["ne"]}, self.stats),
                         {"channels": {"news": {}}})
        e = self.assertRaises(PusherError, ev.channels_answer, {"info": ["user_count"]},
                              self.stats)
        self.assertEqual(e.code, 400)
        self.assertEqual(ev.channels_answer({}, {}), {"channels": {}})

    def test_channel(self):
        self.assertEqual(ev.channel_answer("news", {}, self.stats["news"], APP),
                         {"occupied": True})
        self.assertEqual(ev.channel_answer("news", {"info": ["subscription_count"]},
                                           self.stats["news"], APP),
                         {"occupied": True, "subscription_count": 5})
        self.assertEqual(ev.channel_answer("presence-a", {"info": [
            "user_count,subscription_count"]}, self.stats["presence-a"], APP),
            {"occupied": True, "user_count": 2, "subscription_count": 3})
        self.assertEqual(ev.channel_answer("nobody", {"info": ["subscription_count"]}, None, APP),
                         {"occupied": False, "subscription_count": 0})
        self.assertEqual(ev.channel_answer("empty", {}, self.stats["empty"], APP),
                         {"occupied": False})
        for channel, query in (("news", {"info": ["user_count"]}), ("a b", {}),
                               ("news", {"info": ["bogus"]})):
            e = self.assertRaises(PusherError, ev.channel_answer, channel, query, None, APP)
            self.assertEqual(e.code, 400)

    def test_users(self):
        self.assertEqual(ev.users_answer("presence-a", ["1", "2"], APP),
                         {"users": [{"id": "1"}, {"id": "2"}]})
        self.assertEqual(ev.users_answer("presence-a", [], APP), {"users": []})
        for channel in ("news", "private-a", "bad name"):
            e = self.assertRaises(PusherError, ev.users_answer, channel, [], APP)
            self.assertEqual(e.code, 400)

    def test_answers_the_sdk_reads(self):
        """The SDK's requests for these answers go to the routes above."""
        client = sdk().Pusher(app_id="3", key="k", secret="s")._pusher_client
        for name, args, route in (
                ("channels_info", ("presence-", ["user_count"]), "channels"),
                ("channel_info", ("presence-a", ["user_count"]), "channel"),
                ("users_info", ("presence-a",), "users"),
                ("trigger_batch", ([{"channel": "a", "name": "e", "data": "x"}],),
                 "batch_events"),
                ("terminate_user_connections", ("u1",), "terminate_connections")):
            request = getattr(client, name).make_request(*args)
            path = urlsplit(request.signed_path).path
            self.assertEqual(ev.parse_route(request.method, path).name, route)

    def test_terminate_without_app(self):
        """The Python SDK sends /users/{user}/terminate_connections, without
        /apps/{id}: the app is the signer's."""
        self.assertEqual(ev.parse_route("POST", "/users/u1/terminate_connections"),
                         Route("terminate_connections", None, user="u1"))
        for path in ("/users/u1", "/users//terminate_connections", "/users/u1/events"):
            self.assertEqual(self.assertRaises(PusherError, ev.parse_route, "POST", path).code,
                             404, path)


class WebhookBodyTests(unittest.TestCase):

    def test_bodies(self):
        events = [ev.webhook_event("channel_occupied", "chat"),
                  ev.webhook_event("channel_vacated", "chat"),
                  ev.webhook_event("member_added", "presence-a", user_id="u1"),
                  ev.webhook_event("member_removed", "presence-a", user_id="u1"),
                  ev.webhook_event("client_event", "private-a", event="client-typing",
                                   data='{"on":true}', socket_id="1.2", user_id=None)]
        self.assertEqual(json.loads(ev.webhook_body(events, 1327078148132)), {
            "time_ms": 1327078148132, "events": [
                {"name": "channel_occupied", "channel": "chat"},
                {"name": "channel_vacated", "channel": "chat"},
                {"name": "member_added", "channel": "presence-a", "user_id": "u1"},
                {"name": "member_removed", "channel": "presence-a", "user_id": "u1"},
                {"name": "client_event", "channel": "private-a", "event": "client-typing",
                 "data": '{"on":true}', "socket_id": "1.2"}]})
        self.assertRaises(ValueError, ev.webhook_event, "channel_created", "chat")
