"""A real ``redis-server`` for the tests: on a free loopback port, in a
temporary folder, keeping nothing on disk; and a tiny blocking client to look
inside it.

``redis-server`` is found on PATH (``make test`` installs it with apt when it
can).  When it is missing, the Redis tests are skipped with the reason, but
with ``CI=true`` they fail: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import random
import shutil
import socket

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from tests.helpers import Child, free_port

START_DEADLINE = 10.0  # seconds for redis-server to answer PING

MISSING = ("redis-server is not installed (make test installs it with apt when it "
           "can: apt-get install redis-server)")


def require_redis(testcase) -> str:
    """The path of redis-server; skips the test without it (fails it with CI=true)."""
    path = shutil.which("redis-server")
    if path:
        return path
    if os.environ.get("CI") == "true":
        testcase.fail(f"{MISSING}; CI=true, so this is a failure, not a skip")
    raise SkipTest(MISSING)


class RedisServer:
    """One redis-server child process; ``start``, ``stop`` (SIGKILL: the
    fault a node must survive) and ``start`` again on the same port.

    ``monitor``: the port of a Redis to watch as the master ``mymaster``:
    this one is then a Sentinel.  ``args``: more of redis-server's options.
    """

    def __init__(self, testcase, port: int | None = None, monitor: int | None = None,
                 args: tuple = ()):
        self.testcase = testcase
        self.path = require_redis(testcase)
        self.port = port or free_port()
        self.monitor = monitor
        self.args = list(args)
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        self.child: Child | None = None
        testcase.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        child = self.child = Child()
        args = [self.path, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--logfile", "", "--loglevel", "warning", *self.args]
        if self.monitor is not None:  # a Sentinel rewrites its config file: give one
            config = os.path.join(self.dir, "sentinel.conf")
            with open(config, "w") as f:
                f.write(f"sentinel monitor mymaster 127.0.0.1 {self.monitor} 1\n")
            args[1:1] = [config, "--sentinel"]
        reactor.spawnProcess(child, self.path, args, env=os.environ.copy(), path=self.dir)
        deadline = reactor.seconds() + START_DEADLINE
        while True:
            if child.done:
                self.testcase.fail(f"redis-server ended at start:\n{child.output()}")
            try:
                if self.call("PING") == "PONG":
                    return
            except OSError:
                pass
            if reactor.seconds() > deadline:
                self.testcase.fail(f"redis-server did not answer within {START_DEADLINE} s:"
                                   f"\n{child.output()}")
            await deferLater(reactor, 0.02, lambda: None)

    async def stop(self) -> None:
        """Kill it (nothing is saved) and wait until it has ended."""
        child, self.child = self.child, None
        if child is not None and not child.done:
            child.transport.signalProcess("KILL")
            await child.exited()

    def call(self, *args):
        """One command, answered (blocking, on loopback): str, int, bytes, list."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                arg = arg if isinstance(arg, bytes) else str(arg).encode()
                parts += [b"$%d\r\n" % len(arg), arg, b"\r\n"]
            s.sendall(b"".join(parts))
            return _read(s.makefile("rb"))

    def numsub(self, channel: str) -> int:
        """How many connections subscribe to ``channel`` (with the prefix)."""
        return self.call("PUBSUB", "NUMSUB", channel)[1]


class RedisCluster:
    """A real Redis Cluster: ``masters`` redis-servers in cluster mode, each
    with ``replicas`` replicas, joined by ``redis-cli --cluster create``
    (even slot ranges); a failed master is noticed after ``node_timeout_ms``,
    and the other masters serve on meanwhile (``cluster-require-full-coverage
    no``, as docs/operations.md advises; ``full_coverage``: Redis's default,
    every master refuses while a slot is not held)."""

    def __init__(self, testcase, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000, full_coverage: bool = False):
        self.testcase = testcase
        self.masters, self.replicas = masters, replicas
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-require-full-coverage", "yes" if full_coverage else "no")
        self.servers = [RedisServer(testcase, port=_cluster_port(), args=args)
                        for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{server.port}" for server in self.servers[:2])
        return f"redis+cluster://{seeds}"

    async def start(self) -> None:
        for server in self.servers:
            await server.start()
        cli = shutil.which("redis-cli") or self.testcase.fail("redis-cli is not installed")
        child = Child()
        nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
        reactor.spawnProcess(child, cli, [cli, "--cluster", "create", *nodes,
                                          "--cluster-replicas", str(self.replicas),
                                          "--cluster-yes"], env=os.environ.copy())
        if await child.exited() != 0:
            self.testcase.fail(f"redis-cli --cluster create failed:\n{child.output()}")
        await self.settled()

    async def settled(self, timeout: float = 20.0) -> None:
        """Until every running node says the cluster is ok and each master
        has its replicas connected."""
        deadline = reactor.seconds() + timeout
        while not self._ok():
            if reactor.seconds() > deadline:
                self.testcase.fail(f"the redis cluster did not settle within {timeout} s")
            await deferLater(reactor, 0.1, lambda: None)

    def _ok(self) -> bool:
        running = [s for s in self.servers if s.child is not None]
        try:
            if not all(b"cluster_state:ok" in s.call("CLUSTER", "INFO") for s in running):
                return False
            masters = [s for s in running if s.call("ROLE")[0] == b"master"]
            return len(masters) == self.masters and all(
                len(s.call("ROLE")[2]) == self.replicas for s in masters)
        except (OSError, RuntimeError):
            return False

    def master_of(self, key: str) -> RedisServer:
        """The master holding ``key``'s slot, as a running node sees it."""
        node = next(s for s in self.servers if s.child is not None)
        slot = node.call("CLUSTER", "KEYSLOT", key)
        port = next(int(r[2][1]) for r in node.call("CLUSTER", "SLOTS") if r[0] <= slot <= r[1])
        return next(s for s in self.servers if s.port == port)

    def migrate(self, slot: int, source: RedisServer, target: RedisServer) -> int:
        """Move ``slot`` and its keys from master ``source`` to master
        ``target`` as ``redis-cli --cluster reshard`` does; the keys moved."""
        steps = self.migration(slot, source, target)
        for _ in steps:
            pass
        return self.moved

    def migration(self, slot: int, source: RedisServer, target: RedisServer, batch: int = 100):
        """``migrate``, one step at each iteration (the slot importing and
        migrating; each ``batch`` of keys moved; the slot given to the
        target, then the source, then the other masters); ``moved`` counts
        the keys moved."""
        ids = {s.port: s.call("CLUSTER", "MYID") for s in (source, target)}
        target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
        self.moved = 0
        yield "migrating"
        while keys := source.call("CLUSTER", "GETKEYSINSLOT", slot, batch):
            source.call("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            self.moved += len(keys)
            yield f"{self.moved} keys moved"
        others = [s for s in self.servers if s.port not in ids and s.child is not None
                  and s.call("ROLE")[0] == b"master"]
        for server in [target, source, *others]:
            server.call("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
            yield f"given at {server.port}"

    def replica_of(self, master: RedisServer) -> RedisServer:
        ports = [int(r[1]) for r in master.call("ROLE")[2]]
        return next(s for s in self.servers if s.port in ports)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    while True:
        port = random.randrange(20000, 55535)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


def _read(f):
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else f.read(size + 2)[:-2]
    if kind == b"*":
        return [_read(f) for _ in range(int(rest))]
    raise OSError(f"unexpected reply {line!r}")
