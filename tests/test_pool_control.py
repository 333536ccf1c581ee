"""Controlling a running pool: a worker that stops reading its pipe, reload,
rolling restart.  A Master in the test process, real workers, real sockets."""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.logger import globalLogPublisher

from pushsvc.client import ServerError, connect
from pushsvc.config import ConfigError, build_settings
from pushsvc.ids import owner
from tests.helpers import eventually, run
from tests.test_pool import PoolTestCase


class ControlTestCase(PoolTestCase):
    def setUp(self):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)


class BacklogTests(ControlTestCase):
    @run
    async def test_worker_that_stops_reading_is_restarted_past_the_cap(self):
        events = self.events
        await self.start_pool(2, max_worker_backlog=1024 * 1024, client_send="any")
        clients, by_worker = await self.spread_clients(20, groups=("g",))
        stopped_owner, kept_owner = sorted(by_worker)
        index = int(stopped_owner.split(".")[1])
        stopped = self.pool.workers[index]
        await eventually(lambda: self.subscribers("group:g") == {0, 1})
        os.kill(stopped.pid, signal.SIGSTOP)
        self.addCleanup(lambda: stopped.ended.called or os.kill(stopped.pid, signal.SIGKILL))

        # ~2.4 MB for a worker that reads nothing: past the pipe's 64 KiB and
        # the 1 MiB cap.  The worker that reads gets the same, one message a
        # turn, and is left alone.
        sender, kept = by_worker[kept_owner][0], by_worker[kept_owner]
        big = "x" * 60_000
        ids = [(await sender.request("send", to={"group": "g"}, data=[n, big]))["id"]
               for n in range(40)]
        await eventually(lambda: self.pool.workers.get(index) not in (None, stopped)
                         and index in self.pool.ready, what="the stopped worker replaced")
        self.assertTrue(stopped.overflowed)
        said = [e for e in events if e.get("held") is not None]
        self.assertEqual([(e["index"], e["limit"]) for e in said], [(index, 1024 * 1024)])
        self.assertGreater(said[0]["held"], 1024 * 1024)

        # Nothing was lost on the worker that kept reading.
        await eventually(lambda: all(len(c.messages) == 40 for c in kept))
        for c in kept:
            self.assertEqual([m["id"] for m in c.messages], ids)
        for c in by_worker[stopped_owner]:
            await c.closed
        self.assertNotIn(stopped, self.pool.live)
        self.assertEqual(self.subscribers("group:g"), {1 - index})


class Reconnecting:
    """A user's client that reconnects at once whenever the server closes it,
    and authenticates and joins its groups again."""

    def __init__(self, case: PoolTestCase, user: str, groups: tuple[str, ...]):
        self.case, self.user, self.groups = case, user, groups
        self.closes: list[int] = []
        self.closed_at: list[float] = []
        self.received: list = []   # every message, over every connection
        self.conn = None
        self.serving = None        # fires when the current connection is set up

    async def start(self):
        self.conn = await self.case.client(self.user, self.groups)
        self.conn.closed.addCallback(self._closed)

    def _closed(self, code_reason):
        self.received += self.conn.messages
        self.closes.append(code_reason[0])
        self.closed_at.append(reactor.seconds())
        if code_reason[0] == 1012:
            self.serving = ensureDeferred(self.start())

    def messages(self) -> list:
        return self.received + (self.conn.messages if self.conn.close_code is None else [])


class RollingRestartTests(ControlTestCase):
    @run
    async def test_restart_workers_keeps_accepting_and_serves_who_reconnects(self):
        """Every client is closed once with 1012, the closes spread over the
        drain, and each is served again at once by a new worker."""
        await self.start_pool(2, restart_drain=1.0)
        users = [Reconnecting(self, f"u{i}", ("g",)) for i in range(40)]
        for u in users:
            await u.start()
        self.assertEqual({owner(u.conn.session) for u in users}, {"test.0", "test.1"})
        before = [await self.push({"group": "g"}, f"before {n}") for n in range(3)]
        old = {index: w.pid for index, w in self.pool.workers.items()}

        # While the workers are replaced, connect again and again: no attempt
        # may be refused.
        restarting = ensureDeferred(self.pool.restart_workers())
        probes = 0
        while not restarting.called:
            probe = await connect(self.url)
            probes += 1
            probe.dropConnection(abort=True)
        result = await restarting

        self.assertEqual(sorted((r["worker"], r["old_pid"]) for r in result["replaced"]),
                         sorted(old.items()))
        self.assertEqual(self.pool.ready, {0, 1})
        self.assertTrue(all(w.pid not in old.values() for w in self.pool.live))
        self.assertGreater(probes, 0)
        # Every new worker accepted before any old one stopped.
        order = [(e["index"], "ready" if "owner" in e else "retiring") for e in self.events
                 if "owner" in e and e["pid"] not in old.values()
                 or e.get("text", "").startswith("retiring")]
        self.assertEqual(sorted(order[:2]), [(0, "ready"), (1, "ready")])
        self.assertEqual(sorted(order[2:]), [(0, "retiring"), (1, "retiring")])
        for u in users:
            await u.serving  # every client reconnected at once and was served
        self.assertEqual([u.closes for u in users], [[1012]] * len(users))
        times = sorted(u.closed_at[0] for u in users)
        self.assertGreater(times[-1] - times[0], 0.5)  # paced, not all at once

        after = [await self.push({"group": "g"}, f"after {n}") for n in range(3)]
        await eventually(lambda: all(len(u.conn.messages) == 3 for u in users))
        for u in users:
            ids = [m["id"] for m in u.messages()]
            self.assertEqual(ids, before + after, u.user)


