"""Pusher Channels protocol 7 (pushsvc.pusher.protocol and names): client
frames as pusher-js sends them, server frames as the protocol reference shows
them, data conversion, channel names and socket ids (checked against the
official Python server SDK's own checks).  No sockets."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from pushsvc.pusher import protocol as p
from pushsvc.pusher.protocol import PusherError, parse_frame


def sdk():
    """The official Python server SDK (``pusher``), or skip (fail under CI)."""
    try:
        import pusher
        import pusher.util
    except ImportError:
        if os.environ.get("CI") == "true":
            raise AssertionError("CI=true and the pusher SDK is not installed "
                                 "(the test extras should have it)")
        raise unittest.SkipTest("the pusher SDK is not installed: .venv/bin/pip install pusher")
    return pusher


def decoded(frame: bytes) -> dict:
    """A server frame, and its ``data`` decoded when it is a JSON string."""
    out = json.loads(frame)
    if isinstance(out.get("data"), str):
        out["data"] = json.loads(out["data"])
    return out


class ConnectTests(unittest.TestCase):

    def test_pusher_js_url(self):
        query = {"protocol": ["7"], "client": ["js"], "version": ["8.4.0"], "flash": ["false"]}
        self.assertEqual(p.parse_connect("/app/app-key", query), "app-key")
        self.assertEqual(p.parse_connect("/app/app-key/", query), "app-key")

    def test_codes(self):
        def code(path, query):
            with self.assertRaises(PusherError) as caught:
                p.parse_connect(path, query)
            return caught.exception.code
        self.assertEqual(code("/ws", {"protocol": ["7"]}), p.PATH_NOT_FOUND)
        self.assertEqual(code("/app/", {"protocol": ["7"]}), p.PATH_NOT_FOUND)
        self.assertEqual(code("/apps/k", {"protocol": ["7"]}), p.PATH_NOT_FOUND)
        self.assertEqual(code("/app/k", {}), p.NO_PROTOCOL)
        self.assertEqual(code("/app/k", {"protocol": ["seven"]}), p.INVALID_VERSION)
        self.assertEqual(code("/app/k", {"protocol": ["5"]}), p.UNSUPPORTED_PROTOCOL)

    def test_error_codes_and_ranges(self):
        """The codes of Pusher's "Error Codes" section, and their ranges."""
        self.assertEqual((p.SSL_ONLY, p.APP_NOT_FOUND, p.APP_DISABLED, p.OVER_QUOTA,
                          p.PATH_NOT_FOUND, p.INVALID_VERSION, p.UNSUPPORTED_PROTOCOL,
                          p.NO_PROTOCOL, p.UNAUTHORIZED),
                         (4000, 4001, 4003, 4004, 4005, 4006, 4007, 4008, 4009))
        self.assertEqual((p.OVER_CAPACITY, p.RECONNECT, p.PONG_NOT_RECEIVED, p.INACTIVE,
                          p.CLIENT_EVENT_RATE_LIMIT), (4100, 4200, 4201, 4202, 4301))
        self.assertEqual([p.reconnect_advice(c) for c in (4001, 4009, 4100, 4201, 4301)],
                         ["never", "never", "backoff", "now", "other"])


