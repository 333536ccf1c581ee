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
import socket
import struct
import sys
from collections import Counter, deque

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, _TCPServerEndpoint, serverFromString
from twisted.internet.abstract import isIPv6Address
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.tcp import makeBinding
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from ..config import ConfigError
from .. import loglevel, metrics
from ..control import ControlError, IControl
from ..history import History, Mailbox, kept_channels
from ..logtext import address_text, plural
from ..protocol import CLOSE_RESTART
from ..server import LISTEN_ERRORS, exit_cannot_listen
from ..tls import is_tls
from .hub import SubscriptionTable
from ..wire.hub_commands import (GatherMetrics, Hello, PublishBatch, Replay, RunCommand,
                                 Subscribe, TakeMail, Unsubscribe)
from ..wire.records import (RELAY, STORE, Outbox, message_parts, pack_message, reframe,
                            unpack_publishes)
from ..wire.worker_commands import (DeliverBatch, Perform, Refused, Reload, Retire,
                                    SetLogLevel, StopAccepting, protocol_error)
from .worker import AMP_IN, AMP_OUT, ENV, FIRST_SOCKET, describe

_log = Logger()

QUICK_EXIT = 5.0        # a worker that dies sooner than this counts as crashing at start
MAX_BACKOFF = 30.0      # the longest wait before restarting a crashing worker
STOP_GRACE = 5.0        # seconds a worker gets beyond close_timeout to exit at shutdown
COMMAND_TIMEOUT = 10.0  # seconds a worker has to answer a command
START_TIMEOUT = 30.0    # seconds a rolling restart waits for a new worker to accept
# How the master re-emits a worker's log event (``WorkerProcess._relay``).
RELAYED = loglevel.RELAYED
_LEVELS = tuple(LogLevel.iterconstants())


def check_free(interface: str, number: int) -> None:
    """CannotListenError when another process listens on ``interface``:``number``.

    Sockets with SO_REUSEPORT share a port with any other such socket of
    the same user: a second server on the port would bind too, and the
    kernel would split the clients between the two.  A socket without it
    cannot bind where anyone listens, so one is tried first.
    """
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((interface, number))
    except OSError as e:
        raise CannotListenError(interface, number, e)
    finally:
        probe.close()


def bind(reactor, description: str, copies: int) -> list:
    """Bind ``description`` in the master; its listening ports, not accepting.

    A TCP endpoint gets ``copies`` sockets on the same address with
    SO_REUSEPORT, one per worker, so the kernel spreads new connections evenly
    (on one shared socket every idle worker is woken and the same one tends to
    win).  An ``ssl:`` endpoint is bound the same way (its TCP sockets: each
    worker does the TLS itself).  Other endpoints get one socket that every
    worker shares.
    """
    endpoint = serverFromString(reactor, description)
    factory = Factory()
    factory.noisy = False
    if isinstance(endpoint, (_TCPServerEndpoint, SSL4ServerEndpoint)):
        ports, number = [], endpoint._port
        if number:
            check_free(endpoint._interface, number)
        for _ in range(copies):
            binding = makeBinding(endpoint._interface, number, reuseAddress=True,
                                  reusePort=True)
            ports.append(reactor.listenTCP(binding, factory, endpoint._backlog))
            number = ports[0].getHost().port  # port 0: the others share the one chosen
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
        # Per endpoint, its description if the workers serve TLS on it, else None.
        self.tls: list[str | None] = []

    def privilegedStartService(self):
        super().privilegedStartService()
        for description in self.descriptions:
            try:
                ports = bind(self.reactor, description, self.copies)
            except LISTEN_ERRORS as e:
                exit_cannot_listen(description, e)
            _log.info("listening on {endpoint} ({address}, {sockets})", endpoint=description,
                      address=address_text(ports[0].getHost()),
                      sockets=plural(len(ports), "socket"), count=len(ports))
            self.ports.append(ports)
            self.tls.append(description if is_tls(description) else None)

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

    def __init__(self, pool: "Pool", worker: "WorkerProcess"):
        super().__init__()
        self.pool = pool
        self.worker = worker

    @Hello.responder
    def hello(self, index, owner):
        self.pool.worker_ready(self.worker, owner)
        return {}

    @Subscribe.responder
    def subscribe(self, channels):
        self.pool.table.subscribe(self.worker, channels)
        return {}

    @Unsubscribe.responder
    def unsubscribe(self, channels):
        self.pool.table.unsubscribe(self.worker, channels)
        return {}

    @PublishBatch.responder
    def publish(self, batch):
        # An exception out of a responder would make AMP drop this worker's pipe.
        try:
            self.pool.forward(self.worker, batch)
        except (ValueError, struct.error):
            _log.failure("worker {index} sent a malformed PublishBatch",
                         index=self.worker.index)
        return {}

    @Replay.responder
    def replay(self, channels, since, epoch):
        return self.pool.replay(channels, since, epoch)

    @TakeMail.responder
    def take_mail(self, user):
        return {"messages": _records(self.pool.mailbox.take(user, self.pool.clock.seconds()))}

    @RunCommand.responder
    def run_command(self, name, args):
        return self.pool.run_command(name, args).addCallback(
            lambda results: {"results": results})

    @GatherMetrics.responder
    def gather_metrics(self):
        return self.pool.gather_metrics().addCallback(lambda values: {"values": values})


