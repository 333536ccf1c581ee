"""The Pusher WebSocket endpoint /app/{key}: the pure per-connection rules
(pusher/session.py), the translation of pushsvc messages into Pusher frames
(pusher/dialect.py), and the edge on a real one-process server driven by a
raw WebSocket client (refusals and their close codes, errors, ping/pong,
liveness).  pusher-js itself drives it in test_pusher_ws_js.py."""

from __future__ import annotations

import json
from dataclasses import replace

from twisted.internet import task
from twisted.trial import unittest

from pushsvc.frames import message_frame
from pushsvc.protocol import Address, ProtocolError
from pushsvc.pusher.apps import Apps, check_apps
from pushsvc.pusher.dialect import Translation, event_message, pusher_error, pusher_frame
from pushsvc.pusher.names import PusherError
from pushsvc.pusher.presence import members
from pushsvc.pusher.protocol import parse_frame
from pushsvc.pusher.session import PusherSession
from pushsvc.pusher.signatures import channel_auth, user_auth
from tests.helpers import ServerTestCase, eventually, run
from tests.raw import answer_close, connect_raw, frame, handshake, text
from tests.test_pusher_http import pusher_overrides

APP = {"id": "1001", "key": "app-key", "secret": "app-secret", "client_events": True}
QUIET = {"id": "1002", "key": "quiet-key", "secret": "quiet-secret"}
OFF = {"id": "1003", "key": "off-key", "secret": "off-secret", "enabled": False}
SMALL = {"id": "1004", "key": "small-key", "secret": "small-secret", "max_connections": 1}
SIGNED = {"id": "1005", "key": "signed-key", "secret": "signed-secret",
          "user_authentication": True}
TABLES = [APP, QUIET, OFF, SMALL, SIGNED]
APPS = Apps(check_apps(TABLES))


def subscribe(channel: str, **data) -> str:
    return json.dumps({"event": "pusher:subscribe", "data": {"channel": channel, **data}})


class SessionRuleTests(unittest.TestCase):
    """PusherSession: what a connection may subscribe to and send."""

    def setUp(self):
        self.app = APPS.by_id("1001")
        self.s = PusherSession(self.app, "1.2")

    def test_public_channel_is_its_group(self):
        sub = self.s.subscribe(parse_frame(subscribe("chat")))
        self.assertEqual((sub.channel, sub.kind, sub.group), ("chat", "public", "pusher.1001:chat"))
        self.s.subscribed(sub)
        self.assertEqual(self.s.channel_of("pusher.1001:chat"), "chat")
        self.assertEqual(self.s.unsubscribe("chat"), "pusher.1001:chat")
        self.assertIsNone(self.s.unsubscribe("chat"))

    def test_private_channel_needs_the_signature_of_this_socket(self):
        good = channel_auth(self.app, "1.2", "private-x")
        self.s.subscribe(parse_frame(subscribe("private-x", auth=good)))
        other = channel_auth(self.app, "1.3", "private-x")  # another connection's
        with self.assertRaises(PusherError) as e:
            self.s.subscribe(parse_frame(subscribe("private-x", auth=other)))
        self.assertIn("invalid signature", e.exception.message)

    def test_presence_binds_the_user_once(self):
        data = json.dumps({"user_id": "alice", "user_info": {"name": "A"}})
        auth = channel_auth(self.app, "1.2", "presence-room", data)
        sub = self.s.subscribe(parse_frame(subscribe("presence-room", auth=auth,
                                                     channel_data=data)))
        self.assertEqual((sub.user_id, sub.user_info), ("alice", {"name": "A"}))
        self.s.subscribed(sub)
        self.assertEqual(self.s.user, "alice")
        self.assertEqual(self.s.presence_channels(),
                         [("presence-room", "pusher.1001:presence-room")])
        bob = json.dumps({"user_id": "bob"})
        with self.assertRaises(PusherError) as e:
            self.s.subscribe(parse_frame(subscribe(
                "presence-2", auth=channel_auth(self.app, "1.2", "presence-2", bob),
                channel_data=bob)))
        self.assertIn("cannot also be 'bob'", e.exception.message)

    def test_server_to_user_channel_needs_a_signin_as_that_user(self):
        frame = parse_frame(subscribe("#server-to-user-alice"))
        with self.assertRaises(PusherError):
            self.s.subscribe(frame)
        user_data = json.dumps({"id": "alice"})
        signin = parse_frame(json.dumps({"event": "pusher:signin", "data": {
            "auth": user_auth(self.app, "1.2", user_data), "user_data": user_data}}))
        self.assertEqual(self.s.signin(signin), "alice")
        self.assertEqual(self.s.subscribe(frame).group, "pusher.1001:#server-to-user-alice")
        with self.assertRaises(PusherError):  # a signature made for another socket
            PusherSession(self.app, "9.9").signin(signin)

    def test_client_events_only_where_subscribed_and_allowed(self):
        event = parse_frame(json.dumps({"event": "client-typing", "channel": "private-x",
                                        "data": {"a": 1}}))
        with self.assertRaises(PusherError) as e:
            self.s.client_event(event)
        self.assertIn("not subscribed", e.exception.message)
        self.s.subscribed(self.s.subscribe(parse_frame(subscribe(
            "private-x", auth=channel_auth(self.app, "1.2", "private-x")))))
        self.assertEqual(self.s.client_event(event), "pusher.1001:private-x")
        quiet = PusherSession(APPS.by_id("1002"), "1.2")
        with self.assertRaises(PusherError) as e:
            quiet.client_event(event)
        self.assertIn("not enabled", e.exception.message)

    def test_a_group_name_too_long_for_pushsvc_is_refused(self):
        with self.assertRaises(PusherError) as e:
            self.s.subscribe(parse_frame(subscribe("c" * 200)))
        self.assertIn("at most 188 characters", e.exception.message)


