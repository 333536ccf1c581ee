"""The master process: binds the sockets, runs the workers and the AMP hub.

Service tree (``Master``)::

    Master (MultiService)
      SharedSocket  one per --listen endpoint: bound here, never accepted on here
      Pool          spawns the workers, restarts them, routes their messages

Each worker is ``python -m pushsvc.pool.worker`` with the listening sockets on
descriptors 5, 6, ..., its AMP pipe on 3 (master -> worker) and 4 (worker ->
master), and its stdout/stderr piped back here and re-logged as
``worker N: ...``.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import deque

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp

from ..server import ListenerService
from .hub import SubscriptionTable
from .wire import Deliver, Hello, Perform, Publish, RunCommand, Subscribe, Unsubscribe
from .worker import AMP_IN, AMP_OUT, ENV, FIRST_SOCKET, describe

_log = Logger()

QUICK_EXIT = 5.0        # a worker that dies sooner than this counts as crashing at start
MAX_BACKOFF = 30.0      # the longest wait before restarting a crashing worker
STOP_GRACE = 5.0        # seconds a worker gets beyond close_timeout to exit at shutdown
_LOG_LINE = re.compile(r"^(?P<level>debug|info|warn|error|critical) (?P<namespace>\S+) "
                       r"(?P<text>.*)$", re.S)


class SharedSocket(ListenerService):
    """A listening socket the master binds and only the workers accept on."""

    def __init__(self, description: str, endpoint):
        factory = Factory()
        factory.noisy = False
        super().__init__(description, endpoint, factory)

    def privilegedStartService(self):
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._stop_accepting)

    @staticmethod
    def _stop_accepting(port):
        port.stopReading()
        return port

    @property
    def port(self):
        return self._waitingForPort.result

    def inheritable(self) -> tuple[int, int]:
        """The socket's descriptor and address family, for a child process."""
        return self.port.fileno(), self.port.addressFamily


class HubProtocol(amp.AMP):
    """The master's end of one worker's AMP pipe."""

    def __init__(self, pool: "Pool", index: int):
        super().__init__()
        self.pool = pool
        self.index = index

    @Hello.responder
    def hello(self, index, owner):
        self.pool.worker_ready(self.index, owner)
        return {}

    @Subscribe.responder
    def subscribe(self, channels):
        self.pool.table.subscribe(self.index, channels)
        return {}

    @Unsubscribe.responder
    def unsubscribe(self, channels):
        self.pool.table.unsubscribe(self.index, channels)
        return {}

    @Publish.responder
    def publish(self, channels, id, to, frame):
        self.pool.forward(self.index, channels, id, to, frame)
        return {}

    @RunCommand.responder
    def run_command(self, name, args):
        return self.pool.run_command(name, args).addCallback(
            lambda results: {"results": results})


class _PipeTransport:
    """What a HubProtocol writes to: the worker's descriptor 3."""

    def __init__(self, process_transport):
        self.process = process_transport

    def write(self, data):
        self.process.writeToChild(AMP_IN, data)

    def writeSequence(self, seq):
        self.process.writeToChild(AMP_IN, b"".join(seq))

    def loseConnection(self):
        self.process.closeChildFD(AMP_IN)

    def getPeer(self):
        return ("worker",)

    def getHost(self):
        return ("master",)


class WorkerProcess(ProcessProtocol):
    """One worker as the master sees it: process, AMP connection, log lines."""

    def __init__(self, pool: "Pool", index: int):
        self.pool = pool
        self.index = index
        self.amp = HubProtocol(pool, index)
        self.owner: str | None = None
        self.started = time.monotonic()
        self.ended: Deferred = Deferred()
        self.last_lines: deque[str] = deque(maxlen=8)
        self._partial = {1: b"", 2: b""}

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None

    def connectionMade(self):
        self.amp.makeConnection(_PipeTransport(self.transport))

    def childDataReceived(self, fd, data):
        if fd == AMP_OUT:
            self.amp.dataReceived(data)
            return
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self._relay(line.decode("utf-8", "replace"))

    def _relay(self, line: str) -> None:
        if not line.strip():
            return
        if line.startswith("\t"):  # a continuation (a traceback's lines)
            self.last_lines.append(line)
            _log.info("worker {index}: {text}", index=self.index, text=line.strip())
            return
        self.last_lines.append(line)
        found = _LOG_LINE.match(line)
        if found is None:
            _log.warn("worker {index}: {text}", index=self.index, text=line)
            return
        _log.emit(LogLevel.levelWithName(found["level"]), "worker {index}: {text}",
                  index=self.index, text=found["text"], worker_namespace=found["namespace"])

    def processEnded(self, reason):
        for fd in (1, 2):
            if self._partial.get(fd):
                self._relay(self._partial[fd].decode("utf-8", "replace"))
        self.amp.connectionLost(reason)
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)


