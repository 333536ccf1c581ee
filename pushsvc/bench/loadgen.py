"""A generator process: its share of the benchmark's clients, on one epoll.

The coordinator (``workloads``) starts a few of these and drives them over a
pipe with small commands; each answers one reply per command.  Generator ``g``
of ``G`` owns the clients whose index ``i`` has ``i % G == g``, so any
"first k clients" are spread evenly over the generators.  Live counts go to a
shared array the coordinator reads for its progress line:
``[opened, failed, msg frames received, unique deliveries]``.

Commands (name, arguments) and replies:

- ``connect(clients, concurrency, timeout)``: open the clients, at most
  ``concurrency`` handshakes at a time; a client counts as opened when its
  ``welcome`` arrived.  -> ``{opened, failed, first, last, handshakes}``:
  ``handshakes`` has each opened client's handshake time, in seconds from
  the start of its TCP connect to its ``welcome``.
- ``request(upto, op, fields, timeout)``: every client with index < ``upto``
  sends ``{"op": op, "ref": 1, **fields}`` (``{i}`` in a field's value is
  replaced by the client's index) and waits for its ``ok``.  -> ``{ok, errors}``

Pusher clients (``pusher``: the path is ``/app/KEY?protocol=7``) count as
opened at ``pusher:connection_established``; their ``join`` of a group is a
``pusher:subscribe`` to the channel of that name, answered by
``pusher_internal:subscription_succeeded`` (or ``pusher:subscription_error``).
- ``expect(seq0, span, upto, unicast, sample_every)``: set up the tally of a
  workload: messages ``seq0`` .. ``seq0 + span - 1``, each for every client
  with index < ``upto`` (or, ``unicast``, each for one client).
  -> ``{}``
- ``report()``: the tally (see ``wire.Tally.summary``) plus the connections
  lost since the last report; then a fresh empty tally.
- ``close()``: reset every connection (no TIME_WAIT left behind) and exit.
"""

from __future__ import annotations

import errno
import json
import resource
import select
import socket
import struct
import time
import traceback
from collections import Counter

from .wire import (MSG_PREFIX, OP_PONG, PUSHER_PREFIX, FrameError, FrameReader, Tally,
                   check_handshake, client_frame, handshake_request)

CONNECTING, HANDSHAKE, OPEN = "connecting", "handshake", "open"
LINGER_RESET = struct.pack("ii", 1, 0)

# Indexes into the shared progress array (four per generator).
OPENED, FAILED, RECEIVED, UNIQUE = range(4)
PROGRESS_FIELDS = 4


# A server frame's first field, as the generator reads it: (op or event) -> kind.
KINDS = {"welcome": "welcome", "ok": "ok", "error": "error",
         "pusher:connection_established": "welcome",
         "pusher_internal:subscription_succeeded": "ok",
         "pusher:subscription_error": "error", "pusher:error": "error"}


class Client:
    __slots__ = ("index", "sock", "state", "head", "reader", "welcomed", "started")

    def __init__(self, index: int, prefix: bytes = MSG_PREFIX):
        self.index = index
        self.sock = None
        self.state = CONNECTING
        self.head = b""
        self.reader = FrameReader(prefix=prefix)
        self.welcomed = False
        self.started = 0.0      # time.monotonic() when its TCP connect began