class ClientFrameTests(unittest.TestCase):
    """Frames as pusher-js sends them (and the protocol reference shows them)."""

    def refused(self, frame, **limits) -> PusherError:
        text = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
        with self.assertRaises(PusherError) as caught:
            parse_frame(text, **limits)
        self.assertIsNone(caught.exception.code)
        return caught.exception

    def test_ping_pong(self):
        self.assertEqual(parse_frame('{"event":"pusher:ping","data":{}}').event, "pusher:ping")
        self.assertEqual(parse_frame('{"event":"pusher:pong","data":{}}').event, "pusher:pong")
        self.assertEqual(parse_frame('{"event":"pusher:ping"}').event, "pusher:ping")

    def test_subscribe_public(self):
        f = parse_frame('{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}')
        self.assertEqual((f.event, f.channel, f.kind, f.auth),
                         ("pusher:subscribe", "my-channel", p.PUBLIC, None))

    def test_subscribe_private(self):
        f = parse_frame(json.dumps({"event": "pusher:subscribe", "data": {
            "auth": "278d425bdf160c739803:58df8b0c", "channel": "private-foobar"}}))
        self.assertEqual((f.kind, f.auth), (p.PRIVATE, "278d425bdf160c739803:58df8b0c"))
        e = self.refused({"event": "pusher:subscribe", "data": {"channel": "private-foobar"}})
        self.assertIn("'auth'", e.message)

    def test_subscribe_presence_reference_example(self):
        """The presence example of the protocol reference, as sent."""
        text = ('{"event": "pusher:subscribe", "data": {"channel": "presence-example-channel", '
                '"auth": "<APP_KEY>:<server_generated_signature>", "channel_data": '
                '"{ \\"user_id\\": \\"<unique_user_id>\\", \\"user_info\\": { \\"name\\": '
                '\\"Phil Leggetter\\", \\"twitter\\": \\"@leggetter\\", \\"blogUrl\\":'
                '\\"http://blog.pusher.com\\" } }"}}')
        f = parse_frame(text)
        self.assertEqual(f.kind, p.PRESENCE)
        self.assertEqual(f.user_id, "<unique_user_id>")
        self.assertEqual(f.user_info["twitter"], "@leggetter")
        self.assertTrue(f.channel_data.startswith('{ "user_id"'))  # kept as signed

    def test_presence_user_id_number(self):
        """The auth guide's example signs ``{"user_id":10,...}``."""
        f = parse_frame(json.dumps({"event": "pusher:subscribe", "data": {
            "channel": "presence-foobar", "auth": "k:s",
            "channel_data": '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'}}))
        self.assertEqual((f.user_id, f.user_info), ("10", {"name": "Mr. Channels"}))

    def test_presence_refusals(self):
        def sub(channel_data):
            return {"event": "pusher:subscribe", "data": {
                "channel": "presence-x", "auth": "k:s", "channel_data": channel_data}}
        for bad in (None, "", "nope", "[1]", '{"user_info":{}}', '{"user_id":""}',
                    '{"user_id":true}', '{"user_id":{"a":1}}', json.dumps({"user_id": "x" * 201})):
            self.refused(sub(bad))
        self.assertIn("bytes", self.refused(sub(json.dumps({"user_id": "u", "user_info": {
            "bio": "x" * 200}})), max_event_bytes=100).message)

    def test_double_encoded_data(self):
        f = parse_frame(json.dumps({"event": "pusher:subscribe",
                                    "data": json.dumps({"channel": "news"})}))
        self.assertEqual(f.channel, "news")
        self.refused({"event": "pusher:subscribe", "data": "{nope"})
        self.refused({"event": "pusher:subscribe", "data": [1]})

    def test_unsubscribe(self):
        f = parse_frame('{"event":"pusher:unsubscribe","data":{"channel":"my-channel"}}')
        self.assertEqual((f.event, f.channel, f.kind), ("pusher:unsubscribe", "my-channel",
                                                        p.PUBLIC))
        self.refused({"event": "pusher:unsubscribe", "data": {}})

    def test_signin_reference_example(self):
        text = ('{"event": "pusher:signin", "data": {"auth": "<APP_KEY>::user::<sig>", '
                '"user_data": "{ \\"id\\": \\"<user_id>\\", \\"name\\": \\"Phil Leggetter\\" }"}}')
        f = parse_frame(text)
        self.assertEqual((f.event, f.user_id, f.user_info["name"]),
                         ("pusher:signin", "<user_id>", "Phil Leggetter"))
        self.assertEqual(f.user_data, '{ "id": "<user_id>", "name": "Phil Leggetter" }')

    def test_signin_refusals(self):
        for data in ({"user_data": '{"id":"1"}'}, {"auth": "k:s"},
                     {"auth": "k:s", "user_data": '{"id":1}'},
                     {"auth": "k:s", "user_data": '{"id":""}'},
                     {"auth": "k:s", "user_data": '{"name":"x"}'},
                     {"auth": "k:s", "user_data": '"1"'}):
            self.refused({"event": "pusher:signin", "data": data})

    def test_client_event_pusher_js(self):
        """``channel.trigger("client-event", {some: "data"})`` in pusher-js."""
        f = parse_frame('{"event":"client-event","data":{"some":"data"},'
                        '"channel":"private-channel"}')
        self.assertEqual((f.event, f.channel, f.kind, f.data),
                         ("client-event", "private-channel", p.PRIVATE, '{"some":"data"}'))
        f = parse_frame('{"event":"client-typing","data":"hi","channel":"presence-room"}')
        self.assertEqual((f.kind, f.data), (p.PRESENCE, "hi"))

    def test_client_event_refusals(self):
        e = self.refused({"event": "client-x", "channel": "public-news", "data": {}})
        self.assertIn("private- and presence-", e.message)
        self.refused({"event": "client-x", "data": {}})
        self.refused({"event": "client-" + "x" * 200, "channel": "private-a", "data": {}})
        e = self.refused({"event": "client-x", "channel": "private-a", "data": "x" * 11},
                         max_event_bytes=10)
        self.assertIn("10 bytes", e.message)

    def test_other_refusals(self):
        self.refused("not json")
        self.refused(b"\xff\xfe")
        self.refused("[]")
        self.refused('{"data":{}}')
        self.refused('{"event":5}')
        self.assertIn("unknown event", self.refused('{"event":"pusher:cache_miss"}').message)
        self.refused('{"event":"pusher_internal:member_added","channel":"presence-a"}')
        self.assertIn("client- events", self.refused('{"event":"my-event","channel":"a"}').message)

    def test_encrypted_refused_with_the_reason(self):
        e = self.refused({"event": "pusher:subscribe", "data": {
            "channel": "private-encrypted-x", "auth": "k:s"}})
        self.assertIn("private-encrypted- channels are not supported", e.message)
        self.assertIn("plaintext", e.message)

    def test_channel_limit(self):
        frame = {"event": "pusher:subscribe", "data": {"channel": "a" * 21}}
        self.assertIn("20", self.refused(frame, max_channel_name=20).message)
        self.assertEqual(parse_frame(json.dumps(frame)).channel, "a" * 21)


