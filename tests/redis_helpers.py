"""A real ``redis-server`` for the tests: on a free loopback port, in a
temporary folder, keeping nothing on disk; and a tiny blocking client to look
inside it.

``redis-server`` is found on PATH (``make test`` installs it with apt when it
can).  When it is missing, the Redis tests are skipped with the reason, but
with ``CI=true`` they fail: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
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
    this one is then a Sentinel.
    """

    def __init__(self, testcase, port: int | None = None, monitor: int | None = None):
        self.testcase = testcase
        self.path = require_redis(testcase)
        self.port = port or free_port()
        self.monitor = monitor
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
                "--logfile", "", "--loglevel", "warning"]
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
