"""Pusher signatures (pushsvc.pusher.signatures): Pusher's worked examples,
and what the REAL official Python server SDK (``pusher``) signs -- channel
authorization, signin, HTTP API requests built by the SDK but never sent --
checked by ours; our webhooks checked by the SDK.  No sockets."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

from twisted.trial import unittest

from pushsvc.pusher import signatures as s
from pushsvc.pusher.apps import Apps, check_apps
from pushsvc.pusher.events import webhook_body, webhook_event
from pushsvc.pusher.protocol import PusherError, parse_frame
from tests.test_pusher_protocol import sdk

# The credentials of Pusher's worked examples.
KEY, SECRET, APP_ID = "278d425bdf160c739803", "7ad3773142a6692b25b8", "3"


def make_apps(**switches) -> Apps:
    return Apps(check_apps([{"id": APP_ID, "key": KEY, "secret": SECRET, **switches},
                            {"id": "4", "key": "other-key", "secret": "other-secret"}]))


class WorkedExampleTests(unittest.TestCase):
    """The examples of Pusher's auth guide and HTTP API reference, by value."""

    def setUp(self):
        self.app = make_apps().by_id(APP_ID)

    def test_private_channel(self):
        self.assertEqual(s.channel_auth(self.app, "1234.1234", "private-foobar"),
                         "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135"
                         "bf843651c3a4")

    def test_presence_channel(self):
        # The guide's digest was made before its text renamed "Mr. Pusher" to
        # "Mr. Channels": it is the digest of the old name.
        data = '{"user_id":10,"user_info":{"name":"Mr. Pusher"}}'
        auth = s.channel_auth(self.app, "1234.1234", "presence-foobar", data)
        self.assertEqual(auth, "278d425bdf160c739803:afaed3695da2ffd16931f457e338e6c9f2921fa133ce7"
                               "dac49f529792be6304c")
        s.check_channel_auth(self.app, "1234.1234", "presence-foobar", auth, data)

    def test_user_authentication(self):
        self.assertEqual(s.user_auth(self.app, "1234.1234", '{"id":"12345"}'),
                         "278d425bdf160c739803:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16"
                         "ab43aa6de336ba")

    def test_http_api(self):
        body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
        self.assertEqual(s.body_md5(body), "ec365a775a4cd0599faeb73354201b6f")
        query = {"auth_key": [KEY], "auth_timestamp": ["1353088179"], "auth_version": ["1.0"],
                 "body_md5": ["ec365a775a4cd0599faeb73354201b6f"],
                 "auth_signature": ["da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f"
                                    "3f457e6c"]}
        app = s.check_request("POST", "/apps/3/events", query, body, make_apps(), 1353088179 + 5)
        self.assertEqual(app.id, APP_ID)
        self.assertEqual(s.signed_params(app, "POST", "/apps/3/events", body, 1353088179),
                         {k: v[0] for k, v in query.items()})

    def test_query_string_rules(self):
        """Keys lower-cased and sorted, values not escaped (the reference's example)."""
        self.assertEqual(s.query_string({"Name": "Something else", "auth_key": "foo"}),
                         "auth_key=foo&name=Something else")


