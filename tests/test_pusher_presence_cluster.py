"""Presence members across processes (issue 14): two Pusher connections of
one user on two workers of a pool (or on two nodes through a real Redis)
subscribe in the same instant and unsubscribe in the same instant, and a
third member sees exactly one ``member_added`` and one ``member_removed``
each time; a worker (a node) that dies holding a user's last connection:
the others see ``member_removed``.  Raw WebSocket clients, real processes."""

from __future__ import annotations

import json
import os
import signal

from twisted.internet import reactor
from twisted.internet.task import deferLater

from pushsvc.ids import owner
from pushsvc.pusher.apps import Apps, check_apps
from pushsvc.pusher.signatures import channel_auth
from tests.helpers import eventually, run
from tests.raw import connect_raw, handshake, text
from tests.test_pool import PoolTestCase
from tests.test_pusher_http import pusher_overrides
from tests.test_pusher_webhooks import Receiver, listen
from tests.test_redis_broker import NodesTestCase

APP = {"id": "1001", "key": "app-key", "secret": "app-secret"}
SIGNER = Apps(check_apps([APP])).by_id("1001")
CHANNEL = "presence-room"
GROUP = "pusher.1001:" + CHANNEL
ROUNDS = 3


def events(client, name: str, user: str | None = None) -> list[dict]:
    found = [f for f in client.json_frames() if f.get("event") == name]
    if user is not None:
        found = [f for f in found if json.loads(f["data"])["user_id"] == user]
    return found


class PresenceMixin:
    """Raw Pusher connections to ``self.port``."""

    async def connection(self):
        client = await connect_raw(self.port, handshake("/app/app-key?protocol=7"))
        self.addCleanup(lambda: client.transport.loseConnection())
        await client.wait_for(lambda: events(client, "pusher:connection_established"))
        established = events(client, "pusher:connection_established")[0]
        client.socket_id = json.loads(established["data"])["socket_id"]
        return client

    def subscribe(self, client, user: str) -> None:
        data = json.dumps({"user_id": user})
        client.transport.write(text({"event": "pusher:subscribe", "data": {
            "channel": CHANNEL, "channel_data": data,
            "auth": channel_auth(SIGNER, client.socket_id, CHANNEL, data)}}))

    def unsubscribe(self, client) -> None:
        client.transport.write(text({"event": "pusher:unsubscribe",
                                     "data": {"channel": CHANNEL}}))

    async def subscribed(self, client, count: int = 1) -> None:
        await client.wait_for(lambda: len(events(
            client, "pusher_internal:subscription_succeeded")) >= count)

    async def settled(self, watcher, mark: str) -> None:
        """Until ``watcher`` has a push sent after what it waits for: then
        nothing announced before it is still on its way to it."""
        status, _ = await self.http("POST", "/api/push", {"to": {"group": GROUP},
                                                          "data": mark})
        self.assertEqual(status, 202)
        await watcher.wait_for(lambda: any(e.get("data") == mark
                                           for e in events(watcher, "message")))

    async def both_at_once(self, watcher, ann1, ann2) -> None:
        """ROUNDS times: both of ann's connections subscribe in one instant,
        then unsubscribe in one instant; the watcher sees one added and
        one removed a round."""
        for n in range(1, ROUNDS + 1):
            self.subscribe(ann1, "ann")
            self.subscribe(ann2, "ann")
            await self.subscribed(ann1, n)
            await self.subscribed(ann2, n)
            await watcher.wait_for(lambda: len(events(
                watcher, "pusher_internal:member_added", "ann")) >= n)
            self.unsubscribe(ann1)
            self.unsubscribe(ann2)
            await watcher.wait_for(lambda: len(events(
                watcher, "pusher_internal:member_removed", "ann")) >= n)
            await self.settled(watcher, f"round {n}")
            self.assertEqual(len(events(watcher, "pusher_internal:member_added", "ann")), n)
            self.assertEqual(len(events(watcher, "pusher_internal:member_removed", "ann")), n)