class DialectTests(unittest.TestCase):
    """One message, the frames of both protocols."""

    def test_event_message_carries_event_and_socket_id_before_data(self):
        m = event_message("m1", "pusher.1001:chat", "new", '{"a":1}', 1000, "1.2")
        self.assertEqual(json.loads(m.frame), {
            "op": "msg", "id": "m1", "to": {"group": "pusher.1001:chat"}, "event": "new",
            "socket_id": "1.2", "data": '{"a":1}'})
        with self.assertRaises(ProtocolError):
            event_message("m2", "g", "e", "x" * 100, 50)

    def test_pusher_frame(self):
        native = json.loads(message_frame("m1", Address(group=("g",)), {"a": 1}))
        self.assertEqual(json.loads(pusher_frame(native, "chat")),
                         {"event": "message", "channel": "chat", "data": '{"a":1}'})
        self.assertEqual(json.loads(pusher_frame(native, None)),
                         {"event": "message", "data": '{"a":1}'})
        whisper = {"event": "client-x", "data": "hi", "from": {"session": "s", "user": "al"}}
        self.assertEqual(json.loads(pusher_frame(whisper, "presence-r"))["user_id"], "al")
        self.assertNotIn("user_id", json.loads(pusher_frame(whisper, "private-r")))

    def test_translation_is_made_once_per_message_and_channel(self):
        made = []
        translation = Translation(lambda b: made.append(json.loads(b)) or b)
        a, b = PusherSession(APPS.by_id("1001"), "1.1"), PusherSession(APPS.by_id("1001"), "1.2")
        other = PusherSession(APPS.by_id("1002"), "1.3")
        translation.use(1, message_frame("m1", Address(group=("pusher.1001:c",)), "x",
                                         event="e", socket_id="1.1"))
        self.assertIsNone(translation.frame_for(a, {"pusher.1001:c"}))  # its own
        for _ in range(3):
            translation.frame_for(b, {"pusher.1001:c"})
        self.assertEqual(made, [{"event": "e", "channel": "c", "data": "x"}])
        translation.use(2, message_frame("m2", Address(group=("pusher.1001:c", "pusher.1002:c"),
                                                       user=("u",)), "y"))
        self.assertEqual(translation.frame_for(other, {"pusher.1002:c"}),
                         translation.frame_for(b, {"pusher.1001:c"}))  # the same channel
        translation.frame_for(a, set())  # through its user: no channel
        self.assertEqual([m.get("channel") for m in made[1:]], ["c", None])
        translation.use(3, b'{"op":"joined","group":"g"}')
        self.assertIsNone(translation.frame_for(b, {"g"}))

    def test_errors_become_pusher_errors(self):
        self.assertEqual(json.loads(pusher_error(b'{"op":"error","code":"rate_limited",'
                                                 b'"message":"slow down"}')),
                         {"event": "pusher:error", "data": {"message": "slow down",
                                                            "code": None}})
        self.assertIsNone(pusher_error(b'{"op":"ok"}'))

    def test_presence_members(self):
        result = {"sessions": 3, "users": {"b": {"sessions": 2}, "a": {
            "sessions": 1, "data": '{"name":"A"}'}}}
        self.assertEqual(members(result), {"a": {"name": "A"}, "b": None})


