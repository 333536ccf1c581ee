"""Shared test fixtures: a real server on a loopback port, real clients, HTTP,
the real ``twistd``/``twist`` as a child process."""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from pushsvc.client import connect
from pushsvc.config import Settings
from pushsvc.server import PushServer


def settings(**overrides: Any) -> Settings:
    """Test settings: the defaults with a fixed node name and ``overrides``."""
    return replace(Settings(node="test"), **overrides)


class ServerTestCase(unittest.TestCase):
    """Starts a one-process server on 127.0.0.1 (port 0) for each test."""

    clock = None  # a task.Clock to drive timers, or None for the real reactor

    agent = None  # the twisted.web Agent self.http uses; None: a fresh one each time

    def start_server(self, **overrides: Any) -> PushServer:
        self.server = PushServer(settings(**overrides), reactor, clock=self.clock)
        listener = self.server.listen(reactor, "tcp:0:interface=127.0.0.1")
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.use_port(listener._waitingForPort.result.getHost().port)
        return self.server

    def use_port(self, port: int) -> None:
        """Point the client helpers at a server on 127.0.0.1:``port``."""
        self.port = port
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def engine(self):
        return self.server.engine

    client_tls = None  # client TLS options for a wss:// url

    async def client(self, user: str | None = None, groups: tuple[str, ...] = ()):
        """A connected client, authenticated as ``user`` and in ``groups``."""
        c = await connect(self.url, tls=self.client_tls)
        self.addCleanup(self._close_client, c)
        if user is not None:
            await c.request("auth", user=user)
        for group in groups:
            await c.request("join", group=group)
        return c

    @staticmethod
    def _close_client(c):
        if c.close_code is None and c.state == c.STATE_OPEN:
            return c.disconnect()
        return None

    async def http(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> tuple[int, Any]:
        """One HTTP request; returns (status, parsed JSON body)."""
        from twisted.web.client import FileBodyProducer
        from io import BytesIO
        data = raw if raw is not None else (
            None if body is None else json.dumps(body).encode())
        producer = FileBodyProducer(BytesIO(data)) if data is not None else None
        hdrs = Headers({k: [v] for k, v in (headers or {}).items()})
        response = await (self.agent or Agent(reactor)).request(
            method.encode(), (self.base + path).encode(), hdrs, producer)
        text = await readBody(response)
        return response.code, json.loads(text) if text else None

    async def push(self, to: dict[str, Any], data: Any, **kw: Any) -> str:
        status, body = await self.http("POST", "/api/push", {"to": to, "data": data}, **kw)
        self.assertEqual(status, 202, body)
        return body["id"]


BIN = os.path.dirname(sys.executable)
START_DEADLINE = 15.0  # seconds for a child to serve /healthz
EXIT_DEADLINE = 15.0   # seconds for a child to exit


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child(ProcessProtocol):
    """A child process: collects its output and knows its exit status."""

    def __init__(self):
        self.stdout = b""
        self.stderr = b""
        self.status: int | None = None  # exit code; None while running or if signalled
        self.done = False
        self._waiters: list[Deferred] = []

    def outReceived(self, data):
        self.stdout += data

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.status, self.done = reason.value.exitCode, True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.status)

    def exited(self) -> Deferred:
        """Fires with the exit code once the process has ended."""
        d = Deferred()
        if self.done:
            d.callback(self.status)
        else:
            self._waiters.append(d)
        return d

    def kill(self) -> Deferred | None:
        if self.done:
            return None
        self.transport.signalProcess("KILL")
        return self.exited()

    def output(self) -> str:
        return (self.stdout + self.stderr).decode("utf-8", "replace")

    def stderr_lines(self) -> list[str]:
        return [l for l in self.stderr.decode("utf-8", "replace").splitlines() if l.strip()]


class ChildTestCase(ServerTestCase):
    """Runs the real ``twistd``/``twist pushsvc`` as a child process (in a
    temporary folder, no pid file); ServerTestCase's client/http/push talk to
    the child's port."""

    def setUp(self):
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)

    def spawn(self, script: str, *args: str) -> Child:
        """Start ``script`` (twistd or twist) with ``args``; SIGKILLed at cleanup."""
        child = Child()
        executable = os.path.join(BIN, script)
        prefix = ["-n", "--pidfile="] if script == "twistd" else []
        reactor.spawnProcess(child, executable, [executable, *prefix, "pushsvc", *args],
                             env=os.environ.copy(), path=self.cwd)
        self.addCleanup(child.kill)
        return child

    async def wait_exit(self, child: Child) -> int | None:
        d = child.exited().addTimeout(EXIT_DEADLINE, reactor)
        try:
            return await d
        except Exception:
            self.fail(f"still running after {EXIT_DEADLINE} s:\n{child.output()}")

    async def wait_serving(self, child: Child, port: int, workers: int = 0) -> None:
        """Poll GET /healthz on ``port`` until it answers 200; with ``workers``,
        until each of a pool's workers has said it is ready too (one worker
        answers /healthz while another may still be starting)."""
        self.use_port(port)
        deadline = reactor.seconds() + START_DEADLINE
        while True:
            if child.done:
                self.fail(f"exited with {child.status} before serving:\n{child.output()}")
            try:
                status, body = await self.http("GET", "/healthz")
            except ConnectError:
                status, body = None, None
            if status != 200 and reactor.seconds() <= deadline:
                await deferLater(reactor, 0.05)  # not listening, or its Redis not yet there
                continue
            if status is None:
                self.fail(f"no /healthz on {port} after {START_DEADLINE} s:\n{child.output()}")
            self.assertEqual(status, 200, body)
            break
        for n in range(workers):
            await eventually(lambda: b"worker %d ready" % n in child.stdout + child.stderr,
                             START_DEADLINE, f"worker {n} ready")


async def eventually(condition, timeout: float = 10.0, what: str = "the condition"):
    """Poll ``condition()`` every 10 ms until true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await deferLater(reactor, 0.01, lambda: None)


def run(coro_fn):
    """Decorate an ``async def`` test so trial gets a Deferred."""
    def wrapper(self, *a, **kw):
        return ensureDeferred(coro_fn(self, *a, **kw))
    wrapper.__name__ = coro_fn.__name__
    wrapper.__doc__ = coro_fn.__doc__
    return wrapper