class ChannelAuthTests(unittest.TestCase):
    """Auth made by the SDK, checked by us, with the frame pusher-js sends."""

    def setUp(self):
        self.pusher = sdk().Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
        self.app = make_apps().by_id(APP_ID)

    def subscribe(self, channel: str, answer: dict):
        """The pusher:subscribe pusher-js sends with the backend's answer."""
        return parse_frame(json.dumps({"event": "pusher:subscribe", "data": {
            "auth": answer["auth"], "channel_data": answer.get("channel_data"),
            "channel": channel}}))

    def test_private(self):
        answer = self.pusher.authenticate(channel="private-orders", socket_id="77.1234")
        frame = self.subscribe("private-orders", answer)
        s.check_channel_auth(self.app, "77.1234", frame.channel, frame.auth)
        for socket_id, channel in (("77.1235", "private-orders"), ("77.1234", "private-order")):
            self.assertRaises(PusherError, s.check_channel_auth, self.app, socket_id, channel,
                              frame.auth)

    def test_presence(self):
        answer = self.pusher.authenticate(channel="presence-room", socket_id="5.6",
                                          custom_data={"user_id": "u1",
                                                       "user_info": {"name": "Ann é"}})
        frame = self.subscribe("presence-room", answer)
        self.assertEqual((frame.user_id, frame.user_info), ("u1", {"name": "Ann é"}))
        s.check_channel_auth(self.app, "5.6", frame.channel, frame.auth, frame.channel_data)
        e = self.assertRaises(PusherError, s.check_channel_auth, self.app, "5.6",
                              frame.channel, frame.auth, frame.channel_data.replace("u1", "u2"))
        self.assertIsNone(e.code)
        self.assertIn("HMAC SHA256", e.message)
        self.assertNotIn(SECRET, e.message)

    def test_signin(self):
        answer = self.pusher.authenticate_user(socket_id="5.6",
                                               user_data={"id": "12345", "name": "Ann"})
        frame = parse_frame(json.dumps({"event": "pusher:signin", "data": answer}))
        self.assertEqual(frame.user_id, "12345")
        s.check_user_auth(self.app, "5.6", frame.auth, frame.user_data)
        self.assertRaises(PusherError, s.check_user_auth, self.app, "5.7", frame.auth,
                          frame.user_data)
        # a channel signature is not a signin signature
        self.assertRaises(PusherError, s.check_user_auth, self.app, "5.6",
                          s.channel_auth(self.app, "5.6", frame.user_data), frame.user_data)

    def test_wrong_key_or_form(self):
        other = sdk().Pusher(app_id="4", key="other-key", secret="other-secret")
        answer = other.authenticate(channel="private-orders", socket_id="1.1")
        self.assertRaises(PusherError, s.check_channel_auth, self.app, "1.1", "private-orders",
                          answer["auth"])
        sig = answer["auth"].partition(":")[2]
        for auth in (sig, f"{KEY}{sig}", f"{KEY}:", "", None, 5, f"{KEY}:{sig}é"):
            self.assertRaises(PusherError, s.check_channel_auth, self.app, "1.1",
                              "private-orders", auth)

    def test_same(self):
        self.assertTrue(s.same("abc", "abc"))
        self.assertFalse(s.same("abc", "abd"))
        self.assertFalse(s.same("é", "e"))
        self.assertTrue(s.same("\ud800", "\ud800"))


