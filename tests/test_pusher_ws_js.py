"""The real pusher-js and Laravel Echo (npm, in Node) against /app/{key},
with triggers from the official Python server SDK: connection, public,
private and presence channels, client events, sign-in and socket_id
exclusion; in one process, in a pool of two workers, and on two nodes
through Redis.

They live in tests/pusherjs/node_modules (``make pusherjs``, which ``make
test`` runs); without node or them, these tests are skipped, or fail when
CI=true.  tests/pusherjs/client.js (pusher-js in Node), browser.js (its
browser build in headless Chromium, as test_browser.py drives it) and
echo.mjs (Echo) are one client each, driven by JSON lines; drive.js is the
pusher-js client both of the first two run.
"""

from __future__ import annotations

import json
import os
import shutil

import pusher
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from tests.helpers import ServerTestCase, eventually, run
from tests.test_browser import missing_tools
from tests.test_pool import PoolTestCase
from tests.test_redis_broker import NodesTestCase
from tests.test_pusher_http import PusherSDKMixin, pusher_overrides

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pusherjs")
SCRIPT = os.path.join(HERE, "client.js")
ECHO = os.path.join(HERE, "echo.mjs")
BROWSER = os.path.join(HERE, "browser.js")
NODE = shutil.which("node")
MISSING = (None if NODE and all(os.path.isdir(os.path.join(HERE, "node_modules", package))
                                for package in ("pusher-js", "laravel-echo"))
           else "node, or pusher-js or laravel-echo in tests/pusherjs/node_modules, is "
                "missing (make pusherjs)")
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError(MISSING)

APP = {"id": "1001", "key": "app-key", "secret": "app-secret", "client_events": True}
QUIET = {"id": "1002", "key": "quiet-key", "secret": "quiet-secret"}
TABLES = [APP, QUIET]
# The same apps in a config file (for the nodes of TwoNodeTests).
APPS_TOML = "".join(
    f'[[pusher.apps]]\nid = "{t["id"]}"\nkey = "{t["key"]}"\nsecret = "{t["secret"]}"\n'
    f'client_events = {"true" if t.get("client_events") else "false"}\n' for t in TABLES)