class PoolPresenceTests(PresenceMixin, PoolTestCase):
    """A pool of two workers: the hub decides."""

    async def spread(self):
        """Pusher connections until two are on different workers (a socket
        id's first part names its worker process); (one, other, watcher)."""
        by_worker: dict[str, list] = {}
        for _ in range(24):
            client = await self.connection()
            by_worker.setdefault(client.socket_id.split(".")[0], []).append(client)
            if len(by_worker) == 2 and sum(map(len, by_worker.values())) >= 3:
                first, second = by_worker.values()
                return first[0], second[0], (first[1:] + second[1:])[0]
        self.fail("every connection landed on one worker")

    async def start(self):
        self.receiver = Receiver()
        app = {**APP, "webhooks": [{"url": listen(self, self.receiver) + "/hook",
                                    "events": ["member_added", "member_removed"]}]}
        await self.start_pool(2, **pusher_overrides([app]))

    @run
    async def test_one_user_on_two_workers_at_the_same_instant(self):
        await self.start()
        ann1, ann2, watcher = await self.spread()
        self.subscribe(watcher, "w")
        await self.subscribed(watcher)
        await self.both_at_once(watcher, ann1, ann2)
        expected = [{"name": name, "channel": CHANNEL, "user_id": "ann"}
                    for name in ("member_added", "member_removed")]
        await eventually(lambda: len(self.anns()) >= 2 * ROUNDS, 5, "webhooks")
        await deferLater(reactor, 0.5)  # nothing more comes (batches wait 0.25 s)
        self.assertEqual(sorted(self.anns(), key=lambda e: e["name"]),
                         sorted(expected * ROUNDS, key=lambda e: e["name"]))

    def anns(self) -> list[dict]:
        """The webhook events about ann."""
        return [e for e in self.receiver.events() if e["user_id"] == "ann"]

    @run
    async def test_a_killed_worker_takes_its_members_along(self):
        """ann's only connection is on a worker that is killed: the master
        announces she left (to the members and by webhook)."""
        await self.start()
        ann, _, watcher = await self.spread()
        self.subscribe(watcher, "w")
        await self.subscribed(watcher)
        self.subscribe(ann, "ann")
        await self.subscribed(ann)
        await watcher.wait_for(lambda: events(watcher, "pusher_internal:member_added", "ann"))
        await eventually(lambda: self.anns(), 5, "member_added's webhook")  # sent by ann's worker
        _, found = await self.http("GET", "/api/users/ann")
        index = int(owner(found["sessions"][0]["session"]).split(".")[1])
        os.kill(self.pool.workers[index].pid, signal.SIGKILL)
        await watcher.wait_for(lambda: events(watcher, "pusher_internal:member_removed", "ann"))
        await eventually(lambda: len(self.anns()) == 2, 5, "webhooks")
        self.assertEqual([e["name"] for e in self.anns()], ["member_added", "member_removed"])


class NodesPresenceTests(PresenceMixin, NodesTestCase):
    """Two nodes (one process each) on one Redis: the scripts decide."""

    async def start(self):
        toml = (f'[[pusher.apps]]\nid = "{APP["id"]}"\nkey = "{APP["key"]}"\n'
                f'secret = "{APP["secret"]}"\n')
        await self.start_nodes(workers=0, config_text=toml)

    async def on_node(self, name: str):
        self.use_port(self.nodes[name].port)
        self.agent = self.nodes[name].agent
        return await self.connection()

    @run
    async def test_one_user_on_two_nodes_at_the_same_instant(self):
        await self.start()
        watcher, ann2, ann1 = await self.on_node("b"), await self.on_node("b"), \
            await self.on_node("a")
        self.subscribe(watcher, "w")
        await self.subscribed(watcher)
        await self.both_at_once(watcher, ann1, ann2)

    @run
    async def test_a_killed_node_takes_its_members_along(self):
        """ann's only connection is on node b, killed: node a's heartbeat
        sweeps b's members (after three silent heartbeats) and announces."""
        await self.start()
        ann, watcher = await self.on_node("b"), await self.on_node("a")
        self.subscribe(watcher, "w")
        await self.subscribed(watcher)
        self.subscribe(ann, "ann")
        await self.subscribed(ann)
        await watcher.wait_for(lambda: events(watcher, "pusher_internal:member_added", "ann"))
        await self.nodes["b"].child.kill()
        await watcher.wait_for(lambda: events(watcher, "pusher_internal:member_removed", "ann"))
        await self.settled(watcher, "after")
        self.assertEqual(len(events(watcher, "pusher_internal:member_removed", "ann")), 1)
