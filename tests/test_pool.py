"""The worker pool: a master in the test process, real worker processes, real sockets."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from pushsvc.ids import owner
from pushsvc.pool.master import Master
from tests.helpers import ServerTestCase, eventually, run, settings


class PoolTestCase(ServerTestCase):
    """Runs a Master with ``count`` workers on 127.0.0.1 (port 0)."""

    async def start_pool(self, count: int = 2, base=None, **overrides) -> Master:
        """``base`` (default: the test settings) with ``overrides``."""
        base = settings() if base is None else base
        self.master = Master(replace(base, listen=["tcp:0:interface=127.0.0.1"],
                                     workers=count, **overrides), reactor, count)
        self.master.startService()
        self.addCleanup(self.master.stopService)
        self.use_port(self.master.sockets.address().port)
        # One kept-alive HTTP connection: every push enters through the same
        # worker, so messages to any one worker keep their order.
        http_pool = HTTPConnectionPool(reactor, persistent=True)
        http_pool.maxPersistentPerHost = 1
        self.addCleanup(http_pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=http_pool)
        await eventually(lambda: len(self.pool.ready) == count, 20, "workers ready")
        return self.master

    @property
    def pool(self):
        return self.master.pool

    def subscribers(self, channel: str) -> set[int]:
        """The slots of the workers the hub routes ``channel`` to."""
        return {w.index for w in self.pool.keeper.table.channels.get(channel, ())}

    async def spread_clients(self, n: int, **kw):
        """``n`` clients, and a dict worker owner -> its clients (both workers used)."""
        clients = [await self.client(**kw) for _ in range(n)]
        by_worker: dict[str, list] = {}
        for c in clients:
            by_worker.setdefault(owner(c.session), []).append(c)
        return clients, by_worker

    async def settle(self, clients, count: int):
        """Wait until each client has ``count`` messages, then check no more come:
        a final push to all is the last thing each one gets."""
        await eventually(lambda: all(len(c.messages) >= count for c in clients),
                         what=f"{count} messages at every client")
        last = await self.push({"all": True}, "sentinel")
        await eventually(lambda: all(c.messages and c.messages[-1]["id"] == last
                                     for c in clients), what="the sentinel")
        for c in clients:
            c.messages.pop()


class PoolDeliveryTests(PoolTestCase):
    @run
    async def test_both_workers_accept(self):
        await self.start_pool(2)
        clients, by_worker = await self.spread_clients(200)
        self.assertEqual(len(by_worker), 2, {k: len(v) for k, v in by_worker.items()})
        status, stats = await self.http("GET", "/api/stats")
        self.assertEqual(stats["sessions"], 200)
        self.assertEqual(sorted(w["worker"] for w in stats["workers"]), ["test.0", "test.1"])
        self.assertTrue(all(w["sessions"] > 0 for w in stats["workers"]), stats)

    @run
    async def test_every_address_kind_reaches_every_worker_exactly_once(self):
        await self.start_pool(2)
        clients, by_worker = await self.spread_clients(40)
        self.assertEqual(len(by_worker), 2)
        for i, c in enumerate(clients):
            await c.request("auth", user=f"u{i % 10}")
            if i % 2:
                await c.request("join", group="odd")
        await self.http("POST", "/api/tag", {"user": "u3", "tag": "t"})
        some = [by_worker[w][0] for w in sorted(by_worker)]  # one session on each worker

        ids = {
            "all": await self.push({"all": True}, 1),
            "group": await self.push({"group": "odd"}, 2),
            "user": await self.push({"user": "u4"}, 3),
            "tag": await self.push({"tag": "t"}, 4),
            "sessions": await self.push({"session": [s.session for s in some]}, 5),
            "twice": await self.push({"group": "odd", "user": "u3"}, 6),
        }

        def expected(i, c):
            out = [ids["all"]]
            if i % 2:
                out.append(ids["group"])
            if i % 10 == 4:
                out.append(ids["user"])
            if i % 10 == 3:
                out.append(ids["tag"])
            if c in some:
                out.append(ids["sessions"])
            if i % 2 or i % 10 == 3:
                out.append(ids["twice"])
            return out

        await self.settle(clients, 1)
        for i, c in enumerate(clients):
            self.assertEqual([m["id"] for m in c.messages], expected(i, c), (i, c.session))

    @run
    async def test_push_right_after_ok_arrives(self):
        """Once auth (or join) is answered, the hub routes to the session's worker."""
        await self.start_pool(2)
        clients = []
        for n in range(100):
            clients.append(await self.client(user=f"fresh{n}", groups=(f"room{n}",)))
            await self.push({"user": f"fresh{n}"}, n)
            await self.push({"group": f"room{n}"}, n)
        self.assertEqual(len({owner(c.session) for c in clients}), 2)
        await self.settle(clients, 2)
        for n, c in enumerate(clients):
            self.assertEqual([m["data"] for m in c.messages], [n, n])

    @run
    async def test_client_send_crosses_workers(self):
        await self.start_pool(2)
        clients, by_worker = await self.spread_clients(20, groups=("room",))
        sender = by_worker[sorted(by_worker)[0]][0]
        reply = await sender.request("send", to={"group": "room"}, data={"hi": 1})
        await eventually(lambda: all(len(c.messages) == 1 for c in clients))
        for c in clients:
            self.assertEqual(c.messages[0]["id"], reply["id"])
            self.assertEqual(c.messages[0]["from"], {"session": sender.session, "user": None})

    @run
    async def test_large_message_crosses_intact(self):
        await self.start_pool(2, max_message_bytes=512 * 1024)
        clients, by_worker = await self.spread_clients(10, groups=("big",))
        data = "".join(chr(0x41 + i % 26) for i in range(300 * 1024))
        await self.push({"group": "big"}, data)
        await eventually(lambda: all(len(c.messages) == 1 for c in clients))
        self.assertTrue(all(c.messages[0]["data"] == data for c in clients))

    @run
    async def test_hub_subscribes_only_what_sessions_want(self):
        await self.start_pool(2)
        clients, _ = await self.spread_clients(10, user="alice", groups=("g",))
        await eventually(lambda: "group:g" in self.pool.keeper.table.channels)
        self.assertEqual(self.subscribers("group:g"), {0, 1})
        for c in clients:
            await c.disconnect()
        await eventually(lambda: set(self.pool.keeper.table.channels) == {"worker:test.0",
                                                                    "worker:test.1"},
                         what="only the worker channels left")


