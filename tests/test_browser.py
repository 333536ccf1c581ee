"""The browser side: the files at ``/`` and ``/pushsvc.js``, and the demo
page end to end in a real headless Chromium.

The end-to-end test runs ``tests/browser/run_demo.js`` with Node and
playwright-core (installed by ``make test`` into tests/browser/node_modules)
against Debian's ``chromium`` (installed by ``make test`` with apt when it is
missing). Without them it is skipped, saying what is missing; with
``CI=true`` that is a failure: CI must not pass by skipping it.
``PUSHSVC_CHROMIUM`` names another Chromium to use.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from pushsvc.server import PushServer
from tests.helpers import ServerTestCase, eventually, run, settings
from tests.test_tokens import SECRET, token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
SCRIPT = os.path.join(BROWSER_DIR, "run_demo.js")
STATIC = os.path.join(ROOT, "pushsvc", "static")
DEADLINE = 60.0  # seconds for the whole browser run (it takes a few)


def find_chromium() -> str | None:
    """The Chromium to drive: $PUSHSVC_CHROMIUM, Debian's binary, or one on PATH."""
    named = os.environ.get("PUSHSVC_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    # Debian's /usr/bin/chromium is a shell wrapper; the binary is beside its libraries.
    if os.access("/usr/lib/chromium/chromium", os.X_OK):
        return "/usr/lib/chromium/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def missing_tools() -> tuple[str | None, str | None, list[str]]:
    """(node, chromium, what is missing)."""
    node = shutil.which("node")
    chromium = find_chromium()
    missing = []
    if node is None:
        missing.append("node (Node.js) is not on PATH")
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")):
        missing.append("playwright-core is not installed in tests/browser/node_modules "
                       "(`make test` runs `npm install` there)")
    if chromium is None:
        missing.append("no chromium (`make test` installs Debian's chromium with apt; "
                       "or set PUSHSVC_CHROMIUM)")
    return node, chromium, missing


class Lines(ProcessProtocol):
    """A child whose stdout is read line by line."""

    def __init__(self):
        self.lines: list[str] = []
        self.stdout = b""
        self.stderr = b""
        self.status: int | None = None
        self.done = False
        self._partial = b""
        self._waiters: list[Deferred] = []

    def outReceived(self, data):
        self.stdout += data
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        self.lines.extend(line.decode("utf-8", "replace") for line in complete)

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.status, self.done = reason.value.exitCode, True

    def send(self, value) -> None:
        self.transport.write(json.dumps(value).encode("utf-8") + b"\n")

    def kill(self):
        if not self.done:
            self.transport.signalProcess("KILL")
            return eventually(lambda: self.done, what="the browser script exits")
        return None

    def output(self) -> str:
        return (self.stdout + self.stderr).decode("utf-8", "replace")


class StaticFileTests(ServerTestCase):
    """``/`` and ``/pushsvc.js``: no API key, cacheable, JSON errors."""

    async def get(self, path: str, method: str = "GET", headers=None):
        response = await Agent(reactor).request(
            method.encode(), (self.base + path).encode(),
            Headers({k: [v] for k, v in (headers or {}).items()}))
        return response, await readBody(response)

    @run
    async def test_the_client_and_the_page_need_no_api_key(self):
        self.start_server(api_keys=["k" * 32])
        for path, name, kind in (("/pushsvc.js", "pushsvc.js", b"application/javascript"),
                                 ("/demo.js", "demo.js", b"application/javascript"),
                                 ("/", "index.html", b"text/html")):
            response, body = await self.get(path)
            self.assertEqual(response.code, 200, path)
            with open(os.path.join(STATIC, name), "rb") as f:
                self.assertEqual(body, f.read(), path)
            [content_type] = response.headers.getRawHeaders(b"content-type")
            self.assertEqual(content_type.split(b";")[0], kind)
            self.assertEqual(response.headers.getRawHeaders(b"x-content-type-options"),
                             [b"nosniff"])
        # ... while the API still wants its key.
        status, _ = await self.http("GET", "/api/stats")
        self.assertEqual(status, 401)

    @run
    async def test_cacheable_with_an_etag(self):
        self.start_server()
        response, _ = await self.get("/pushsvc.js")
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"),
                         [b"public, max-age=600"])
        [etag] = response.headers.getRawHeaders(b"etag")
        again, body = await self.get("/pushsvc.js", headers={"If-None-Match": etag.decode()})
        self.assertEqual((again.code, body), (304, b""))
        other, body = await self.get("/pushsvc.js", headers={"If-None-Match": '"other"'})
        self.assertEqual(other.code, 200)
        page, _ = await self.get("/")
        self.assertEqual(page.headers.getRawHeaders(b"cache-control"), [b"no-cache"])
        [policy] = page.headers.getRawHeaders(b"content-security-policy")
        self.assertIn(b"frame-ancestors 'none'", policy)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        head, body = await self.get("/pushsvc.js", method="HEAD")
        self.assertEqual((head.code, body), (200, b""))
        with open(os.path.join(STATIC, "pushsvc.js"), "rb") as f:
            size = len(f.read())
        self.assertEqual(head.headers.getRawHeaders(b"content-length"), [b"%d" % size])
        said = [formatEvent(e) for e in events]
        self.assertFalse([t for t in said if "message body" in t], said)  # twisted.web's warning

    @run
    async def test_errors_are_json(self):
        self.start_server()
        response, body = await self.get("/pushsvc.js", method="POST")
        self.assertEqual((response.code, json.loads(body)),
                         (405, {"error": {"code": "method_not_allowed",
                                          "message": "POST is not allowed here"}}))
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET"])
        response, body = await self.get("/pushsvc.js/x")
        self.assertEqual((response.code, json.loads(body)),
                         (404, {"error": {"code": "not_found",
                                          "message": "no such route: /pushsvc.js/x"}}))
        response, body = await self.get("/index.html")
        self.assertEqual(response.code, 404)

    @run
    async def test_a_browser_offering_compression_connects(self):
        """Every browser offers permessage-deflate; the server declines it
        (it writes each frame once for many clients) and welcomes the client."""
        from tests import raw
        self.start_server()
        client = await raw.open_raw(self.port, {
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
            "Origin": self.base})
        self.assertEqual(client.status, 101)
        self.assertNotIn(b"sec-websocket-extensions", client.head.lower())
        client.transport.loseConnection()
        await client.wait_lost()

    def test_files_are_package_data(self):
        """setup.py ships the static files with the package."""
        with open(os.path.join(ROOT, "setup.py")) as f:
            setup = f.read()
        self.assertIn('"pushsvc.static": ["*.html", "*.js"]', setup)
        self.assertTrue(os.path.exists(os.path.join(STATIC, "__init__.py")))