class PusherEdge:
    """Raw Pusher clients of a ServerTestCase's server."""

    async def pusher_client(self, path="/app/app-key?protocol=7", headers=None):
        client = await connect_raw(self.port, handshake(path, headers))
        self.addCleanup(lambda: client.transport.loseConnection())
        return client

    @staticmethod
    def events(client, name):
        return [f for f in client.json_frames() if f.get("event") == name]

    async def established(self, client) -> dict:
        """The data of ``client``'s ``pusher:connection_established``."""
        await client.wait_for(lambda: self.events(client, "pusher:connection_established")
                              or client.has_close())
        frames = self.events(client, "pusher:connection_established")
        self.assertTrue(frames, client.json_frames())
        return json.loads(frames[0]["data"])


class EdgeTests(PusherEdge, ServerTestCase):
    """/app/{key} on a real one-process server, from a raw client."""

    def start(self, **overrides):
        return self.start_server(**pusher_overrides(TABLES), **overrides)

    async def refused(self, path):
        client = await self.pusher_client(path)
        await client.wait_for(client.has_close)
        errors = self.events(client, "pusher:error")
        return client.close_code, errors[0]["data"]["code"] if errors else None

    @run
    async def test_connection_established(self):
        """The first frame: a socket id of two numbers and the activity timeout."""
        self.start(ping_interval=30.0)
        data = await self.established(await self.pusher_client())
        self.assertRegex(data["socket_id"], r"^[0-9]+\.[0-9]+$")
        self.assertEqual(data["activity_timeout"], 30)

    @run
    async def test_refusals_close_with_pusher_codes(self):
        """Each refusal is a pusher:error with the code, then the close with it."""
        self.start()
        self.assertEqual(await self.refused("/app/nope?protocol=7"), (4001, 4001))
        self.assertEqual(await self.refused("/app/off-key?protocol=7"), (4003, 4003))
        self.assertEqual(await self.refused("/app/app-key?protocol=5"), (4007, 4007))
        self.assertEqual(await self.refused("/app/app-key"), (4008, 4008))
        await self.established(await self.pusher_client("/app/small-key?protocol=7"))
        self.assertEqual(await self.refused("/app/small-key?protocol=7"), (4100, 4100))

    @run
    async def test_bad_frames_get_pusher_errors_and_the_connection_stays(self):
        self.start()
        client = await self.pusher_client()
        await self.established(client)
        client.transport.write(frame(b"{not json"))
        client.transport.write(text({"event": "pusher:nonsense", "data": {}}))
        client.transport.write(text({"event": "hello", "data": {}}))
        client.transport.write(text({"event": "client-x", "channel": "private-a", "data": 1}))
        client.transport.write(text({"event": "client-x", "channel": "private-a",
                                     "data": "x" * 10241}))
        client.transport.write(text({"event": "pusher:subscribe",
                                     "data": {"channel": "bad channel"}}))
        client.transport.write(text({"event": "pusher:subscribe",
                                     "data": {"channel": "c" * 201}}))
        client.transport.write(text({"event": "pusher:ping", "data": {}}))
        await client.wait_for(lambda: self.events(client, "pusher:pong"))
        messages = [e["data"]["message"] for e in self.events(client, "pusher:error")]
        self.assertEqual(len(messages), 7, messages)
        self.assertIn("JSON", messages[0])
        self.assertIn("unknown event", messages[1])
        self.assertIn("not 'hello'", messages[2])
        self.assertIn("not subscribed", messages[3])
        self.assertIn("over 10240 bytes", messages[4])
        self.assertIn("invalid channel name", messages[5])
        self.assertIn("longer than 200", messages[6])
        self.assertIsNone(client.close_code)

    @run
    async def test_subscribe_and_receive_a_push(self):
        """A public channel is its group: /api/push to it reaches the client
        as a Pusher event, named by the push's ``event`` (``message`` when
        it has none)."""
        self.start()
        client = await self.pusher_client()
        await self.established(client)
        client.transport.write(text({"event": "pusher:subscribe", "data": {"channel": "chat"}}))
        await client.wait_for(lambda: self.events(client, "pusher_internal:subscription_succeeded"))
        status, _ = await self.http("POST", "/api/push", {"to": {"group": "pusher.1001:chat"},
                                                          "data": {"a": 1}})
        self.assertEqual(status, 202)
        await client.wait_for(lambda: self.events(client, "message"))
        self.assertEqual(self.events(client, "message"),
                         [{"event": "message", "channel": "chat", "data": '{"a":1}'}])
        # A push may name its Pusher event; pushsvc's own clients see it too.
        status, _ = await self.http("POST", "/api/push", {
            "to": {"group": "pusher.1001:chat"}, "data": "x", "event": "order-shipped"})
        self.assertEqual(status, 202)
        status, _ = await self.http("POST", "/api/batch", {"messages": [
            {"to": {"group": "pusher.1001:chat"}, "data": 2, "event": "second"}]})
        self.assertEqual(status, 202)
        await client.wait_for(lambda: self.events(client, "second"))
        self.assertEqual([e["data"] for e in self.events(client, "order-shipped")], ["x"])
        for bad in ("pusher:x", "", 5, "e" * 201):
            status, body = await self.http("POST", "/api/push", {
                "to": {"group": "pusher.1001:chat"}, "data": 1, "event": bad})
            self.assertEqual((status, body["error"]["code"]), (400, "bad_request"), bad)
        # A bad signature on a private channel: a subscription error on it.
        client.transport.write(text({"event": "pusher:subscribe", "data": {
            "channel": "private-x", "auth": "app-key:" + "0" * 64}}))
        await client.wait_for(lambda: self.events(client, "pusher:subscription_error"))
        error = self.events(client, "pusher:subscription_error")[0]
        self.assertEqual((error["channel"], error["data"]["status"]), ("private-x", 401))

    @run
    async def test_kicked_and_closing_servers_use_pusher_codes(self):
        """A kick (terminate_connections) closes with 4009, not pushsvc's
        4000, which pusher-js would take for "use TLS"."""
        self.start()
        client = await self.pusher_client("/app/signed-key?protocol=7")
        data = await self.established(client)
        user_data = json.dumps({"id": "alice"})
        client.transport.write(text({"event": "pusher:signin", "data": {
            "auth": user_auth(APPS.by_id("1005"), data["socket_id"], user_data),
            "user_data": user_data}}))
        await client.wait_for(lambda: self.events(client, "pusher:signin_success"))
        status, result = await self.http("POST", "/api/kick", {"user": "alice"})
        self.assertEqual(result["sessions"], 1)
        self.assertEqual(await answer_close(client), 4009)
        # A server going away (shutdown, a rolling restart): reconnect at once.
        other = await self.pusher_client()
        await self.established(other)
        self.server.ws_factory.close_all()
        self.assertEqual(await answer_close(other), 4200)


    async def presence_client(self, user: str, channel: str = "presence-p"):
        client = await self.pusher_client()
        socket_id = (await self.established(client))["socket_id"]
        data = json.dumps({"user_id": user})
        client.transport.write(text({"event": "pusher:subscribe", "data": {
            "channel": channel, "channel_data": data,
            "auth": channel_auth(APPS.by_id("1001"), socket_id, channel, data)}}))
        await client.wait_for(lambda: self.events(client, "pusher_internal:subscription_succeeded"))
        return client, socket_id, data

    @run
    async def test_a_second_subscribe_announces_nobody_again(self):
        """A connection subscribing again to its presence channel gets the
        member list again; the others are not told of it twice."""
        self.start()
        watcher, _, _ = await self.presence_client("w")
        client, socket_id, data = await self.presence_client("again")
        await watcher.wait_for(lambda: self.events(watcher, "pusher_internal:member_added"))
        client.transport.write(text({"event": "pusher:subscribe", "data": {
            "channel": "presence-p", "channel_data": data,
            "auth": channel_auth(APPS.by_id("1001"), socket_id, "presence-p", data)}}))
        await client.wait_for(lambda: len(self.events(
            client, "pusher_internal:subscription_succeeded")) == 2)
        listed = json.loads(self.events(client, "pusher_internal:subscription_succeeded")[1]["data"])
        self.assertEqual(sorted(listed["presence"]["ids"]), ["again", "w"])
        await self.http("POST", "/api/push", {"to": {"group": "pusher.1001:presence-p"},
                                              "data": "last"})
        await watcher.wait_for(lambda: self.events(watcher, "message"))
        self.assertEqual(len(self.events(watcher, "pusher_internal:member_added")), 1)

    @run
    async def test_a_flood_is_refused_then_closed(self):
        """Frames over the message rate: the first refusal is a pusher:error,
        a flood closes with 4009 (pusher-js does not come back unchanged)."""
        self.start(messages_per_second=1.0, message_burst=3)
        client = await self.pusher_client()
        await self.established(client)
        for _ in range(20):
            client.transport.write(text({"event": "pusher:ping", "data": {}}))
        self.assertEqual(await answer_close(client), 4009)
        errors = self.events(client, "pusher:error")
        self.assertIn("messages a second", errors[0]["data"]["message"])

    @run
    async def test_a_reload_applies_to_open_connections(self):
        """Open connections use their app as reloaded: a new secret signs
        from then on, and a disabled app's connections are closed (4003) at
        their next frame."""
        server = self.start()
        client = await self.pusher_client()
        socket_id = (await self.established(client))["socket_id"]
        renewed = dict(APP, secret="new-secret")
        server.reload(replace(server.settings, **pusher_overrides([renewed, *TABLES[1:]])))
        new_app = Apps(check_apps([renewed])).by_id("1001")
        client.transport.write(text({"event": "pusher:subscribe", "data": {
            "channel": "private-r", "auth": channel_auth(new_app, socket_id, "private-r")}}))
        await client.wait_for(lambda: self.events(client, "pusher_internal:subscription_succeeded"))
        server.reload(replace(server.settings, **pusher_overrides(
            [dict(renewed, enabled=False), *TABLES[1:]])))
        client.transport.write(text({"event": "pusher:ping", "data": {}}))
        self.assertEqual(await answer_close(client), 4003)
        self.assertEqual(self.events(client, "pusher:pong"), [])

    @run
    async def test_closed_connections_leave_nothing_behind(self):
        """Subscribed to every kind of channel, signed in, then gone (some
        closing cleanly, some dropped): no session, group, member state or
        app count is left."""
        self.start()
        app = APPS.by_id("1001")
        for n in range(6):
            client = await self.pusher_client()
            socket_id = (await self.established(client))["socket_id"]
            data = json.dumps({"user_id": f"u{n}"})
            user_data = json.dumps({"id": f"u{n}"})
            for frame_ in (
                    {"event": "pusher:subscribe", "data": {"channel": "pub"}},
                    {"event": "pusher:subscribe", "data": {
                        "channel": "private-p", "auth": channel_auth(app, socket_id, "private-p")}},
                    {"event": "pusher:subscribe", "data": {
                        "channel": "presence-q", "channel_data": data,
                        "auth": channel_auth(app, socket_id, "presence-q", data)}},
                    {"event": "pusher:signin", "data": {
                        "auth": user_auth(app, socket_id, user_data), "user_data": user_data}}):
                client.transport.write(text(frame_))
            await client.wait_for(lambda: self.events(client, "pusher:signin_success")
                                  and len(self.events(
                                      client, "pusher_internal:subscription_succeeded")) == 3)
            edge = next(iter(self.server.ws_factory.connections)).edge
            if n % 2:
                client.transport.abortConnection()
            else:
                client.transport.write(frame(b"\x03\xe8", 8))
        engine = self.engine
        await eventually(lambda: engine.registry.is_empty(), what="every session gone")
        self.assertTrue(engine.joins.is_empty())
        self.assertEqual(dict(edge.capacity.own), {})


