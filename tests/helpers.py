"""Shared test fixtures: a real server on a loopback port, real clients, HTTP."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
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

    async def client(self, user: str | None = None, groups: tuple[str, ...] = ()):
        """A connected client, authenticated as ``user`` and in ``groups``."""
        c = await connect(self.url)
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