class Pool(Service):
    """Spawns and watches the workers, and is the hub between them."""

    def __init__(self, settings, reactor, count: int, sockets: list[SharedSocket]):
        self.settings = settings
        self.reactor = reactor
        self.count = count
        self.sockets = sockets
        self.table = SubscriptionTable()
        self.workers: dict[int, WorkerProcess] = {}
        self.ready: set[int] = set()
        self.crashes: dict[int, int] = {}
        self.restarts = 0
        self._stopping = False

    # -- spawning ---------------------------------------------------------

    def startService(self):
        super().startService()
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> WorkerProcess:
        inherited = [s.inheritable() for s in self.sockets]
        env = os.environ.copy()
        env[ENV] = describe(self.settings, index, [family for _, family in inherited])
        child_fds = {0: "w", 1: "r", 2: "r", AMP_IN: "w", AMP_OUT: "r"}
        for offset, (fd, _) in enumerate(inherited):
            child_fds[FIRST_SOCKET + offset] = fd
        worker = WorkerProcess(self, index)
        self.workers[index] = worker
        self.reactor.spawnProcess(worker, sys.executable,
                                  [sys.executable, "-m", "pushsvc.pool.worker"],
                                  env=env, childFDs=child_fds)
        return worker

    def worker_ready(self, index: int, owner: str) -> None:
        worker = self.workers[index]
        worker.owner = owner
        self.ready.add(index)
        _log.info("worker {index} ready (pid {pid}, {owner})", index=index,
                  pid=worker.pid, owner=owner)

    def worker_ended(self, worker: WorkerProcess, reason) -> None:
        index = worker.index
        self.table.remove_worker(index)
        self.ready.discard(index)
        if self.workers.get(index) is worker:
            del self.workers[index]
        if self._stopping:
            return
        lived = time.monotonic() - worker.started
        self.crashes[index] = self.crashes.get(index, 0) + 1 if lived < QUICK_EXIT else 0
        delay = 0.0 if not self.crashes[index] else min(
            MAX_BACKOFF, 0.25 * 2 ** (self.crashes[index] - 1))
        last = worker.last_lines[-1].strip() if worker.last_lines else "no output"
        _log.error("worker {index} (pid {pid}) {how} after {lived:.1f} s (last output: "
                   "{last}); restarting it in {delay:.2f} s", index=index, pid=worker.pid,
                   how=_how_it_ended(reason), lived=lived, last=last, delay=delay)
        self.restarts += 1
        self.reactor.callLater(delay, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self.workers:
            self.spawn(index)

    def stopService(self):
        super().stopService()
        self._stopping = True
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, "TERM")
        kill = self.reactor.callLater(self.settings.close_timeout + STOP_GRACE,
                                      lambda: [_signal(w, "KILL") for w in workers])
        done = DeferredList([w.ended for w in workers])
        done.addBoth(lambda _: kill.active() and kill.cancel())
        return done

    # -- the hub -------------------------------------------------------------

    def forward(self, origin: int, channels, msg_id: str, to: bytes, frame: bytes) -> None:
        """Send a published message to every other worker subscribed to it."""
        for index in self.table.targets(channels, origin):
            worker = self.workers.get(index)
            if worker is not None:
                worker.amp.callRemote(Deliver, id=msg_id, to=to, frame=frame)

    def run_command(self, name: str, args) -> Deferred:
        """Run a command on every ready worker; the results of those that answered."""
        calls = [self.workers[i].amp.callRemote(Perform, name=name, args=args)
                 for i in sorted(self.ready)]
        d = DeferredList(calls, consumeErrors=True)
        return d.addCallback(
            lambda answers: [r["result"] for ok, r in answers if ok])


def _signal(worker: WorkerProcess, name: str) -> None:
    try:
        worker.transport.signalProcess(name)
    except ProcessExitedAlready:
        pass


def _how_it_ended(reason) -> str:
    value = reason.value
    if getattr(value, "signal", None):
        return f"was killed by signal {value.signal}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


class Master(MultiService):
    """The master process of ``--workers N``."""

    def __init__(self, settings, reactor, count: int):
        super().__init__()
        from twisted.internet.endpoints import serverFromString
        self.sockets = []
        for description in settings.endpoints:
            shared = SharedSocket(description, serverFromString(reactor, description))
            shared.setServiceParent(self)
            self.sockets.append(shared)
        self.pool = Pool(settings, reactor, count, self.sockets)
        self.pool.setServiceParent(self)