class LivenessTests(ServerTestCase):
    """pusher:ping after ping_interval of silence, 4201 after ping_timeout;
    a connection that must sign in and does not is closed with 4009."""

    def setUp(self):
        self.clock = task.Clock()

    @run
    async def test_ping_then_close(self):
        self.start_server(**pusher_overrides(TABLES), ping_interval=10.0, ping_timeout=25.0)
        client = await connect_raw(self.port, handshake("/app/app-key?protocol=7"))
        self.addCleanup(lambda: client.transport.loseConnection())
        await client.wait_for(lambda: client.json_frames())
        conn = next(iter(self.server.ws_factory.connections))
        conn.last_seen = self.clock.seconds()
        self.clock.advance(11)
        await client.wait_for(lambda: any(f.get("event") == "pusher:ping"
                                          for f in client.json_frames()))
        self.clock.advance(15)
        await client.wait_for(client.has_close)
        self.assertEqual(client.close_code, 4201)

    @run
    async def test_user_authentication_deadline(self):
        self.start_server(**pusher_overrides(TABLES), auth_timeout=5.0)
        client = await connect_raw(self.port, handshake("/app/signed-key?protocol=7"))
        self.addCleanup(lambda: client.transport.loseConnection())
        await client.wait_for(lambda: client.json_frames())
        self.clock.advance(6)
        await client.wait_for(client.has_close)
        self.assertEqual(client.close_code, 4009)
        self.assertIn(4009, [f["data"]["code"] for f in client.json_frames()
                             if f.get("event") == "pusher:error"])