class DemoInChromiumTests(ServerTestCase):
    timeout = DEADLINE + 30

    def tools(self) -> tuple[str, str]:
        node, chromium, missing = missing_tools()
        if missing:
            reason = "the browser test needs: " + "; ".join(missing)
            if os.environ.get("CI") == "true":
                self.fail(reason + " (CI=true, so this is a failure, not a skip)")
            self.skipTest(reason)
        return node, chromium

    def start_events_server(self) -> str:
        """A second server, in the development mode, with member events on
        and subscription tokens for the groups ``room:*``; its base URL."""
        self.events_server = PushServer(settings(
            namespaces={"": {"events": True}, "room": {"join": "token"}},
            jwt_secret=SECRET), reactor)
        listener = self.events_server.listen(reactor, "tcp:0:interface=127.0.0.1")
        self.events_server.startService()
        self.addCleanup(self.events_server.stopService)
        return f"http://127.0.0.1:{listener._waitingForPort.result.getHost().port}"

    @run
    async def test_demo_page_end_to_end(self):
        node, chromium = self.tools()
        self.start_server()                     # the defaults: events off, presence on
        events_base = self.start_events_server()
        self.tokens_made = 0
        screenshot = os.path.abspath(self.mktemp()) + ".png"
        child = Lines()
        env = dict(os.environ, PUSHSVC_CHROMIUM=chromium)
        reactor.spawnProcess(child, node, [node, SCRIPT, self.base, screenshot, events_base],
                             env=env, path=BROWSER_DIR)
        self.addCleanup(child.kill)
        deadline = reactor.seconds() + DEADLINE
        handled = 0
        while True:
            await eventually(lambda: len(child.lines) > handled or child.done,
                             timeout=max(0.1, deadline - reactor.seconds()),
                             what="the browser script's next step")
            if len(child.lines) == handled:  # it ended
                break
            line = child.lines[handled]
            handled += 1
            if line.startswith("STEP "):
                child.send(await self.step(json.loads(line[5:])))
        await eventually(lambda: child.done, what="the browser script exits")
        self.assertEqual(child.status, 0, child.output())
        self.assertTrue(any(line.startswith("DONE ") for line in child.lines), child.output())
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        if os.environ.get("PUSHSVC_DEMO_SCREENSHOT"):  # to renew docs/demo.png
            # (relative to the checkout: trial runs in _trial_temp)
            shutil.copy(screenshot, os.path.join(ROOT, os.environ["PUSHSVC_DEMO_SCREENSHOT"]))

    def sessions(self, user: str) -> list:
        """``user``'s sessions, on whichever of the two servers they are."""
        return [session for server in (self.server, self.events_server)
                for session in server.engine.registry.user_sessions(user)]

    async def step(self, request: dict) -> dict:
        if request["step"] == "restart":
            # As a server restart does to a client: close 1012 ("service
            # restart"); once it is gone, push to its group (when told).
            user = request["user"]
            sessions = self.sessions(user)
            self.assertEqual(len(sessions), 1)
            sessions[0].conn.close(1012, "service restart")
            await eventually(lambda: not self.sessions(user), what=f"{user}'s session closes")
            if "text" not in request:
                return {}
            msg_id = await self.push({"group": "lobby"}, {"text": request["text"]})
            return {"id": msg_id}
        if request["step"] == "token":
            # A subscription token for the user's first two joins; then one
            # for another user, which the server refuses.
            self.tokens_made += 1
            user = request["user"] if self.tokens_made <= 2 else "mallory"
            return {"token": token(user, exp=time.time() + 600, group=request["group"])}
        if request["step"] == "groups":
            [session] = self.sessions(request["user"])
            return {"groups": sorted(session.groups)}
        raise AssertionError(f"unknown step {request!r}")
