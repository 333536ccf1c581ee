"""The master process: binds the sockets, runs the workers and the AMP hub.

Service tree (``Master``)::

    Master (MultiService)
      ListeningSockets  every endpoint, bound here, never accepted on here
      Pool              spawns the workers, restarts them, routes their messages

Each worker is ``python -m pushsvc.pool.worker`` with its listening sockets on
descriptors 5, 6, ... (one per endpoint), its AMP pipe on 3 (master -> worker) and 4 (worker ->
master), and its stdout/stderr piped back here and re-logged as
``worker N: ...``.
"""

from __future__ import annotations

import os
import re
import sys
from collections import deque

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import SSL4ServerEndpoint, _TCPServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.tcp import makeBinding
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp

from ..server import LISTEN_ERRORS, exit_cannot_listen
from .hub import SubscriptionTable
from .wire import (DeliverBatch, Hello, Outbox, Perform, PublishBatch, RunCommand,
                   Subscribe, Unsubscribe, unpack_publishes)
from .worker import AMP_IN, AMP_OUT, ENV, FIRST_SOCKET, describe

_log = Logger()

QUICK_EXIT = 5.0        # a worker that dies sooner than this counts as crashing at start
MAX_BACKOFF = 30.0      # the longest wait before restarting a crashing worker
STOP_GRACE = 5.0        # seconds a worker gets beyond close_timeout to exit at shutdown
_LOG_LINE = re.compile(r"^(?P<level>debug|info|warn|error|critical) (?P<namespace>\S+) "
                       r"(?P<text>.*)$", re.S)


def bind(reactor, description: str, copies: int) -> list:
    """Bind ``description`` in the master; its listening ports, not accepting.

    A TCP endpoint gets ``copies`` sockets on the same address with
    SO_REUSEPORT, one per worker, so the kernel spreads new connections evenly
    (on one shared socket every idle worker is woken and the same one tends to
    win).  Other endpoints get one socket that every worker shares.
    """
    endpoint = serverFromString(reactor, description)
    factory = Factory()
    factory.noisy = False
    if isinstance(endpoint, _TCPServerEndpoint):
        ports, number = [], endpoint._port
        for _ in range(copies):
            binding = makeBinding(endpoint._interface, number, reuseAddress=True,
                                  reusePort=True)
            ports.append(reactor.listenTCP(binding, factory, endpoint._backlog))
            number = ports[0].getHost().port  # port 0: the others share the one chosen
    elif isinstance(endpoint, SSL4ServerEndpoint):
        raise CannotListenError(None, description, "TLS with the worker pool is not "
                                "supported yet; use --workers 0 for ssl: endpoints")
    else:
        ports, failures = [], []
        endpoint.listen(factory).addCallbacks(ports.append, failures.append)
        if failures:  # listening is synchronous for these endpoints
            failures[0].raiseException()
    for port in ports:
        port.stopReading()
    return ports


