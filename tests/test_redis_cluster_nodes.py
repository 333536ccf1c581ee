"""Two real nodes of two workers on a real Redis Cluster (issue 15, point 5):
three masters with a replica each, ``redis+cluster://``, three logical
shards (one per master).  Every address kind once across nodes; the resume
tests of independent shards run here again unchanged (by hand and by the
Python client, a shard down or restarted empty: its master and replica); a
master killed and its replica promoted.
"""

from __future__ import annotations

from pushsvc.broker.redis_cluster_slots import shard_prefixes
from pushsvc.broker.redis_shards import shard_of
from tests import test_redis_shards as shards, test_redis_shards_resume as resume
from tests.helpers import eventually, run
from tests.redis_helpers import RedisCluster
from tests.test_redis_broker import NodesTestCase
from tests.test_redis_shards import clients_in_groups, on_each, order_kept

SHARDS = 3  # logical shards: one per master, as the resume tests count them


class ShardServers:
    """A logical shard's master and its replica, handled as the tests of
    independent shards handle one redis-server (``self.shards[i]``): stopped
    together (no replica to promote: the shard is down), started again
    empty; ``call`` names its keys as ``pushsvc:...``."""

    def __init__(self, cluster: RedisCluster, prefix: str):
        self.cluster, self.prefix = cluster, prefix
        self.servers = []

    async def stop(self) -> None:
        master = self.cluster.master_of(self.prefix)
        self.servers = [master, self.cluster.replica_of(master)]
        for server in self.servers:
            await server.stop()

    async def start(self) -> None:
        for server in self.servers:
            await server.start()
        await self.cluster.settled()

    def call(self, *args):
        args = [a.replace("pushsvc:", self.prefix, 1) if isinstance(a, str) else a
                for a in args]
        return self.cluster.master_of(self.prefix).call(*args)


class ClusterNodesTestCase(NodesTestCase):
    """Nodes on a Redis Cluster instead of one redis-server."""

    timeout = 240
    settle = shards.ShardedNodesTests.settle  # each channel's order, a sentinel per shard
    degraded = shards.ShardedNodesTests.degraded

    async def start_nodes(self, workers: int, names=("a", "b"), config_text: str = "",
                          shards: int = SHARDS) -> None:
        """A cluster of three masters with a replica each, and nodes
        ``names`` on it with ``SHARDS`` logical shards."""
        self.cluster = RedisCluster(self)
        await self.cluster.start()
        self.prefixes = shard_prefixes("pushsvc:", SHARDS)
        self.shards = [ShardServers(self.cluster, prefix) for prefix in self.prefixes]
        await self.spawn_nodes(self.cluster.url, workers, names,
                               f"cluster_shards = {SHARDS}\n" + config_text, 60.0)
        engines = len(names) * max(workers, 1)
        for prefix in self.prefixes:  # every engine registered on every shard
            key = prefix + "_members"
            await eventually(lambda: self.cluster.master_of(key).call("ZCARD", key) == engines,
                             20, "every engine registered")
        for name in names:
            status, body = await self.on(name, "GET", "/api/stats")
            self.assertEqual(len(body["workers"]), engines, body)


class ClusterTwoNodeTests(ClusterNodesTestCase):
    """What two nodes do through one Redis, through the cluster."""

    @run
    async def test_every_address_kind_reaches_each_session_once_across_nodes(self):
        """A session, a user on both nodes, groups of every shard, a tag,
        all, and several at once, pushed through either node: each session
        gets each of its messages once, each channel's in order."""
        await self.start_nodes(workers=2)
        groups = on_each(SHARDS)
        clients = {f"{node}{n}": await self.client_on(node, f"{node}{n}", groups)
                   for node in ("a", "b") for n in range(2)}
        both = [await self.client_on(node, "both") for node in ("a", "b")]
        self.assertEqual({c.session.split(".")[0] for c in clients.values()}, {"a", "b"})
        in_groups = list(clients.values())
        expected: dict = {c: [] for c in in_groups + both}

        b0 = clients["b0"]
        expected[b0].append(await self.push_on("a", {"session": b0.session}))
        msg = await self.push_on("b", {"user": "both"})
        for c in both:
            expected[c].append(msg)
        for n, group in enumerate(groups):
            msg = await self.push_on("ab"[n % 2], {"group": group})
            for c in in_groups:
                expected[c].append(msg)
        msg = await self.push_on("a", {"all": True})
        for c in in_groups + both:
            expected[c].append(msg)
        msg = await self.push_on("b", {"group": groups, "user": ["both", "b1"]})
        for c in in_groups + both:  # on five channels of three shards, still once each
            expected[c].append(msg)
        self.assertEqual(await self.on("a", "POST", "/api/tag", {"user": "b1", "tag": "t"}),
                         (200, {"sessions": 1}))
        msg = await self.push_on("a", {"tag": "t"})
        expected[clients["b1"]].append(msg)
        await self.settle(in_groups, expected)
        for c in both:
            await c.wait_for_messages(len(expected[c]))
            await c.barrier()
            order_kept(self, c.messages, expected[c])

    @run
    async def test_a_master_killed_and_its_replica_promoted(self):
        """The master of one group's shard is killed: both nodes say so in
        /healthz and go on with the other shards; a push to that group
        meanwhile is kept, and once the replica is promoted every client
        has each message once, each group's in order, and what follows too."""
        await self.start_nodes(workers=2)
        groups = on_each(SHARDS)
        clients, expected = await clients_in_groups(self, groups)
        await self.settle(clients, expected)
        expected = {c: [] for c in clients}

        victim = groups[0]
        index = shard_of(f"group:{victim}", SHARDS)
        master = self.cluster.master_of(self.prefixes[index])
        replica = self.cluster.replica_of(master)
        await master.stop()
        for node in ("a", "b"):
            status, body = await self.degraded(node)
            self.assertIn(f"shard {index} of {SHARDS}", body["reason"])
        for group in groups[1:]:  # the other masters' shards go on
            msg = await self.push_on("b", {"group": group})
            await eventually(lambda: all(c.messages and c.messages[-1]["id"] == msg
                                         for c in clients), 10, "the other shards' pushes")
            for c in clients:
                expected[c].append(msg)
        during = await self.push_on("a", {"group": victim}, "during")
        await eventually(lambda: replica.call("ROLE")[0] == b"master", 30, "promoted")
        for node in self.nodes.values():
            await self.wait_healthy(node, 30)
        # through the same worker as the kept one: it comes after it (what
        # other publishers send meanwhile may come before what was kept)
        after = await self.push_on("a", {"group": victim}, "after")
        for c in clients:
            expected[c] += [during, after]
        await self.settle(clients, expected)  # each once, each channel's in order


class ClusterResumeTests(ClusterNodesTestCase, resume.ShardedResumeTests):
    """The server's tests of resume across independent shards, through the
    cluster's logical shards; a shard stopped or restarted empty is its
    master and replica (``ShardServers``)."""
