"""The Pusher HTTP API on a real server, driven by the real official Pusher
server SDK (``pusher``, synchronous: run in a thread so the reactor serves),
and what its triggers deliver to pushsvc's own /ws clients; the
``[[pusher.apps]]`` tables of the config file."""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pusher
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus, PusherForbidden
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from pushsvc.config import ConfigError, build_settings
from pushsvc.ids import owner
from pushsvc.namespaces import Namespaces
from pushsvc.pusher.apps import SERVER_ONLY, PusherApp, check_apps, server_only_namespaces
from pushsvc.pusher.signatures import signed_params
from tests.helpers import ServerTestCase, eventually, run
from tests.test_pool import PoolTestCase

APP = {"id": "1001", "key": "app-key", "secret": "app-secret", "max_event_bytes": 2000}
OTHER = {"id": "1002", "key": "other-key", "secret": "other-secret"}
OFF = {"id": "1003", "key": "off-key", "secret": "off-secret", "enabled": False}
TABLES = [APP, OTHER, OFF]


def pusher_overrides(tables=TABLES):
    """Settings overrides for ``tables``, as build_settings makes them."""
    checked = check_apps(tables)
    return {"pusher_apps": checked, "namespaces": server_only_namespaces(checked, {})}


def group(channel: str, app_id: str = "1001") -> str:
    return f"pusher.{app_id}:{channel}"