class ListeningSockets(Service):
    """Every listening endpoint, bound in the master and accepted on only by workers."""

    def __init__(self, reactor, descriptions: list[str], copies: int):
        self.reactor = reactor
        self.descriptions = descriptions
        self.copies = copies
        self.ports: list[list] = []

    def privilegedStartService(self):
        super().privilegedStartService()
        for description in self.descriptions:
            try:
                ports = bind(self.reactor, description, self.copies)
            except LISTEN_ERRORS as e:
                exit_cannot_listen(description, e)
            host = ports[0].getHost()
            _log.info("listening on {endpoint} ({host}:{port}, {count} socket(s))",
                      endpoint=description, host=getattr(host, "host", ""),
                      port=getattr(host, "port", ""), count=len(ports))
            self.ports.append(ports)

    def startService(self):
        if not self.ports:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        for port in (p for ports in self.ports for p in ports):
            port.stopListening()

    def for_worker(self, index: int) -> list[tuple[int, int]]:
        """Worker ``index``'s socket of each endpoint: (descriptor, address family)."""
        return [(ports[index % len(ports)].fileno(), ports[index % len(ports)].addressFamily)
                for ports in self.ports]

    def address(self, endpoint: int = 0):
        return self.ports[endpoint][0].getHost()


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

    @PublishBatch.responder
    def publish(self, batch):
        # An exception out of a responder would make AMP drop this worker's pipe.
        try:
            self.pool.forward(self.index, batch)
        except ValueError:
            _log.failure("worker {index} sent a malformed PublishBatch", index=self.index)
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
        try:
            self.process.writeToChild(AMP_IN, data)
        except KeyError:  # the pipe is gone; processEnded follows
            pass

    def writeSequence(self, seq):
        self.write(b"".join(seq))

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
        self.started = pool.clock.seconds()
        self.ended: Deferred = Deferred()
        self.last_lines: deque[str] = deque(maxlen=8)
        self._partial = {1: b"", 2: b""}

    pid: int | None = None  # kept after the process ends (Twisted's transport forgets it)

    def connectionMade(self):
        self.pid = self.transport.pid
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
    """Spawns and watches the workers, and is the hub between them.

    ``clock`` (default: ``reactor``) times the restart delays, a worker's life,
    the kill at shutdown and the flush of the hub's batches; ``worker_argv`` is
    a worker's command line.
    """

    def __init__(self, settings, reactor, count: int, sockets: ListeningSockets,
                 clock=None, worker_argv: list[str] | None = None):
        self.settings = settings
        self.reactor = reactor
        self.clock = clock or reactor
        self.worker_argv = worker_argv or [sys.executable, "-m", "pushsvc.pool.worker"]
        self.count = count
        self.sockets = sockets
        self.table = SubscriptionTable()
        self.workers: dict[int, WorkerProcess] = {}
        self.ready: set[int] = set()
        self.crashes: dict[int, int] = {}
        self.restarts = 0
        self._stopping = False
        self.outbox = Outbox(self.clock, self._deliver)  # WorkerProcess -> records

    # -- spawning ---------------------------------------------------------

    def startService(self):
        super().startService()
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> WorkerProcess:
        inherited = self.sockets.for_worker(index)
        env = os.environ.copy()
        env[ENV] = describe(self.settings, index, [family for _, family in inherited])
        child_fds = {0: "w", 1: "r", 2: "r", AMP_IN: "w", AMP_OUT: "r"}
        for offset, (fd, _) in enumerate(inherited):
            child_fds[FIRST_SOCKET + offset] = fd
        worker = WorkerProcess(self, index)
        self.workers[index] = worker
        self.reactor.spawnProcess(worker, self.worker_argv[0], self.worker_argv,
                                  env=env, childFDs=child_fds)
        return worker

    def worker_ready(self, index: int, owner: str) -> None:
        worker = self.workers[index]
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
        lived = self.clock.seconds() - worker.started
        self.crashes[index] = self.crashes.get(index, 0) + 1 if lived < QUICK_EXIT else 0
        delay = 0.0 if not self.crashes[index] else min(
            MAX_BACKOFF, 0.25 * 2 ** (self.crashes[index] - 1))
        last = worker.last_lines[-1].strip() if worker.last_lines else "no output"
        _log.error("worker {index} (pid {pid}) {how} after {lived:.1f} s (last output: "
                   "{last}); restarting it in {delay:.2f} s", index=index, pid=worker.pid,
                   how=_how_it_ended(reason), lived=lived, last=last, delay=delay)
        self.restarts += 1
        self.clock.callLater(delay, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self.workers:
            self.spawn(index)

    def stopService(self):
        super().stopService()
        self._stopping = True
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, "TERM")
        kill = self.clock.callLater(self.settings.close_timeout + STOP_GRACE,
                                    lambda: [_signal(w, "KILL") for w in workers])
        done = DeferredList([w.ended for w in workers])
        done.addBoth(lambda _: kill.active() and kill.cancel())
        return done

    # -- the hub -------------------------------------------------------------

    def forward(self, origin: int, batch: bytes) -> None:
        """Queue each message of a worker's PublishBatch for every other worker
        subscribed to one of its channels; each worker gets its messages as one
        DeliverBatch at the end of the turn.

        Batching here too makes the hub's cost per AMP box, not per message;
        each message's record goes on as the bytes it came in.
        """
        for channels, record in unpack_publishes(batch):
            for index in self.table.targets(channels, origin):
                worker = self.workers.get(index)
                if worker is not None:
                    self.outbox.add(worker, record)

    def _deliver(self, worker: WorkerProcess, batch: bytes) -> None:
        if self.workers.get(worker.index) is worker:  # it has not ended meanwhile
            worker.amp.callRemote(DeliverBatch, batch=batch)

    def run_command(self, name: str, args) -> Deferred:
        """Run a command on every ready worker; the results of those that answered.

        The queued messages go first: a command never overtakes a message
        published before it.
        """
        self.outbox.flush()
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
    """The master process of ``--workers N`` (``pool_options``: Pool's ``clock``
    and ``worker_argv``)."""

    def __init__(self, settings, reactor, count: int, **pool_options):
        super().__init__()
        self.sockets = ListeningSockets(reactor, settings.endpoints, count)
        self.sockets.setServiceParent(self)
        self.pool = Pool(settings, reactor, count, self.sockets, **pool_options)
        self.pool.setServiceParent(self)