class Generator:
    def __init__(self, number: int, generators: int, host: str, port: int, path: str,
                 ctrl, progress):
        self.number = number
        self.generators = generators
        self.address = (host, port)
        self.handshake = handshake_request(host, port, path)
        self.pusher = path.startswith("/app/")
        self.prefix = PUSHER_PREFIX if self.pusher else MSG_PREFIX
        self.ctrl = ctrl
        self.progress = progress
        self.offset = number * PROGRESS_FIELDS
        self.epoll = select.epoll()
        self.epoll.register(ctrl.fileno(), select.EPOLLIN)
        self.clients: list[Client] = []
        self.by_fd: dict[int, Client] = {}
        self.tally = Tally()
        self.errors: Counter[str] = Counter()   # failed connects, by reason
        self.lost: Counter[str] = Counter()     # opened clients that went away
        self.opened = 0
        self.phase = None       # the command waiting to be answered
        self.deadline = 0.0
        self.waiting: list[Client] = []          # clients not yet connecting
        self.in_flight = 0
        self.concurrency = 0
        self.first = self.last = 0.0
        self.handshakes: list[float] = []       # seconds, connect to welcome
        self.replies_wanted = 0
        self.replies = 0
        self.errors_before = 0
        self.finished = False

    # -- the loop ----------------------------------------------------------

    def serve(self) -> None:
        ctrl_fd = self.ctrl.fileno()
        by_fd = self.by_fd
        poll = self.epoll.poll
        progress, offset = self.progress, self.offset
        clock = time.time
        while not self.finished:
            for fd, mask in poll(0.05, 4096):
                client = by_fd.get(fd)
                if client is None:
                    if fd == ctrl_fd:
                        self.command(*self.ctrl.recv())
                    continue
                if client.state is OPEN:
                    try:
                        data = client.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        self.drop(client, errno.errorcode.get(e.errno, str(e)))
                        continue
                    if not data:
                        self.drop(client, "closed by the server")
                        continue
                    for first, payload in client.reader.feed(data, clock()):
                        self.frame(client, first, payload)
                else:
                    self.connecting(client, mask)
            tally = self.tally
            progress[offset + OPENED] = self.opened
            progress[offset + FAILED] = sum(self.errors.values())
            progress[offset + RECEIVED] = tally.received
            progress[offset + UNIQUE] = tally.unique
            if self.phase:
                self.check_phase(clock())

    def command(self, name: str, *args) -> None:
        getattr(self, "cmd_" + name)(*args)

    def reply(self, body: dict) -> None:
        self.ctrl.send(("ok", body))
        self.phase = None

    # -- connecting ----------------------------------------------------------

    def cmd_connect(self, clients: int, concurrency: int, timeout: float) -> None:
        mine = range(self.number, clients, self.generators)
        self.clients = [Client(i, self.prefix) for i in mine]
        self.waiting = list(reversed(self.clients))
        self.concurrency = concurrency
        self.phase = "connect"
        self.deadline = time.time() + timeout
        self.first = time.time()
        self.handshakes = []
        self.start_more()

    def start_more(self) -> None:
        while self.waiting and self.in_flight < self.concurrency:
            client = self.waiting.pop()
            sock = client.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.in_flight += 1
            client.started = time.monotonic()
            err = sock.connect_ex(self.address)
            if err not in (0, errno.EINPROGRESS):
                self.fail(client, errno.errorcode.get(err, str(err)), registered=False)
                continue
            self.by_fd[sock.fileno()] = client
            self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def connecting(self, client: Client, mask: int) -> None:
        sock = client.sock
        if client.state is CONNECTING:
            if not mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                return      # a stale event of a closed socket whose number was reused
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(client, errno.errorcode.get(err, str(err)))
                return
            try:
                sock.send(self.handshake)
            except OSError as e:
                self.fail(client, errno.errorcode.get(e.errno, str(e)))
                return
            client.state = HANDSHAKE
            self.epoll.modify(sock.fileno(), select.EPOLLIN)
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.fail(client, errno.errorcode.get(e.errno, str(e)))
            return
        if not data:
            self.fail(client, "closed during the handshake")
            return
        client.head += data
        end = client.head.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            check_handshake(client.head[:end + 4])
        except FrameError as e:
            self.fail(client, str(e))
            return
        rest, client.head = client.head[end + 4:], b""
        client.state = OPEN
        for first, payload in client.reader.feed(rest, time.time()):
            self.frame(client, first, payload)

    def fail(self, client: Client, reason: str, registered: bool = True) -> None:
        """A client that never opened."""
        self.errors[reason] += 1
        self.in_flight -= 1
        self.forget(client, registered)
        self.start_more()

    def forget(self, client: Client, registered: bool = True) -> None:
        sock, client.sock, client.state = client.sock, None, None
        if registered:
            self.by_fd.pop(sock.fileno(), None)
            self.epoll.unregister(sock.fileno())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()

    def drop(self, client: Client, reason: str) -> None:
        """A client that was open and went away."""
        if not client.welcomed:
            self.fail(client, reason)
            return
        self.lost[reason] += 1
        self.forget(client)

    # -- frames other than pushed messages ---------------------------------------

    def frame(self, client: Client, first: int, payload: bytes) -> None:
        if first == 0x81:
            body = json.loads(payload)
            op = KINDS.get(body.get("event") if self.pusher else body.get("op"))
            if op == "welcome" and not client.welcomed:
                client.welcomed = True
                self.handshakes.append(time.monotonic() - client.started)
                self.opened += 1
                self.in_flight -= 1
                self.last = time.time()
                self.start_more()
            elif op == "ok":
                self.replies += 1
            elif op == "error":
                code = (body["data"].get("error") or body["data"].get("message")
                        if self.pusher else body.get("code"))
                self.errors[f"error {code}"] += 1
                self.replies += 1
        elif first == 0x88:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.drop(client, f"close {code} {payload[2:].decode('utf-8', 'replace')}")
        elif first == 0x89:
            client.sock.send(client_frame(payload, OP_PONG))
        elif first != 0x8A:
            raise FrameError(f"unexpected frame (first byte {first:#x})")

    # -- requests and workloads ---------------------------------------------------

    def cmd_request(self, upto: int, op: str, fields: dict, timeout: float) -> None:
        targets = [c for c in self.clients if c.index < upto and c.state is OPEN]
        self.replies = 0
        self.replies_wanted = len(targets)
        self.errors_before = sum(self.errors.values())
        for client in targets:
            body = {"op": op, "ref": 1,
                    **{k: v.format(i=client.index) for k, v in fields.items()}}
            if self.pusher:  # only joins: a subscription to the group's channel
                body = {"event": "pusher:subscribe", "data": {"channel": body["group"]}}
            client.sock.send(client_frame(json.dumps(body).encode()))
        self.phase = "request"
        self.deadline = time.time() + timeout

    def cmd_expect(self, seq0: int, span: int, upto: int, unicast: bool,
                   sample_every: int) -> None:
        if unicast:
            self.tally = tally = Tally(seq0, span, 1)
            for n, client in enumerate(self.clients):
                client.reader.expect(tally, 0, span, n % sample_every == 0)
        else:
            members = [c for c in self.clients if c.index < upto]
            self.tally = tally = Tally(seq0, span, len(members))
            for client in self.clients:
                client.reader.expect(tally, 0, 0, False)
            for n, client in enumerate(members):
                client.reader.expect(tally, n * span, span, n % sample_every == 0)
        self.reply({})

    def cmd_report(self) -> None:
        summary = self.tally.summary()
        self.tally = Tally()
        for client in self.clients:
            client.reader.expect(self.tally, 0, 0, False)
        self.reply({**summary, "lost": dict(self.lost)})
        self.lost.clear()

    def cmd_close(self) -> None:
        for client in self.clients:
            if client.sock is not None:
                self.forget(client)
        self.finished = True
        self.reply({})

    def check_phase(self, now: float) -> None:
        timed_out = now >= self.deadline
        if self.phase == "connect":
            if self.waiting or self.in_flight:
                if not timed_out:
                    return
                self.errors["timeout"] += len(self.waiting) + self.in_flight
            self.reply({"opened": self.opened, "failed": dict(self.errors),
                        "first": self.first, "last": self.last,
                        "handshakes": self.handshakes})
        elif self.phase == "request":
            if self.replies < self.replies_wanted and not timed_out:
                return
            errors = sum(self.errors.values()) - self.errors_before
            self.reply({"ok": self.replies - errors, "wanted": self.replies_wanted,
                        "errors": dict(self.errors)})


def run(number: int, generators: int, host: str, port: int, path: str, ctrl,
        progress) -> None:
    """The generator process's main function."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        Generator(number, generators, host, port, path, ctrl, progress).serve()
    except BaseException:
        ctrl.send(("error", traceback.format_exc()))
        raise SystemExit(1)