class PusherConfigTests(unittest.TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    GOOD = ('[[pusher.apps]]\nid = "1001"\nkey = "app-key"\nsecret = "s1"\n'
            '[[pusher.apps]]\nid = "1002"\nkey = "k2"\nsecret = "s2"\nenabled = false\n'
            'max_event_bytes = 4096\n'
            '[namespaces."pusher.1002"]\njoin = "token"\n')

    def test_good_tables(self):
        settings = build_settings(self.write(self.GOOD))
        self.assertEqual([(a["id"], a["key"], a["enabled"], a["max_event_bytes"])
                          for a in settings.pusher_apps],
                         [("1001", "app-key", True, 10240), ("1002", "k2", False, 4096)])
        # Server-only by default; a table of its own wins where it says so.
        self.assertEqual(settings.namespaces["pusher.1001"], SERVER_ONLY)
        self.assertEqual(settings.namespaces["pusher.1002"],
                         {"join": "token", "client_send": "none"})
        names = Namespaces.from_settings(settings)
        self.assertEqual(names.of("pusher.1001:chat").join, "server")
        self.assertEqual(names.of("pusher.1001:chat").client_send, "none")
        self.assertEqual(names.of("lobby").join, "open")
        # Settings travel to the workers as JSON.
        self.assertEqual(type(settings).from_json(json.loads(json.dumps(
            settings.to_json()))), settings)

    def test_no_tables(self):
        settings = build_settings(self.write("[server]\nport = 9000\n"))
        self.assertEqual(settings.pusher_apps, [])
        self.assertEqual(settings.namespaces, {})

    def test_bad_tables(self):
        cases = [
            ('[[pusher.apps]]\nid = "1"\nkey = "k"\nsecret = ""\n',
             "pusher.apps[0].secret: must be a non-empty string"),
            ('[[pusher.apps]]\nid = "1"\nkey = "k"\n',
             "pusher.apps[0].secret: is required"),
            ('[[pusher.apps]]\nid = "1"\nkey = "k"\nsecret = "s"\n'
             '[[pusher.apps]]\nid = "1"\nkey = "k2"\nsecret = "s"\n',
             "pusher.apps[1].id: '1' is already the id of pusher.apps[0]"),
            ('[[pusher.apps]]\nid = "1"\nkey = "k"\nsecret = "s"\ncolour = 1\n',
             "pusher.apps[0].colour: unknown setting"),
            ('[pusher]\nhooks = 1\n', "pusher.hooks: unknown setting"),
            ('[pusher]\napps = 3\n', "pusher.apps: must be tables written [[pusher.apps]]"),
        ]
        for text, expected in cases:
            e = self.assertRaises(ConfigError, build_settings, self.write(text))
            self.assertTrue(str(e).startswith(expected), (str(e), expected))
            self.assertNotIn("\n", str(e))

    def test_reload_rereads_the_tables(self):
        path = self.write(self.GOOD)
        settings = build_settings(path)
        with open(path, "w") as f:
            f.write('[[pusher.apps]]\nid = "7"\nkey = "k7"\nsecret = "s7"\n')
        new = settings.reloaded(settings.reread())
        self.assertEqual([a["id"] for a in new.pusher_apps], ["7"])
        self.assertEqual(settings.needs_restart(new), [])
        self.assertIn("pusher.7", new.namespaces)
        self.assertNotIn("pusher.1001", new.namespaces)


class PusherSDKMixin:
    """The official SDK, each call in a thread."""

    def sdk(self, table=APP, **kw):
        client = pusher.Pusher(app_id=table["id"], key=table["key"], secret=table["secret"],
                               host="127.0.0.1", port=self.port, ssl=False, **kw)
        session = client._pusher_client.http.session
        # One connection per request: none is left open when the test ends.
        session.headers["Connection"] = "close"
        self.addCleanup(session.close)
        return client

    def call(self, method, *args, **kw):
        return deferToThread(method, *args, **kw)

    async def native(self, *groups, user="u1"):
        """A pushsvc /ws client, joined server-side (the namespace is server-only)."""
        c = await self.client(user=user)
        for g in groups:
            status, body = await self.http("POST", "/api/join",
                                           {"session": c.session, "group": g})
            self.assertEqual((status, body["sessions"]), (200, 1), body)
        return c

    async def raw(self, method, path, body=None):
        """(status, text) of one request."""
        from twisted.internet import reactor
        from twisted.web.client import Agent, FileBodyProducer, readBody
        from io import BytesIO
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        response = await Agent(reactor).request(method.encode(), (self.base + path).encode(),
                                                None, producer)
        return response.code, (await readBody(response)).decode()

    async def signed(self, method, path, body=b"", table=APP, timestamp=None,
                     params=None, tamper=None):
        """A request signed as the SDKs sign it; (status, content type, text)."""
        app = PusherApp.from_table(check_apps([table])[0])
        query = signed_params(app, method, path, body,
                              int(time.time() if timestamp is None else timestamp), params)
        if tamper:
            query.update(tamper)
        from twisted.internet import reactor
        from twisted.web.client import Agent, FileBodyProducer, readBody
        from io import BytesIO
        producer = FileBodyProducer(BytesIO(body)) if method == "POST" else None
        response = await Agent(reactor).request(
            method.encode(), f"{self.base}{path}?{urlencode(query)}".encode(), None, producer)
        text = (await readBody(response)).decode()
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
        self.last_headers = response.headers
        return response.code, ctype, text


class PusherHttpTests(PusherSDKMixin, ServerTestCase):
    def setUp(self):
        self.start_server(**pusher_overrides())

    @run
    async def test_trigger_reaches_native_clients(self):
        chat, news = await self.native(group("chat")), await self.native(group("news"))
        both = await self.native(group("chat"), group("news"))
        other = await self.native(group("chat", "1002"))
        sdk = self.sdk()
        self.assertEqual(await self.call(sdk.trigger, "chat", "my-event", {"a": 1}), {})
        self.assertEqual(await self.call(sdk.trigger, ["chat", "news"], "ev", "plain"), {})
        await chat.wait_for_messages(2)
        await both.wait_for_messages(3)
        await news.wait_for_messages(1)
        # data is Pusher's string, as the SDK sent it; to is the channel's group.
        self.assertEqual([(m["to"], m["data"]) for m in chat.messages],
                         [({"group": group("chat")}, '{"a": 1}'),
                          ({"group": group("chat")}, "plain")])
        self.assertEqual([m["data"] for m in news.messages], ["plain"])
        # Once per channel, as a Pusher client subscribed to both would get it.
        self.assertEqual(sorted(m["to"]["group"] for m in both.messages),
                         [group("chat"), group("chat"), group("news")])
        await other.barrier()
        self.assertEqual(other.messages, [])  # another app's channel of the same name

    @run
    async def test_trigger_batch(self):
        c = await self.native(group("a"), group("b"))
        sdk = self.sdk()
        result = await self.call(sdk.trigger_batch, [
            {"channel": "a", "name": "e1", "data": "one"},
            {"channel": "b", "name": "e2", "data": {"n": 2}},
        ])
        self.assertEqual(result, {})
        await c.wait_for_messages(2)
        self.assertEqual([(m["to"]["group"], m["data"]) for m in c.messages],
                         [(group("a"), "one"), (group("b"), '{"n": 2}')])

    @run
    async def test_native_clients_cannot_join_or_send(self):
        c = await self.client(user="u1")
        e = await self.assertFailure(c.request("join", group=group("chat")), Exception)
        self.assertEqual(e.code, "forbidden")
        c = await self.native(group("chat"))
        e = await self.assertFailure(
            c.request("send", to={"group": group("chat")}, data=1), Exception)
        self.assertEqual(e.code, "forbidden")

    @run
    async def test_channel_info(self):
        await self.native(group("chat"), user="u1")
        await self.native(group("chat"), user="u2")
        await self.native(group("presence-room"), user="u1")
        await self.native(group("presence-room"), user="u1")
        await self.native(group("presence-room"), user="u3")
        await self.native(group("x", "1002"))
        sdk = self.sdk()
        self.assertEqual(await self.call(sdk.channels_info),
                         {"channels": {"chat": {}, "presence-room": {}}})
        self.assertEqual(await self.call(sdk.channels_info, "presence-", ["user_count"]),
                         {"channels": {"presence-room": {"user_count": 2}}})
        self.assertEqual(await self.call(sdk.channels_info, "ch", ["subscription_count"]),
                         {"channels": {"chat": {"subscription_count": 2}}})
        self.assertEqual(await self.call(sdk.channel_info, "chat", ["subscription_count"]),
                         {"occupied": True, "subscription_count": 2})
        self.assertEqual(await self.call(sdk.channel_info, "presence-room",
                                         ["user_count", "subscription_count"]),
                         {"occupied": True, "user_count": 2, "subscription_count": 3})
        self.assertEqual(await self.call(sdk.channel_info, "empty"), {"occupied": False})
        self.assertEqual(await self.call(sdk.users_info, "presence-room"),
                         {"users": [{"id": "u1"}, {"id": "u3"}]})
        # With info, a trigger answers each channel's figures.
        self.assertEqual(
            await self.call(sdk._pusher_client.http.send_request,
                            _request(sdk, "POST", "/apps/1001/events",
                                     {"name": "e", "data": "d", "channels": ["chat", "none"],
                                      "info": "subscription_count"})),
            {"channels": {"chat": {"subscription_count": 2},
                          "none": {"subscription_count": 0}}})
        # Pusher's 400s: user_count outside presence.
        with self.assertRaises(PusherBadRequest):
            await self.call(sdk.channel_info, "chat", ["user_count"])
        with self.assertRaises(PusherBadRequest):
            await self.call(sdk.users_info, "chat")
        with self.assertRaises(PusherBadRequest):
            await self.call(sdk.channels_info, None, ["user_count"])

    @run
    async def test_terminate_user_connections(self):
        u1a, u1b = await self.native(user="u1"), await self.native(user="u1")
        u2 = await self.native(user="u2")
        sdk = self.sdk()
        self.assertEqual(await self.call(sdk.terminate_user_connections, "u1"), {})
        await u1a.closed
        await u1b.closed
        self.assertIn("Pusher app 1001", u1a.close_reason)
        await u2.barrier()
        self.assertIsNone(u2.close_code)
        # The /apps/{id} form too.
        status, _, text = await self.signed("POST", "/apps/1001/users/u2/terminate_connections",
                                            b"{}")
        self.assertEqual((status, text), (200, "{}\n"))
        await u2.closed

    @run
    async def test_signature_errors(self):
        good = {**APP}
        cases = [
            (dict(table={**APP, "secret": "wrong"}), 401, "invalid auth_signature"),
            (dict(timestamp=time.time() - 3600), 401, "auth_timestamp"),
            (dict(table={"id": "1001", "key": "nobody", "secret": "x"}), 401,
             "unknown auth_key"),
            (dict(tamper={"body_md5": "0" * 32}), 401, "invalid auth_signature"),
            (dict(table=OFF, path="/apps/1003/events"), 403, "disabled"),
            (dict(table=OTHER), 401, "is not the key of app '1001'"),
            (dict(path="/apps/1001/nothing"), 404, "no such resource"),
            (dict(method="GET"), 405, "takes POST"),
            (dict(path="/apps/1001/channels"), 405, "takes GET"),
        ]
        body = json.dumps({"name": "e", "data": "d", "channel": "c"}).encode()
        for kw, status, words in cases:
            method, path = kw.pop("method", "POST"), kw.pop("path", "/apps/1001/events")
            kw.setdefault("table", good)
            got, ctype, text = await self.signed(method, path, body, **kw)
            self.assertEqual(got, status, (kw, text))
            self.assertIn(words, text)
            self.assertTrue(ctype.startswith("text/plain"), ctype)
            if status == 405:
                self.assertEqual(self.last_headers.getRawHeaders(b"allow"),
                                 [b"POST" if method == "GET" else b"GET"])
        # An unsigned request; a body that is not the one signed.
        status, text = await self.raw("POST", "/apps/1001/events", b'{"name": "e"}')
        self.assertEqual((status, text), (401, "missing query parameter auth_key (the "
                                               "request must be signed with the app's key "
                                               "and secret)\n"))
        # Through the SDK, its exceptions.
        with self.assertRaises(PusherBadAuth):
            await self.call(self.sdk({**APP, "secret": "wrong"}).trigger, "c", "e", "d")
        with self.assertRaises(PusherForbidden):
            await self.call(self.sdk(OFF).trigger, "c", "e", "d")

    @run
    async def test_tampered_body(self):
        app = PusherApp.from_table(check_apps([APP])[0])
        signed_body = json.dumps({"name": "e", "data": "d", "channel": "c"}).encode()
        query = signed_params(app, "POST", "/apps/1001/events", signed_body, int(time.time()))
        status, text = await self.raw("POST", f"/apps/1001/events?{urlencode(query)}",
                                      signed_body.replace(b'"d"', b'"x"'))
        self.assertEqual((status, text), (400, "body_md5 is not the MD5 of the body\n"))

    @run
    async def test_bad_input_gets_pusher_errors(self):
        c = await self.native(group("c"))
        big = "x" * 2001  # APP's max_event_bytes is 2000
        cases = [
            ({"name": "e", "data": big, "channel": "c"}, 413, "limit is 2000"),
            ({"name": "e", "data": "d", "channels": [f"c{i}" for i in range(101)]}, 400,
             "1 to 100"),
            ({"name": "e", "data": "d", "channels": []}, 400, "1 to 100"),
            ({"name": "pusher:x", "data": "d", "channel": "c"}, 400, "pusher:"),
            ({"name": "e", "data": "d", "channel": "bad channel"}, 400, "channel"),
            ({"name": "e", "data": "d", "channel": "private-encrypted-x"}, 400, "encrypted"),
            ({"name": "e", "channel": "c"}, 400, "data is required"),
            ([1, 2], 400, "JSON object"),
        ]
        for body, status, words in cases:
            got, ctype, text = await self.signed("POST", "/apps/1001/events",
                                                 json.dumps(body).encode())
            self.assertEqual((got, ctype), (status, "text/plain; charset=utf-8"), text)
            self.assertIn(words, text)
        got, _, text = await self.signed("POST", "/apps/1001/events", b"\xff{not json")
        self.assertEqual(got, 400, text)
        # The whole body: over the cap for a trigger of this app.
        got, _, text = await self.signed("POST", "/apps/1001/events", b" " * 50000)
        self.assertEqual(got, 413, text)
        batch = {"batch": [{"name": "e", "data": "d", "channel": "c"}] * 11}
        got, _, text = await self.signed("POST", "/apps/1001/batch_events",
                                         json.dumps(batch).encode())
        self.assertEqual((got, "1 to 10" in text), (400, True), text)
        # Nothing of it was published.
        await c.barrier()
        self.assertEqual(c.messages, [])
        # The SDK itself refuses 101 channels; the server's 413 reaches it.
        with self.assertRaises(PusherBadStatus) as caught:
            await self.call(self.sdk().trigger, "c", "e", big)
        self.assertIn("413", str(caught.exception))

    @run
    async def test_reload_and_api_keys(self):
        """A reload applies new tables to new requests; pushsvc API keys do
        not apply to the Pusher routes (signatures do)."""
        from dataclasses import replace
        NEW = {"id": "2002", "key": "new-key", "secret": "new-secret"}
        key = "k" * 32
        self.assertIsNone(self.server.reload(replace(
            self.server.settings, api_keys=[key], **pusher_overrides([NEW]))))
        with self.assertRaises(PusherBadAuth):
            await self.call(self.sdk().trigger, "c", "e", "d")
        c = await self.client(user="u1")
        status, _ = await self.http("POST", "/api/join",
                                    {"session": c.session, "group": group("c", "2002")},
                                    headers={"Authorization": "Bearer " + key})
        self.assertEqual(status, 200)
        self.assertEqual(await self.call(self.sdk(NEW).trigger, "c", "e", "d"), {})
        await c.wait_for_messages(1)
        self.assertEqual(c.messages[0]["data"], "d")


def _request(sdk, method, path, params):
    from pusher.http import Request
    return Request(sdk._pusher_client, method, path, params)


class PusherPoolTests(PusherSDKMixin, PoolTestCase):
    @run
    async def test_trigger_reaches_both_workers_and_info_counts_both(self):
        await self.start_pool(2, **pusher_overrides())
        clients = [await self.client(user=f"u{i % 3}") for i in range(20)]
        by_worker = {owner(c.session) for c in clients}
        self.assertEqual(len(by_worker), 2)
        status, body = await self.http("POST", "/api/join", {"user": "u0", "group":
                                                             group("presence-p")})
        for c in clients:
            await self.http("POST", "/api/join", {"session": c.session, "group": group("c")})
        sdk = self.sdk()
        await self.call(sdk.trigger, ["c"], "e", "to all")
        await eventually(lambda: all(len(c.messages) == 1 for c in clients),
                         what="the trigger at every client")
        self.assertEqual({c.messages[0]["data"] for c in clients}, {"to all"})
        self.assertEqual(await self.call(sdk.channel_info, "c", ["subscription_count"]),
                         {"occupied": True, "subscription_count": 20})
        u0 = sum(1 for i in range(20) if i % 3 == 0)
        self.assertEqual(await self.call(sdk.channel_info, "presence-p",
                                         ["user_count", "subscription_count"]),
                         {"occupied": True, "user_count": 1, "subscription_count": u0})
        self.assertEqual(await self.call(sdk.channels_info, None, ["subscription_count"]),
                         {"channels": {"c": {"subscription_count": 20},
                                       "presence-p": {"subscription_count": u0}}})