class PusherJs(ProcessProtocol):
    """One pusher-js client in a Node child process."""

    def __init__(self):
        self.seen: list[dict] = []
        self._buffer = b""
        self.stderr = b""
        self.ended = Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)

    def kill(self) -> Deferred:
        """End the process (if it runs); fires once it has ended."""
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        return self.ended

    def outReceived(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        self.seen += [json.loads(line) for line in lines if line.strip()]

    def errReceived(self, data):
        self.stderr += data

    def send(self, **command) -> None:
        self.transport.write(json.dumps(command).encode() + b"\n")

    def all(self, on: str, **fields) -> list[dict]:
        return [e for e in self.seen if e["on"] == on
                and all(e.get(k) == v for k, v in fields.items())]

    async def wait(self, on: str, **fields) -> dict:
        await eventually(lambda: self.all(on, **fields), 15,
                         f"{on} {fields} (seen: {self.seen[-5:]}, stderr: {self.stderr[-500:]})")
        return self.all(on, **fields)[0]


class PusherJsMixin:
    """pusher-js clients and the Python SDK for a test case with a server."""

    if MISSING:
        skip = MISSING

    async def js(self, key: str = "app-key", secret: str = "app-secret", *more: str,
                 script: str = SCRIPT, **env: str) -> PusherJs:
        """A client (client.js, or ``script``) connected to the server."""
        client = PusherJs()
        reactor.spawnProcess(client, NODE, [NODE, script, str(self.port), key, secret, *more],
                             env={**os.environ, **env}, path=HERE)
        self.addCleanup(client.kill)
        client.socket_id = (await client.wait("connected"))["socket_id"]
        return client

    def sdk(self) -> pusher.Pusher:
        return PusherSDKMixin.sdk(self, APP)

    def trigger(self, *args, **kwargs):
        return deferToThread(self.sdk().trigger, *args, **kwargs)

    async def subscribed(self, client: PusherJs, channel: str, **presence) -> dict:
        client.send(do="subscribe", channel=channel, **presence)
        return await client.wait("subscribed", channel=channel)


class OneProcessTests(PusherJsMixin, ServerTestCase):
    def setUp(self):
        self.start_server(**pusher_overrides(TABLES))

    @run
    async def test_triggers_and_pushes_reach_subscribers_but_the_excluded_socket(self):
        """A trigger from the SDK reaches every subscriber with its event
        name and data, except the socket_id it names; a pushsvc push to the
        channel's group arrives as ``message``."""
        a, b = await self.js(), await self.js()
        for c in (a, b):
            await self.subscribed(c, "orders")
        await self.trigger("orders", "shipped", {"id": 7})
        for c in (a, b):
            event = await c.wait("event", event="shipped")
            self.assertEqual((event["channel"], event["data"]), ("orders", {"id": 7}))
        await self.trigger("orders", "paid", {"id": 8}, socket_id=a.socket_id)
        await b.wait("event", event="paid")
        status, _ = await self.http("POST", "/api/push", {"to": {"group": "pusher.1001:orders"},
                                                          "data": "last"})
        self.assertEqual(status, 202)
        await a.wait("event", event="message", data="last")
        self.assertEqual(a.all("event", event="paid"), [])  # excluded, and it came before
        a.send(do="unsubscribe", channel="orders")
        await eventually(lambda: self.engine.registry.group_members("pusher.1001:orders")
                         .__len__() == 1, what="a left the group")

    @run
    async def test_private_channels_and_client_events(self):
        """A signed private subscription succeeds, a bad signature gets a
        subscription error; a client event reaches the other subscribers,
        not its sender; an app without client events refuses them."""
        a, b = await self.js(), await self.js()
        await self.subscribed(a, "private-room")
        await self.subscribed(b, "private-room")
        a.send(do="subscribe", channel="private-bad-room")
        error = await a.wait("subscription_error", channel="private-bad-room")
        self.assertEqual(error["error"]["status"], 401)
        a.send(do="whisper", channel="private-room", event="client-typing", data={"x": 1})
        event = await b.wait("event", event="client-typing")
        self.assertEqual((event["channel"], event["data"]), ("private-room", {"x": 1}))
        await self.trigger("private-room", "after", "x")
        await a.wait("event", event="after")
        self.assertEqual(a.all("event", event="client-typing"), [])
        quiet = await self.js("quiet-key", "quiet-secret")
        await self.subscribed(quiet, "private-room")
        quiet.send(do="whisper", channel="private-room", event="client-typing", data=1)
        error = await quiet.wait("error")
        self.assertIn("not enabled", json.dumps(error))

    @run
    async def test_presence_members_come_and_go(self):
        """The member list of subscription_succeeded, member_added for a
        user's first connection only, member_removed after its last, user_id
        on a presence client event; the HTTP API lists the users."""
        a = await self.js()
        first = await self.subscribed(a, "presence-room", user="alice", info={"name": "A"})
        self.assertEqual(first["members"], {"alice": {"name": "A"}})
        b = await self.js()
        second = await self.subscribed(b, "presence-room", user="bob")
        self.assertEqual(second["members"], {"alice": {"name": "A"}, "bob": None})
        await a.wait("member_added", id="bob")
        b2 = await self.js()  # bob's second connection: nobody is told
        await self.subscribed(b2, "presence-room", user="bob")
        users = await deferToThread(self.sdk().users_info, "presence-room")
        self.assertEqual(sorted(u["id"] for u in users["users"]), ["alice", "bob"])
        b.send(do="whisper", channel="presence-room", event="client-hi", data="yo")
        event = await a.wait("event", event="client-hi")
        self.assertEqual(event["user_id"], "bob")
        b.send(do="disconnect")
        await eventually(lambda: len(self.engine.registry.group_members(
            "pusher.1001:presence-room")) == 2, what="bob's first connection gone")
        b2.send(do="disconnect")
        await a.wait("member_removed", id="bob")
        self.assertEqual(len(a.all("member_added")), 1, a.seen)
        self.assertEqual(len(a.all("member_removed")), 1, a.seen)

    @run
    async def test_signin_and_send_to_user(self):
        """pusher:signin binds the connection to the user: the SDK's
        send_to_user reaches it on #server-to-user-ID, and so does a pushsvc
        push to the user."""
        a = await self.js()
        a.send(do="signin", user="carol")
        await a.wait("signed_in")
        await eventually(lambda: self.engine.registry.user_sessions("carol"),
                         what="carol signed in")
        await eventually(lambda: "pusher.1001:#server-to-user-carol" in next(iter(
            self.engine.registry.user_sessions("carol"))).groups, what="the user channel")
        await deferToThread(self.sdk().send_to_user, "carol", "note", {"n": 1})
        event = await a.wait("event", event="note")
        self.assertEqual(event["channel"], "#server-to-user-carol")
        await self.http("POST", "/api/push", {"to": {"user": "carol"}, "data": 5})
        event = await a.wait("event", event="message")
        self.assertEqual((event["channel"], event["data"]), (None, 5))

    @run
    async def test_unknown_app_is_refused(self):
        client = PusherJs()
        reactor.spawnProcess(client, NODE, [NODE, SCRIPT, str(self.port), "nope", "x"],
                             env=os.environ.copy(), path=HERE)
        self.addCleanup(client.kill)
        error = await client.wait("error")
        self.assertEqual(error["error"]["data"]["code"], 4001, error)


class EchoTests(PusherJsMixin, ServerTestCase):
    """Laravel Echo 2.5 over pusher-js, as a Laravel front end uses it, with
    the backend's broadcasts made by the Python SDK as Laravel's Pusher
    driver makes them (event ``App\\Events\\NAME``, the sender's socket id)."""

    def setUp(self):
        self.start_server(**pusher_overrides(TABLES))

    async def echo(self, user: str, name: str) -> PusherJs:
        return await self.js("app-key", "app-secret", user, name, script=ECHO)

    @run
    async def test_listen_whisper_and_presence(self):
        alice, bob = await self.echo("1", "Alice"), await self.echo("2", "Bob")
        for client in (alice, bob):
            client.send(do="listen", channel="orders", event="OrderShipped")
            client.send(do="private", channel="room", whisper="typing")
            await client.wait("subscribed", channel="orders")
            await client.wait("subscribed", channel="private-room")
        await self.trigger("orders", "App\\Events\\OrderShipped", {"order": {"id": 9}},
                           socket_id=bob.socket_id)  # Laravel's toOthers()
        event = await alice.wait("event", channel="orders")
        self.assertEqual(event["data"], {"order": {"id": 9}})
        bob.send(do="whisper", channel="room", event="typing", data={"who": "Bob"})
        whisper = await alice.wait("whisper", channel="room")
        self.assertEqual(whisper["data"], {"who": "Bob"})
        alice.send(do="join", channel="chat")
        self.assertEqual((await alice.wait("here"))["users"], [{"id": "1", "name": "Alice"}])
        bob.send(do="join", channel="chat")
        here = await bob.wait("here")
        self.assertEqual(sorted(u["name"] for u in here["users"]), ["Alice", "Bob"])
        self.assertEqual((await alice.wait("joining"))["user"], {"id": "2", "name": "Bob"})
        bob.send(do="disconnect")
        self.assertEqual((await alice.wait("leaving"))["user"], {"id": "2", "name": "Bob"})
        self.assertEqual(bob.all("event"), [])
        self.assertEqual(bob.all("whisper"), [])


class BrowserTests(PusherJsMixin, ServerTestCase):
    """pusher-js's browser build in a real headless Chromium (the browser's
    own WebSocket, from a page with an origin), with a Node client beside it
    (tests/pusherjs/browser.js; chromium and playwright-core as for
    test_browser.py: ``make browser``)."""

    timeout = 90

    def setUp(self):
        node, self.chromium, missing = missing_tools()
        if missing:
            if os.environ.get("CI") == "true":
                self.fail("; ".join(missing) + "; CI=true, so this is a failure")
            raise SkipTest("; ".join(missing))
        self.start_server(**pusher_overrides(TABLES))

    @run
    async def test_a_browser_client(self):
        page = await self.js(script=BROWSER, PUSHSVC_CHROMIUM=self.chromium)
        node = await self.js()
        for client, user in ((page, "pat"), (node, "nod")):
            await self.subscribed(client, "presence-desk", user=user, info={"n": user})
        self.assertEqual(page.all("subscribed")[0]["members"], {"pat": {"n": "pat"}})
        await page.wait("member_added", id="nod")
        node.send(do="whisper", channel="presence-desk", event="client-ping", data=[1])
        event = await page.wait("event", event="client-ping")
        self.assertEqual((event["data"], event["user_id"]), ([1], "nod"))
        page.send(do="whisper", channel="presence-desk", event="client-pong", data=[2])
        await node.wait("event", event="client-pong")
        await self.trigger("presence-desk", "notice", "hi", socket_id=node.socket_id)
        await page.wait("event", event="notice", data="hi")
        page.send(do="disconnect")
        await node.wait("member_removed", id="pat")
        self.assertEqual(node.all("event", event="notice"), [])


class PoolTests(PusherJsMixin, PoolTestCase):
    """Two workers: clients land on either; triggers and presence cross."""

    async def spread(self, count: int = 8) -> list[PusherJs]:
        """pusher-js clients until both workers hold some (socket ids name
        their process)."""
        clients = []
        while len(clients) < count or len({c.socket_id.split(".")[0] for c in clients}) < 2:
            clients.append(await self.js())
            if len(clients) > 24:
                self.fail("every client landed on one worker")
        return clients

    @run
    async def test_triggers_and_presence_across_workers(self):
        await self.start_pool(2, **pusher_overrides(TABLES))
        clients = await self.spread(4)
        for i, c in enumerate(clients):
            await self.subscribed(c, "presence-pool", user=f"u{i}")
        last = clients[-1]
        listed = last.all("subscribed", channel="presence-pool")[0]["members"]
        self.assertEqual(sorted(listed), sorted(f"u{i}" for i in range(len(clients))))
        await self.trigger("presence-pool", "hello", "all", socket_id=clients[0].socket_id)
        for c in clients[1:]:
            await c.wait("event", event="hello", data="all")
        clients[1].send(do="whisper", channel="presence-pool", event="client-w", data=1)
        for c in clients[2:] + clients[:1]:
            event = await c.wait("event", event="client-w")
            self.assertEqual(event["user_id"], "u1")
        clients[1].send(do="disconnect")
        for c in clients[2:] + clients[:1]:
            await c.wait("member_removed", id="u1")
        first = clients[0]
        for i in range(1, len(clients)):
            await first.wait("member_added", id=f"u{i}")
        self.assertEqual(first.all("event", event="hello"), [])


class TwoNodeTests(PusherJsMixin, NodesTestCase):
    """Two nodes (one process each) on one Redis: a trigger through node a
    reaches pusher-js on node b, presence and client events cross."""

    @run
    async def test_triggers_presence_and_client_events_across_nodes(self):
        await self.start_nodes(workers=0, config_text=APPS_TOML)
        self.use_port(self.nodes["a"].port)
        a = await self.js()
        self.use_port(self.nodes["b"].port)
        b = await self.js()
        await self.subscribed(a, "presence-x", user="ann")
        listed = await self.subscribed(b, "presence-x", user="ben")
        self.assertEqual(listed["members"], {"ann": None, "ben": None})
        await a.wait("member_added", id="ben")
        b.send(do="whisper", channel="presence-x", event="client-hi", data="from b")
        event = await a.wait("event", event="client-hi")
        self.assertEqual(event["user_id"], "ben")
        self.use_port(self.nodes["a"].port)
        await self.trigger("presence-x", "news", {"n": 1}, socket_id=a.socket_id)
        event = await b.wait("event", event="news")
        self.assertEqual(event["data"], {"n": 1})
        b.send(do="disconnect")
        await a.wait("member_removed", id="ben")
        self.assertEqual(a.all("event", event="news"), [])