class RequestTests(unittest.TestCase):
    """HTTP API requests as the SDK builds them (never sent), checked by
    ``check_request`` as the edge would see them."""

    def setUp(self):
        self.pusher = sdk().Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="push.test",
                                   port=8080, ssl=False)
        self.client = self.pusher._pusher_client
        self.apps = make_apps()

    def built(self, method: str, *args, **kwargs):
        """The request the SDK would send: (method, path, query, body)."""
        request = getattr(self.client, method).make_request(*args, **kwargs)
        url = urlsplit(request.url)
        self.assertEqual(url.netloc, "push.test:8080")
        return request.method, url.path, parse_qs(url.query, keep_blank_values=True), \
            request.body

    def check(self, request, apps=None, now=None):
        method, path, query, body = request
        return s.check_request(method, path, query, body, apps or self.apps,
                               time.time() if now is None else now)

    def refused(self, request, **kwargs) -> PusherError:
        with self.assertRaises(PusherError) as caught:
            self.check(request, **kwargs)
        return caught.exception

    def test_requests_of_the_sdk(self):
        requests = [
            self.built("trigger", ["chat", "presence-room"], "my-event", {"text": "hi é"}),
            self.built("trigger", "chat", "e", "plain", socket_id="1.2"),
            self.built("trigger_batch", [{"channel": "a", "name": "e", "data": {"n": 1}},
                                         {"channel": "b", "name": "e", "data": "x"}]),
            self.built("channels_info", "presence-", ["user_count"]),
            self.built("channels_info"),
            self.built("channel_info", "presence-room", ["user_count", "subscription_count"]),
            self.built("users_info", "presence-room"),
            self.built("terminate_user_connections", "u1"),   # a POST with body {}
        ]
        for request in requests:
            self.assertEqual(self.check(request).id, APP_ID, request)
        self.assertEqual(requests[0][0], "POST")
        self.assertEqual(requests[5][2]["info"], ["user_count,subscription_count"])

    def test_tampered_body(self):
        method, path, query, body = self.built("trigger", "chat", "e", {"amount": 10})
        tampered = body.replace(b"10", b"99")
        e = self.refused((method, path, query, tampered))
        self.assertEqual(e.code, 400)
        self.assertIn("body_md5", e.message)
        e = self.refused((method, path, query, body + b" "))
        self.assertEqual(e.code, 400)
        # a body on a request whose md5 was left out of the signature
        del query["body_md5"]
        self.assertEqual(self.refused((method, path, query, body)).code, 401)

    def test_tampered_query_or_path(self):
        method, path, query, body = self.built("channels_info", "presence-", ["user_count"])
        self.assertEqual(self.refused((method, path, {**query, "filter_by_prefix": [""]}, body))
                         .code, 401)
        self.assertEqual(self.refused((method, path, {**query, "extra": ["1"]}, body)).code, 401)
        self.assertEqual(self.refused(("POST", path, query, body)).code, 401)
        self.assertEqual(self.refused((method, path + "/x", query, body)).code, 401)

    def test_stale_timestamp(self):
        request = self.built("trigger", "chat", "e", "x")
        now = time.time()
        self.check(request, now=now + 590)
        self.check(request, now=now - 590)
        e = self.refused(request, now=now + 620)
        self.assertEqual(e.code, 401)
        self.assertIn("600 s", e.message)
        self.assertEqual(self.refused(request, now=now - 620).code, 401)

    def test_unknown_key_or_wrong_secret(self):
        request = self.built("trigger", "chat", "e", "x")
        e = self.refused(request, apps=Apps(check_apps([
            {"id": APP_ID, "key": "another-key", "secret": SECRET}])))
        self.assertEqual(e.code, 401)
        self.assertIn("unknown auth_key", e.message)
        e = self.refused(request, apps=Apps(check_apps([
            {"id": APP_ID, "key": KEY, "secret": "not-the-secret"}])))
        self.assertEqual(e.code, 401)
        self.assertIn("auth_signature", e.message)
        self.assertNotIn("not-the-secret", e.message)

    def test_key_of_another_app(self):
        """A request signed by app 4 cannot act on app 3."""
        other = sdk().Pusher(app_id="4", key="other-key", secret="other-secret")
        request = other._pusher_client.trigger.make_request("chat", "e", "x")
        query = parse_qs(urlsplit(request.url).query)
        self.assertEqual(s.check_request("POST", "/apps/4/events", query, request.body,
                                         self.apps, time.time()).id, "4")
        e = self.assertRaises(PusherError, s.check_request, "POST", "/apps/3/events", query,
                              request.body, self.apps, time.time())
        self.assertEqual(e.code, 401)

    def test_missing_or_bad_parameters(self):
        method, path, query, body = self.built("users_info", "presence-room")
        for name in ("auth_key", "auth_timestamp", "auth_version", "auth_signature"):
            short = {k: v for k, v in query.items() if k != name}
            e = self.refused((method, path, short, body))
            self.assertEqual(e.code, 401)
            self.assertIn(name, e.message)
        self.assertEqual(self.refused((method, path, {**query, "auth_version": ["2.0"]}, body))
                         .code, 401)
        self.assertEqual(self.refused((method, path, {**query, "auth_timestamp": ["soon"]},
                                       body)).code, 401)
        e = self.refused((method, path, {**query, "auth_key": [KEY, KEY]}, body))
        self.assertEqual(e.code, 400)

    def test_disabled_app(self):
        e = self.refused(self.built("trigger", "chat", "e", "x"),
                         apps=make_apps(enabled=False))
        self.assertEqual(e.code, 403)

    def test_our_signed_params(self):
        """What ``signed_params`` makes, check_request accepts."""
        app = self.apps.by_id(APP_ID)
        body = b'{"name":"e","channel":"chat","data":"x"}'
        params = s.signed_params(app, "POST", "/apps/3/events", body, 1700000000)
        query = {k: [v] for k, v in params.items()}
        self.assertIs(s.check_request("POST", "/apps/3/events", query, body, self.apps,
                                      1700000000), app)


class WebhookTests(unittest.TestCase):
    """Our webhooks, validated by the SDK as a backend would."""

    def test_sdk_validates_our_webhook(self):
        pusher = sdk().Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
        app = make_apps().by_id(APP_ID)
        body = webhook_body([webhook_event("channel_occupied", "chat"),
                             webhook_event("member_added", "presence-room", user_id="u1")],
                            int(time.time() * 1000))
        headers = s.webhook_headers(app, body)
        self.assertEqual(headers["X-Pusher-Key"], KEY)
        self.assertTrue(s.check_webhook(app, KEY, headers["X-Pusher-Signature"], body))
        got = pusher.validate_webhook(key=headers["X-Pusher-Key"],
                                      signature=headers["X-Pusher-Signature"], body=body)
        self.assertEqual(got["events"][1], {"name": "member_added", "channel": "presence-room",
                                            "user_id": "u1"})
        self.assertIsNone(pusher.validate_webhook(key=KEY, signature=headers[
            "X-Pusher-Signature"], body=body.replace(b"u1", b"u2")))
        self.assertFalse(s.check_webhook(app, KEY, headers["X-Pusher-Signature"],
                                         body.replace(b"u1", b"u2")))
        self.assertFalse(s.check_webhook(app, "other-key", headers["X-Pusher-Signature"], body))
