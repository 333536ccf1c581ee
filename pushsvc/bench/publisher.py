"""Pushing: ``POST /api/push`` (or ``/api/batch``) over a few keep-alive
connections, pipelined."""

from __future__ import annotations

import select
import socket
import time
from collections import Counter
from typing import Callable

from .wire import ResponseReader, http_request


class Publisher:
    """Sends pushes as fast as the server answers, or on a fixed schedule.

    As fast as possible, each connection keeps ``window`` requests waiting for
    their answer.  On a schedule (``rate`` pushes per second) a push leaves at
    its time whatever the answers do, on the connection with the fewest
    waiting.  ``make_body(n)`` builds the n-th body right before it is sent
    (so a timestamp in it is the send time).
    """

    def __init__(self, host: str, port: int, connections: int = 4, window: int = 16,
                 api_key: str | None = None, path: str = "/api/push"):
        self.address = (host, port)
        self.path = path
        self.host = f"{host}:{port}"
        self.connections = connections
        self.window = window
        self.api_key = api_key

    def run(self, count: int, make_body: Callable[[int], bytes], rate: float | None = None,
            timeout: float = 60.0, tick: Callable[[int], None] | None = None) -> dict:
        """Send ``count`` pushes; wait for every answer, at most ``timeout`` seconds.

        Returns ``{sent, accepted, errors, first, last_sent, last_answer}``
        (times are time.time() values).
        """
        socks = [socket.create_connection(self.address, timeout=10)
                 for _ in range(self.connections)]
        epoll = select.epoll()
        waiting = {}
        readers = {}
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            epoll.register(sock.fileno(), select.EPOLLIN)
            waiting[sock.fileno()] = 0
            readers[sock.fileno()] = ResponseReader()
        by_fd = {sock.fileno(): sock for sock in socks}
        errors: Counter[str] = Counter()
        sent = accepted = 0
        start = time.time()
        deadline = start + timeout
        last_sent = last_answer = next_tick = start
        try:
            while sent < count or sum(waiting.values()):
                now = time.time()
                if now >= deadline:
                    errors["no answer before the timeout"] += sum(waiting.values())
                    break
                wait = 0.1
                if rate is None:
                    for fd, sock in by_fd.items():
                        n = min(self.window - waiting[fd], count - sent)
                        if n > 0:
                            sock.sendall(b"".join(self._request(make_body(sent + j))
                                                  for j in range(n)))
                            waiting[fd] += n
                            sent += n
                            last_sent = time.time()
                elif sent < count:
                    due = start + sent / rate
                    if now >= due:
                        fd = min(waiting, key=waiting.get)
                        by_fd[fd].sendall(self._request(make_body(sent)))
                        waiting[fd] += 1
                        sent += 1
                        last_sent = now
                        wait = 0
                    else:
                        wait = min(wait, due - now)
                for fd, _ in epoll.poll(wait):
                    data = by_fd[fd].recv(65536)
                    if not data:
                        raise ConnectionError("the server closed a push connection")
                    for status, body in readers[fd].feed(data):
                        waiting[fd] -= 1
                        last_answer = time.time()
                        if status == 202:
                            accepted += 1
                        else:
                            errors[f"{status} {body[:100].decode('utf-8', 'replace')}"] += 1
                if tick and now >= next_tick:
                    tick(sent)
                    next_tick = now + 0.25
        finally:
            epoll.close()
            for sock in socks:
                sock.close()
        return {"sent": sent, "accepted": accepted, "errors": dict(errors), "first": start,
                "last_sent": last_sent, "last_answer": last_answer}

    def _request(self, body: bytes) -> bytes:
        return http_request("POST", self.path, self.host, body, self.api_key)