class ServerFrameTests(unittest.TestCase):
    """Server frames as the protocol reference shows them."""

    def test_connection_established_is_double_encoded(self):
        frame = p.connection_established("123.456")
        self.assertIsInstance(json.loads(frame)["data"], str)
        self.assertEqual(decoded(frame), {"event": "pusher:connection_established", "data": {
            "socket_id": "123.456", "activity_timeout": 120}})
        self.assertEqual(decoded(p.connection_established("1.2", 30))["data"]["activity_timeout"],
                         30)

    def test_subscription_succeeded(self):
        self.assertEqual(json.loads(p.subscription_succeeded("news")), {
            "event": "pusher_internal:subscription_succeeded", "channel": "news", "data": "{}"})

    def test_presence_subscription_succeeded_reference_example(self):
        members = {"11814b369700141b222a3f3791cec2d9": {"name": "Phil Leggetter",
                                                        "twitter": "@leggetter"},
                   "71dd6a29da2a4833336d2a964becf820": {"name": "Max Williams",
                                                        "twitter": "@maxthelion"}}
        frame = p.subscription_succeeded("presence-example-channel", members)
        self.assertEqual(decoded(frame), {
            "event": "pusher_internal:subscription_succeeded",
            "channel": "presence-example-channel",
            "data": {"presence": {"ids": list(members), "hash": members, "count": 2}}})

    def test_members(self):
        self.assertEqual(decoded(p.member_added("presence-x", "u1", {"name": "A"})), {
            "event": "pusher_internal:member_added", "channel": "presence-x",
            "data": {"user_id": "u1", "user_info": {"name": "A"}}})
        self.assertEqual(decoded(p.member_added("presence-x", "u1"))["data"], {"user_id": "u1"})
        self.assertEqual(decoded(p.member_removed("presence-x", "u1")), {
            "event": "pusher_internal:member_removed", "channel": "presence-x",
            "data": {"user_id": "u1"}})
        self.assertEqual(decoded(p.subscription_count("news", 3))["data"],
                         {"subscription_count": 3})

    def test_system_frames(self):
        self.assertEqual(json.loads(p.pong()), {"event": "pusher:pong", "data": {}})
        self.assertEqual(json.loads(p.ping()), {"event": "pusher:ping", "data": {}})
        self.assertEqual(json.loads(p.error("Over capacity", 4100)), {
            "event": "pusher:error", "data": {"message": "Over capacity", "code": 4100}})
        self.assertEqual(json.loads(p.error("bad frame"))["data"]["code"], None)
        self.assertEqual(json.loads(p.subscription_error("private-a", "Invalid signature")), {
            "event": "pusher:subscription_error", "channel": "private-a",
            "data": {"type": "AuthError", "error": "Invalid signature", "status": 401}})
        self.assertEqual(json.loads(p.signin_success('{"id":"12345"}')), {
            "event": "pusher:signin_success", "data": {"user_data": '{"id":"12345"}'}})

    def test_channel_event(self):
        self.assertEqual(json.loads(p.channel_event("my-event", "my-channel", '{"hello":"world"}')),
                         {"event": "my-event", "channel": "my-channel",
                          "data": '{"hello":"world"}'})
        frame = json.loads(p.channel_event("client-x", "presence-a", {"n": 1}, user_id="u1"))
        self.assertEqual(frame, {"event": "client-x", "channel": "presence-a",
                                 "data": '{"n":1}', "user_id": "u1"})

    def test_frames_are_utf8(self):
        frame = p.channel_event("e", "c", {"text": "héllo ☃"})
        self.assertIn("héllo ☃".encode(), frame)
        lone = p.channel_event("e", "c", "\ud800")           # no UTF-8 form: escaped
        self.assertEqual(json.loads(lone)["data"], "\ud800")