def unsent(writer) -> int:
    """Bytes a Twisted writer (a FileDescriptor, here a pipe) holds unwritten.

    Read off its buffer's private fields: its producer's pause and resume
    say only whether it is empty, and a worker that keeps up with a lag would
    never let it empty.
    """
    return len(writer.dataBuffer) - writer.offset + writer._tempDataLen


class _PipeTransport:
    """What a HubProtocol writes to: the worker's descriptor 3."""

    def __init__(self, worker: "WorkerProcess"):
        self.worker = worker

    def write(self, data):
        worker = self.worker
        if worker.overflowed:
            return
        pipe = worker.transport.pipes.get(AMP_IN)
        if pipe is None:  # the pipe is gone; processEnded follows
            return
        held = unsent(pipe)  # before this write: one big answer alone is fine
        if held > worker.pool.settings.max_worker_backlog:
            worker.overflow(held)
            return
        pipe.write(data)

    def writeSequence(self, seq):
        self.write(b"".join(seq))

    def loseConnection(self):
        self.worker.transport.closeChildFD(AMP_IN)

    def getPeer(self):
        return ("worker",)

    def getHost(self):
        return ("master",)


class WorkerProcess(ProcessProtocol):
    """One worker as the master sees it: process, AMP connection, log lines.

    ``index`` is its slot (which sockets it gets, the WORKER of its session
    ids); during a rolling restart two workers share a slot for a moment.
    """

    def __init__(self, pool: "Pool", index: int):
        self.pool = pool
        self.index = index
        self.amp = HubProtocol(pool, self)
        self.started = pool.clock.seconds()
        self.ended: Deferred = Deferred()
        self.ready = False        # it has said Hello: it accepts clients
        self.retiring = False     # a rolling restart is replacing it
        self.overflowed = False   # killed for not reading its pipe
        self.replacing: WorkerProcess | None = None  # the worker a rolling restart replaces
        self.spawned_with: tuple = ()  # (settings, log level) it was started with
        self.owner: str | None = None
        self.last_lines: deque[str] = deque(maxlen=8)
        self._partial = {1: b"", 2: b""}
        self._up: list[Deferred] = []

    pid: int | None = None  # kept after the process ends (Twisted's transport forgets it)

    def connectionMade(self):
        self.pid = self.transport.pid
        self.amp.makeConnection(_PipeTransport(self))

    def up(self) -> Deferred:
        """Fires with True once the worker accepts clients, False if it ends first."""
        if self.ready or self.ended.called:
            return succeed(self.ready)
        d = Deferred()
        self._up.append(d)
        return d

    def _fire_up(self, result: bool) -> None:
        waiting, self._up = self._up, []
        for d in waiting:
            d.callback(result)

    def hello(self, owner: str) -> None:
        self.ready, self.owner = True, owner
        self._fire_up(True)

    def overflow(self, held: int) -> None:
        """The worker would hold more than ``max_worker_backlog`` unread: kill
        it (the pool restarts it, its clients reconnect to the others)."""
        self.overflowed = True
        _log.error("worker {index} (pid {pid}) has not read {held} bytes of its pipe "
                   "(limit: {limit}); killing it", index=self.index, pid=self.pid,
                   held=held, limit=self.pool.settings.max_worker_backlog)
        _signal(self, "KILL")

    def childDataReceived(self, fd, data):
        if fd == AMP_OUT:
            self.amp.dataReceived(data)
            return
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self._relay(line.decode("utf-8", "replace"))

    def _relay(self, line: str) -> None:
        """Re-emit one line of the worker's output: a log event (one line of
        JSON, ``worker.log_to_master``) keeps its level, namespace, time,
        fields (a failure's ``traceback`` among them), and gains ``worker``,
        ``worker_pid``, ``index`` and ``text``: it reads ``worker N: TEXT``,
        then the traceback; any other line is a warning."""
        if not line.strip():
            return
        event = _worker_event(line) if line.startswith("{") else None
        if event is None:
            self.last_lines.append(line)
            _log.warn(RELAYED, index=self.index, worker=self.index, worker_pid=self.pid,
                      text=line.strip() if line.startswith("\t") else line)
            return
        text = formatEvent(event)
        self.last_lines.append(text.split("\n", 1)[0])
        event.pop("log_flattened", None)
        event.update(log_format=loglevel.RELAYED_FAILURE if "traceback" in event else RELAYED,
                     index=self.index, text=text, worker=self.index, worker_pid=self.pid)
        _log.observer(event)

    def processEnded(self, reason):
        for fd in (1, 2):
            if self._partial.get(fd):
                self._relay(self._partial[fd].decode("utf-8", "replace"))
        self.ready = False
        self.amp.connectionLost(reason)
        self.pool.worker_ended(self, reason)
        self._fire_up(False)
        self.ended.callback(None)

    def describe(self) -> dict:
        return {"worker": self.index, "pid": self.pid, "owner": self.owner,
                "ready": self.ready, "retiring": self.retiring,
                "uptime": round(self.pool.clock.seconds() - self.started, 1)}


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
        self.table = SubscriptionTable()           # channel <-> WorkerProcess
        self.workers: dict[int, WorkerProcess] = {}  # the current worker of each slot
        self.live: set[WorkerProcess] = set()      # every running worker, retiring ones too
        self.crashes: dict[int, int] = {}
        self.restarts = 0
        self.reloads: Counter[str] = Counter()  # "ok" / "failed" (PoolControl.reload)
        self.hub_round_trip = metrics.Histogram()  # Perform, as timed here
        # GET /metrics: each worker's values at the last scrape, and the counts
        # of the workers that have ended (so the machine's counters never fall).
        self._last_values: dict[WorkerProcess, dict] = {}
        self._ended_values: dict = {}
        self._stopping = False
        self._replacing = False
        self.outbox = Outbox(self.clock, self._deliver)  # WorkerProcess -> records
        self.history = History.from_settings(settings)
        self.mailbox = Mailbox.from_settings(settings)

    @property
    def ready(self) -> set[int]:
        """The slots whose current worker accepts clients."""
        return {index for index, worker in self.workers.items() if worker.ready}

    # -- spawning ---------------------------------------------------------

    def startService(self):
        super().startService()
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> WorkerProcess:
        inherited = self.sockets.for_worker(index)
        env = os.environ.copy()
        env[ENV] = describe(self.settings, index, [family for _, family in inherited],
                            tls=self.sockets.tls, epoch=self.history.epoch)
        child_fds = {0: "w", 1: "r", 2: "r", AMP_IN: "w", AMP_OUT: "r"}
        for offset, (fd, _) in enumerate(inherited):
            child_fds[FIRST_SOCKET + offset] = fd
        worker = WorkerProcess(self, index)
        worker.spawned_with = (self.settings, loglevel.current())
        self.workers[index] = worker
        self.live.add(worker)
        self.reactor.spawnProcess(worker, self.worker_argv[0], self.worker_argv,
                                  env=env, childFDs=child_fds)
        return worker

    def worker_ready(self, worker: WorkerProcess, owner: str) -> None:
        settings, level = worker.spawned_with
        if settings is not self.settings:  # a reload came while it started
            worker.amp.callRemote(Reload, settings=self.settings.to_json()).addErrback(
                lambda f: _log.failure("reloading worker {index} failed", f,
                                       index=worker.index))
        if level != loglevel.current():
            worker.amp.callRemote(SetLogLevel, level=loglevel.current()).addErrback(
                lambda f: None)
        worker.hello(owner)
        _log.info("worker {index} ready (pid {pid}, {owner})", index=worker.index,
                  pid=worker.pid, owner=owner)

    def worker_ended(self, worker: WorkerProcess, reason) -> None:
        index = worker.index
        last = self._last_values.pop(worker, None)
        if last is not None:
            self._ended_values = metrics.machine_values([self._ended_values,
                                                         metrics.counts_only(last)])
        self.table.remove_worker(worker)
        self.live.discard(worker)
        if self.workers.get(index) is worker:
            del self.workers[index]
            old = worker.replacing
            if old in self.live and not old.retiring:  # a failed replacement: the old one stays
                self.workers[index] = old
        if self._stopping or worker.retiring or self.workers.get(index) is not None:
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
        workers = list(self.live)
        for worker in workers:
            _signal(worker, "TERM")
        kill = self.clock.callLater(self.settings.close_timeout + STOP_GRACE,
                                    lambda: [_signal(w, "KILL") for w in workers])
        done = DeferredList([w.ended for w in workers])
        done.addBoth(lambda _: kill.active() and kill.cancel())
        return done

    # -- the hub -------------------------------------------------------------

    def forward(self, origin: WorkerProcess, batch: bytes) -> None:
        """Number and keep each message of a worker's PublishBatch (the
        history), and queue it for every worker subscribed to one of its
        channels, the origin included; each worker gets its messages as one
        DeliverBatch at the end of the turn.

        Batching here too makes the hub's cost per AMP box, not per message;
        a message record that keeps no history goes on as the bytes it came in.

        A ``RELAY`` record comes from a worker of a Redis node while Redis
        is away (broker/redis.py): its origin has delivered it to its own
        sessions, and Redis numbers and keeps it once it is back, so it goes
        as it came to the other workers subscribed to one of its channels,
        and nothing else.
        """
        history, now = self.history, self.clock.seconds()
        keeping = history.enabled
        for channels, record, flags in unpack_publishes(batch, with_flags=True):
            if flags & RELAY:
                for worker in self.table.targets(channels, origin):
                    self.outbox.add(worker, record)
                continue
            if flags & STORE:
                self.keep(channels, record, now)
            kept = keeping and kept_channels(channels)
            if kept:
                msg_id, frame = message_parts(record)
                record = reframe(record, history.record(kept, msg_id, frame, now))
            for worker in self.table.targets(channels):
                self.outbox.add(worker, record)

    def replay(self, channels, since: int, epoch: str) -> dict:
        """A worker's Replay, answered after the DeliverBatches queued before it."""
        self.outbox.flush()
        messages, gaps = self.history.replay(channels, since, epoch, self.clock.seconds())
        return {"messages": _records(messages), "gaps": gaps}

    def keep(self, channels, record, now: float) -> None:
        """Keep a stored push for each of its users no worker has a session of
        (the mailbox), as the subscriptions stand when it is routed."""
        offline = [c[5:] for c in channels
                   if c.startswith("user:") and c not in self.table.channels]
        if offline:
            msg_id, frame = message_parts(record)
            for user in offline:
                self.mailbox.put(user, msg_id.decode("utf-8", "surrogatepass"), frame, now)

    def _deliver(self, worker: WorkerProcess, batch: bytes) -> None:
        if worker in self.live:  # it has not ended meanwhile
            worker.amp.callRemote(DeliverBatch, batch=batch)

    def ask_all(self, command, **args) -> Deferred:
        """``command`` to every ready worker (retiring ones too: they still hold
        sessions), in slot order; the answers of those that gave one within
        COMMAND_TIMEOUT, each as (worker, answer or Failure)."""
        self.outbox.flush()  # a command never overtakes a message published before it
        workers = sorted((w for w in self.live if w.ready), key=lambda w: w.index)
        calls = [w.amp.callRemote(command, **args) for w in workers]
        if command is Perform:  # the hub's round trips (GET /metrics)
            calls = [metrics.timed(call, self.hub_round_trip.observe) for call in calls]
        calls = [call.addTimeout(COMMAND_TIMEOUT, self.clock) for call in calls]
        d = DeferredList(calls, consumeErrors=True)
        return d.addCallback(lambda answers: [(w, answer) for w, (_, answer)
                                              in zip(workers, answers)])

    def run_command(self, name: str, args) -> Deferred:
        """Run a command on every ready worker; the results of those that answered."""
        d = self.ask_all(Perform, name=name, args=args)
        return d.addCallback(lambda answers: [a["result"] for _, a in answers
                                              if not isinstance(a, Failure)])

    def gather_metrics(self) -> Deferred:
        """The machine's metric values (pushsvc/metrics.py): every ready
        worker's figures summed, the counts of the workers that have ended as
        they were at the last scrape (a restart does not lower a counter),
        and the master's own."""
        def summed(answers):
            parts = [self._ended_values]
            for worker, answer in answers:
                if not isinstance(answer, Failure):
                    parts.append(answer["result"])
                    if worker in self.live:
                        self._last_values[worker] = answer["result"]
            return metrics.machine_values(
                parts, workers=len(self.ready), restarts=self.restarts,
                reloads=dict(self.reloads),
                round_trips={"hub": self.hub_round_trip.to_json()})
        return self.ask_all(Perform, name="metrics", args={}).addCallback(summed)

    def reload(self, settings) -> Deferred:
        """Hand ``settings`` to every worker, which applies them and reloads the
        application module; one ``{"worker", "pid", "ok", "error"}`` each.

        Workers started from now on start with them.
        """
        self.settings = self.settings.reloaded(settings)
        self.history.configure(settings)
        self.mailbox.configure(settings)
        d = self.ask_all(Reload, settings=settings.to_json())
        return d.addCallback(lambda answers: [
            {"worker": w.index, "pid": w.pid, "ok": not _error_of(a), "error": _error_of(a)}
            for w, a in answers])

    async def restart_workers(self) -> dict:
        """Replace every worker by a new one, each client closed once.

        First every replacement starts and accepts on its slot's sockets
        beside the old worker; then every old worker stops accepting, so a
        client that reconnects can only reach a new one; then the old workers
        close their clients with 1012, spread over ``timeouts.restart_drain``
        seconds, and exit.  A replacement that does not come up is killed with
        the others started so far: the old workers keep serving, nothing
        changed, and the restart ends with RestartFailed.
        """
        if self._replacing:
            raise RestartFailed("a rolling restart is already running")
        self._replacing = True
        try:
            pairs = await self._start_replacements()
            olds = [old for _, old in pairs]
            stops = [old.amp.callRemote(StopAccepting).addTimeout(COMMAND_TIMEOUT, self.clock)
                     for old in olds]
            await DeferredList(stops, consumeErrors=True)
            await DeferredList([self.retire(old) for old in olds])
        finally:
            self._replacing = False
        ended = [str(new.index) for new, _ in pairs if new not in self.live]
        if ended:
            raise RestartFailed(f"the replacement of worker {', '.join(ended)} ended while "
                                "the old workers retired; the pool restarts it")
        replaced = []
        for new, old in pairs:
            new.replacing = None
            replaced.append({"worker": new.index, "old_pid": old.pid, "new_pid": new.pid})
            _log.info("worker {index} replaced (pid {old} -> {new})", index=new.index,
                      old=old.pid, new=new.pid)
        return {"replaced": replaced}

    async def _start_replacements(self) -> list[tuple[WorkerProcess, WorkerProcess]]:
        """A new worker for each slot, accepting: (new, old) pairs; on a
        failure every new one is killed and RestartFailed says why."""
        pairs = []
        for index in range(self.count):
            if self._stopping:
                self._abandon(pairs)
                raise RestartFailed("the server is stopping; nothing was replaced")
            old = self.workers.get(index)
            if old is None:  # crashed meanwhile: the pool is restarting it anyway
                continue
            new = self.spawn(index)
            new.replacing = old
            pairs.append((new, old))
            up = new.up().addTimeout(START_TIMEOUT, self.clock)
            if not await up.addErrback(lambda _: False):
                last = new.last_lines[-1].strip() if new.last_lines else "no output"
                self._abandon(pairs)
                raise RestartFailed(f"worker {index}'s replacement did not start "
                                    f"(last output: {last}); the old workers keep serving")
        return pairs

    @staticmethod
    def _abandon(pairs) -> None:
        """Kill the replacements of ``pairs``: their slots go back to the old ones."""
        for new, _ in pairs:
            _signal(new, "KILL")

    def retire(self, worker: WorkerProcess) -> Deferred:
        """Have ``worker`` close its clients with 1012 over the drain period
        and exit; fires when it has (killed if it takes longer than the drain,
        close_timeout and STOP_GRACE)."""
        worker.retiring = True
        drain = self.settings.restart_drain
        worker.amp.callRemote(Retire, code=CLOSE_RESTART, reason="server restarting, reconnect",
                              drain=drain)
        kill = self.clock.callLater(drain + self.settings.close_timeout + STOP_GRACE,
                                    _signal, worker, "KILL")
        return worker.ended.addBoth(lambda _: kill.active() and kill.cancel())


