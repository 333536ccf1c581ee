"""One worker as the master sees it: the process, its AMP pipes (with the
cap on what the master may hold for a worker that does not read), and its
output re-logged in the master's log as ``worker N: ...``."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent

from .. import loglevel
from ..twisted_private import unsent, write_now
from . import AMP_IN, AMP_OUT

if TYPE_CHECKING:
    from .supervisor import Pool

_log = Logger(namespace="pushsvc.pool.master")

# How the master re-emits a worker's log event (``WorkerProcess._relay``).
RELAYED = loglevel.RELAYED
_LEVELS = tuple(LogLevel.iterconstants())


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
        write_now(pipe, data)

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
        self.amp = pool.hub.protocol(self)
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
        signal_worker(self, "KILL")

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


def signal_worker(worker: WorkerProcess, name: str) -> None:
    """Send signal ``name`` to the worker, unless it has exited."""
    try:
        worker.transport.signalProcess(name)
    except ProcessExitedAlready:
        pass


def how_it_ended(reason) -> str:
    """How a worker process ended, in words."""
    value = reason.value
    if getattr(value, "signal", None):
        return f"was killed by signal {value.signal}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"