class DataTests(unittest.TestCase):
    """pushsvc data <-> Pusher's data string."""

    def test_to_pusher(self):
        self.assertEqual(p.data_text("plain text"), "plain text")
        self.assertEqual(p.data_text({"a": [1, 2.5, None, True]}), '{"a":[1,2.5,null,true]}')
        self.assertEqual(p.data_text(5), "5")
        self.assertEqual(p.data_text(None), "null")
        self.assertEqual(p.data_text({"t": "é"}), '{"t":"é"}')

    def test_from_pusher(self):
        self.assertEqual(p.data_value('{"a":1}'), {"a": 1})
        self.assertEqual(p.data_value("[1,2]"), [1, 2])
        self.assertEqual(p.data_value("5"), 5)
        self.assertEqual(p.data_value("hello"), "hello")
        self.assertEqual(p.data_value('"quoted"'), "quoted")
        self.assertEqual(p.data_value("NaN"), "NaN")
        self.assertEqual(p.data_value(""), "")

    def test_data_of_a_msg_frame(self):
        """Pusher's string straight out of the msg frame pushsvc encoded once."""
        from pushsvc.frames import message_frame, with_position
        from pushsvc.protocol import Address
        to = Address(group=('pusher.1:a,"data":1', "pusher.1:b"), user=('u"data"',))
        sender = {"session": 's,"data":', "user": "u1"}
        for value in ({"a": 1, "data": {"data": 2}}, [1, ',"data":'], "text", 'q"uote',
                      5, None, True, "é ☃", "\ud800"):
            frame = message_frame("n.0.x.M1", to, value, sender)
            self.assertEqual(p.data_of_message(frame), p.data_text(value), repr(value))
            self.assertEqual(p.data_of_message(with_position(frame, 7)), p.data_text(value))
        self.assertEqual(p.data_of_message(message_frame("i", Address(all=True), "x")), "x")
        # A lone surrogate has no UTF-8 form: the frame is ASCII-escaped, the
        # same JSON.
        text = p.data_of_message(message_frame("i", to, {"t": "\ud800 é"}))
        self.assertEqual(text, '{"t":"\\ud800 \\u00e9"}')
        self.assertEqual(json.loads(text), {"t": "\ud800 é"})

    def test_round_trips(self):
        for value in ({"a": 1}, [1, "x"], 5, "text", {"nested": {"é": [None]}}):
            self.assertEqual(p.data_value(p.data_text(value)), value)


class NamesTests(unittest.TestCase):

    def test_kinds(self):
        self.assertEqual([p.check_channel(n) for n in (
            "news", "private-a", "presence-a", "cache-a", "private-cache-a",
            "#server-to-user-42")],
            [p.PUBLIC, p.PRIVATE, p.PRESENCE, p.PUBLIC, p.PRIVATE, p.SERVER_TO_USER])
        self.assertEqual(p.channel_kind("private-encrypted-a"), p.ENCRYPTED)
        self.assertEqual(p.user_of_channel("#server-to-user-42"), "42")
        self.assertIsNone(p.user_of_channel("#server-to-user-"))
        self.assertIsNone(p.user_of_channel("news"))

    def test_codes(self):
        with self.assertRaises(PusherError) as caught:
            p.check_channel("a b", code=400)
        self.assertEqual(caught.exception.code, 400)

    def test_names_agree_with_the_sdk(self):
        """Our channel checks and the official SDK's refuse the same names
        (but for private-encrypted-, which we refuse on purpose)."""
        util = sdk().util
        names = ["news", "a-b_c=d@e,f.g;h", "private-x", "presence-x", "#server-to-user-7",
                 "a" * 200, "a" * 201, "a b", "a/b", "a:b", "ä", "a#b", "#server-to-user-a b",
                 "café", "tab\t", "a*", "[]", "{x}"]
        for name in names:
            try:
                util.validate_channel(name)
                theirs = True
            except ValueError:
                theirs = False
            try:
                p.check_channel(name)
                ours = True
            except PusherError:
                ours = False
            self.assertEqual(ours, theirs, name)

    def test_socket_ids(self):
        util = sdk().util
        self.assertEqual(p.new_socket_id(17, 123456789), "123456789.17")
        for counter, worker in ((0, 0), (1, 2 ** 30 - 1), (10 ** 12, 5)):
            sid = p.new_socket_id(counter, worker)
            self.assertEqual(util.validate_socket_id(sid), sid)
            self.assertEqual(p.check_socket_id(sid), sid)
        self.assertRaises(ValueError, p.new_socket_id, -1, 0)
        for bad in ("1", "1.2.3", "a.b", "-1.2", "1.2\n", "", None, 1.2, "1" * 40 + "." + "1" * 40):
            self.assertRaises(PusherError, p.check_socket_id, bad)