class PoolCommandTests(PoolTestCase):
    @run
    async def test_commands_and_presence_span_workers(self):
        await self.start_pool(2)
        clients, by_worker = await self.spread_clients(12, user="bob")
        others, _ = await self.spread_clients(4, user="carol")

        status, body = await self.http("POST", "/api/join", {"user": "bob", "group": "g"})
        self.assertEqual((status, body), (200, {"sessions": 12, "refused": 0}))
        await eventually(lambda: all(c.frames[-1] == {"op": "joined", "group": "g",
                                                      "reason": "server"} for c in clients))
        status, body = await self.http("GET", "/api/groups/g")
        self.assertEqual(sorted(m["session"] for m in body["members"]),
                         sorted(c.session for c in clients))
        status, body = await self.http("GET", "/api/users/bob")
        self.assertEqual((body["online"], len(body["sessions"])), (True, 12))

        self.assertEqual(await self.http("POST", "/api/tag", {"user": "carol", "tag": "vip"}),
                         (200, {"sessions": 4}))
        await self.push({"tag": "vip"}, "for carol")
        await self.settle(clients + others, 0)
        self.assertEqual([len(c.messages) for c in others], [1] * 4)
        self.assertEqual([len(c.messages) for c in clients], [0] * 12)

        self.assertEqual(await self.http("POST", "/api/destroy", {"group": "g"}),
                         (200, {"sessions": 12}))
        await eventually(lambda: all(c.frames[-1]["op"] == "left" for c in clients))
        self.assertEqual(await self.http("GET", "/api/groups"), (200, {"groups": {}}))

        victim = by_worker[sorted(by_worker)[1]][0]
        self.assertEqual(await self.http("POST", "/api/kick",
                                         {"session": victim.session, "reason": "bye"}),
                         (200, {"sessions": 1}))
        code, reason = await victim.closed
        self.assertEqual((code, reason), (4000, "bye"))
        self.assertEqual(await self.http("POST", "/api/kick", {"user": "carol"}),
                         (200, {"sessions": 4}))
        for c in others:
            self.assertEqual((await c.closed)[0], 4000)
        status, body = await self.http("GET", "/api/users/carol")
        self.assertEqual(body["online"], False)


class PoolFaultTests(PoolTestCase):
    @run
    async def test_killed_worker_is_replaced_and_others_lose_nothing(self):
        await self.start_pool(2)
        clients, by_worker = await self.spread_clients(30, groups=("g",))
        doomed_owner, kept_owner = sorted(by_worker)
        doomed = self.pool.workers[int(doomed_owner.split(".")[1])]
        index = doomed.index
        await eventually(lambda: self.subscribers("group:g") == {0, 1})

        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = reactor.seconds()
        await eventually(lambda: index in self.pool.ready
                         and self.pool.workers[index] is not doomed,
                         what="a new worker")
        replaced_in = reactor.seconds() - killed_at
        # 0.25 s of backoff (it dies young) and a process start: well under
        # a second on a quiet machine; bounded loosely here, on a busy one.
        self.assertLess(replaced_in, 5.0)
        # The dead worker's subscriptions went with it; the new one has only its own.
        self.assertEqual(self.subscribers("group:g"), {1 - index})
        self.assertEqual(self.pool.keeper.table.workers[self.pool.workers[index]],
                         {f"worker:test.{index}"})

        kept = by_worker[kept_owner]
        sent = [await self.push({"group": "g"}, n) for n in range(20)]
        await eventually(lambda: all(len(c.messages) == 20 for c in kept))
        for c in kept:
            self.assertEqual([m["id"] for m in c.messages], sent)
        for c in by_worker[doomed_owner]:
            await c.closed