APP = '''
from pushsvc.app import Deliver

def on_message(session, api, to, data):
    return Deliver("{version}: " + data)
'''


class ReloadTests(ControlTestCase):
    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    async def said(self, speaker, listener, text: str):
        """What ``listener`` receives when ``speaker`` says ``text`` to group g0."""
        count = len(listener.messages)
        await speaker.request("send", to={"group": "g0"}, data=text)
        await eventually(lambda: len(listener.messages) > count)
        return listener.messages[-1]["data"]

    @run
    async def test_reload_keeps_every_client_and_applies_the_new_code(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        app, config = os.path.join(folder, "app.py"), os.path.join(folder, "pushsvc.toml")
        self.write(app, APP.format(version="v1"))
        self.write(config, f'[server]\nnode = "test"\napp = "{app}"\nadmin = ""\n')
        await self.start_pool(2, base=build_settings(config))
        clients, by_worker = await self.spread_clients(200)
        self.assertEqual(len(by_worker), 2)
        for i, c in enumerate(clients):
            await c.request("auth", user=f"u{i}")
            await c.request("join", group=f"g{i % 10}")
        speaker, listener = by_worker["test.0"][0], by_worker["test.1"][0]
        for c in (speaker, listener):
            await c.request("join", group="g0")
        self.assertEqual(await self.said(speaker, listener, "hi"), "v1: hi")

        async def all_still_served(expected: int):
            self.assertEqual([c.close_code for c in clients], [None] * len(clients))
            for group in range(10):
                await self.push({"group": f"g{group}"}, f"after reload {group}")
            await eventually(lambda: all(len(c.messages) >= expected for c in clients))
            for i, c in enumerate(clients):
                self.assertEqual(c.messages[-1]["data"], f"after reload {i % 10}")

        # Reload twice: new code, then new code and a changed setting.
        self.write(app, APP.format(version="v2"))
        ok = [{"worker": w.index, "pid": w.pid, "ok": True, "error": None}
              for w in sorted(self.pool.live, key=lambda w: w.index)]
        self.assertEqual(await self.master.control.reload(), ok)
        await all_still_served(1)
        self.assertEqual(await self.said(speaker, listener, "hi"), "v2: hi")

        self.write(app, APP.format(version="v3"))
        self.write(config, f'[server]\nnode = "test"\napp = "{app}"\nadmin = ""\n'
                           f'[limits]\nmax_groups_per_session = 3\n')
        self.assertEqual(await self.master.control.reload(), ok)
        await all_still_served(2)
        self.assertEqual(await self.said(speaker, listener, "hi"), "v3: hi")
        with self.assertRaises(ServerError) as refused:
            for group in ("x", "y", "z"):
                await speaker.request("join", group=group)
        self.assertEqual(refused.exception.frame["code"], "too_many_groups")

        # A module that does not load: every worker says so and keeps the old code.
        self.write(app, "def on_message(session, api, to, data:\n")
        results = await self.master.control.reload()
        self.assertEqual([(r["worker"], r["ok"]) for r in results], [(0, False), (1, False)])
        for r in results:
            self.assertIn("app.py, line 1: SyntaxError", r["error"])
        self.assertEqual(await self.said(speaker, listener, "hi"), "v3: hi")

        # A config file that does not validate changes nothing anywhere.
        self.write(app, APP.format(version="v4"))
        self.write(config, f'[server]\nnode = "test"\napp = "{app}"\nadmin = ""\n'
                           f'[limits]\nmax_groups_per_session = 0\n')
        with self.assertRaises(ConfigError) as bad:
            await self.master.control.reload()
        self.assertIn("limits.max_groups_per_session", str(bad.exception))
        self.assertEqual(await self.said(speaker, listener, "hi"), "v3: hi")
        await all_still_served(3)