class RestartFailed(Exception):
    """A rolling restart stopped; the text says where and why."""


def _records(messages: list[tuple[str, bytes]]) -> bytes:
    """Messages as (id, frame) in message records, for a worker."""
    return b"".join(pack_message(msg_id, b"", frame) for msg_id, frame in messages)


def _error_of(answer) -> str | None:
    """The error text of a Reload answer (or of its failure), None if it worked."""
    if isinstance(answer, Failure):
        return f"no answer: {answer.getErrorMessage()}"
    return answer["error"] or None


def _worker_event(line: str) -> dict | None:
    """The log event a worker wrote as a line of JSON, or None if the line is
    not one (a print, a traceback before logging began)."""
    try:
        event = eventFromJSON(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("log_level") not in _LEVELS:
        return None
    return event


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


@implementer(IControl)
class PoolControl:
    """The console's view of a pool (``IControl``): the master asks the workers."""

    def __init__(self, pool: Pool):
        self.pool = pool

    def run(self, name, args):
        return self.pool.run_command(name, args)

    def push(self, to, data):
        ready = [w for w in self.pool.workers.values() if w.ready]
        if not ready:
            return fail(ControlError("no worker is ready; try again in a moment"))
        d = ready[0].amp.callRemote(Perform, name="publish", args={"to": to, "data": data})
        return d.addCallbacks(lambda answer: answer["result"]["id"], _unrefuse)

    def workers(self):
        d = self.pool.ask_all(Perform, name="stats", args={})
        stats = {}

        def listed(answers):
            for worker, answer in answers:
                if not isinstance(answer, Failure):
                    stats[worker] = answer["result"]["sessions"]
            return [{**w.describe(), "sessions": stats.get(w), "restarts": self.pool.restarts}
                    for w in sorted(self.pool.live, key=lambda w: (w.index, w.started))]
        return d.addCallback(listed)

    def reload(self):
        reloads = self.pool.reloads  # GET /metrics: pushsvc_reloads_total
        try:
            settings = self.pool.settings.reread()
        except ConfigError as e:
            reloads["failed"] += 1
            return fail(e)

        def count(results):
            reloads["ok" if all(r["ok"] for r in results) else "failed"] += 1
            return results
        return self.pool.reload(settings).addCallback(count)

    def restart_workers(self):
        return ensureDeferred(self.pool.restart_workers())

    def set_log_level(self, level):
        """The master's level, then every worker's (a new worker starts with it)."""
        try:
            loglevel.set_level(level)
        except ValueError as e:
            return fail(ControlError(str(e)))
        return self.pool.ask_all(SetLogLevel, level=level).addCallback(lambda _: None)


def _unrefuse(failure):
    failure.trap(Refused)
    raise protocol_error(failure.value)


class Master(MultiService):
    """The master process of ``--workers N`` (``pool_options``: Pool's ``clock``
    and ``worker_argv``)."""

    def __init__(self, settings, reactor, count: int, **pool_options):
        super().__init__()
        self.sockets = ListeningSockets(reactor, settings.endpoints, count)
        self.sockets.setServiceParent(self)
        self.pool = Pool(settings, reactor, count, self.sockets, **pool_options)
        self.pool.setServiceParent(self)
        self.control = PoolControl(self.pool)
