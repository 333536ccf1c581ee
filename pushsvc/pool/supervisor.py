"""The supervisor of a pool: it spawns the workers, watches them, restarts
one that ends (with a backoff while they crash young), stops them all, and
fans commands out to them."""

from __future__ import annotations

import os
import sys
from collections import Counter

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import loglevel, metrics
from ..ids import IdMaker
from ..keeper import Keeper
from ..pusher.presence import Announcer
from ..pusher.webhook_sender import WebhookSender, current_apps, watch_occupancy
from ..wire.worker_commands import Perform, Reload, SetLogLevel
from . import AMP_IN, AMP_OUT, COMMAND_TIMEOUT, ENV, FIRST_SOCKET, STOP_GRACE, describe
from .hub import Hub
from .process import WorkerProcess, how_it_ended, signal_worker
from .restart import RollingRestart
from .sockets import ListeningSockets

_log = Logger(namespace="pushsvc.pool.master")

QUICK_EXIT = 5.0        # a worker that dies sooner than this counts as crashing at start
MAX_BACKOFF = 30.0      # the longest wait before restarting a crashing worker


class Pool(Service):
    """Spawns and watches the workers; its ``hub`` routes their messages.

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
        self.stopping = False
        self.keeper = Keeper.from_settings(settings)
        self.hub = Hub(self.keeper, self.clock, self)
        # Pusher webhooks: the hub sees every worker's subscriptions, one at a
        # time, so it says when a channel is occupied and vacated (not with
        # Redis: another node's members are not in this table).
        self.webhooks = WebhookSender(reactor, current_apps(lambda: self.settings),
                                      clock=self.clock)
        if not settings.redis:
            watch_occupancy(self.keeper.table, self.webhooks)
            # A worker that ends takes its presence members along: the hub
            # counts them (``Member``), the master announces who left.
            self.hub.departed = Announcer(
                self.hub.publish, IdMaker(settings.node, "hub").message_id,
                lambda: self.settings.max_message_bytes, self.webhooks).removed
        self.restarter = RollingRestart(self)

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
                            tls=self.sockets.tls, epoch=self.keeper.history.epoch)
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
        self.keeper.table.remove_worker(worker)
        self.hub.gone(worker)
        self.live.discard(worker)
        if self.workers.get(index) is worker:
            del self.workers[index]
            old = worker.replacing
            if old in self.live and not old.retiring:  # a failed replacement: the old one stays
                self.workers[index] = old
        if self.stopping or worker.retiring or self.workers.get(index) is not None:
            return
        lived = self.clock.seconds() - worker.started
        self.crashes[index] = self.crashes.get(index, 0) + 1 if lived < QUICK_EXIT else 0
        delay = 0.0 if not self.crashes[index] else min(
            MAX_BACKOFF, 0.25 * 2 ** (self.crashes[index] - 1))
        last = worker.last_lines[-1].strip() if worker.last_lines else "no output"
        _log.error("worker {index} (pid {pid}) {how} after {lived:.1f} s (last output: "
                   "{last}); restarting it in {delay:.2f} s", index=index, pid=worker.pid,
                   how=how_it_ended(reason), lived=lived, last=last, delay=delay)
        self.restarts += 1
        self.clock.callLater(delay, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.workers:
            self.spawn(index)

    def stopService(self):
        super().stopService()
        self.stopping = True
        workers = list(self.live)
        for worker in workers:
            signal_worker(worker, "TERM")
        kill = self.clock.callLater(self.settings.close_timeout + STOP_GRACE,
                                    lambda: [signal_worker(w, "KILL") for w in workers])
        done = DeferredList([w.ended for w in workers])
        done.addBoth(lambda _: kill.active() and kill.cancel())
        return done.addBoth(lambda _: self.webhooks.close())

    # -- fan-out ----------------------------------------------------------

    def ask_all(self, command, **args) -> Deferred:
        """``command`` to every ready worker (retiring ones too: they still hold
        sessions), in slot order; the answers of those that gave one within
        COMMAND_TIMEOUT, each as (worker, answer or Failure)."""
        self.hub.outbox.flush()  # a command never overtakes a message published before it
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
                webhooks=metrics.webhook_values(self.webhooks.counters),
                round_trips={"hub": self.hub_round_trip.to_json()})
        return self.ask_all(Perform, name="metrics", args={}).addCallback(summed)

    def reload(self, settings) -> Deferred:
        """Hand ``settings`` to every worker, which applies them and reloads the
        application module; one ``{"worker", "pid", "ok", "error"}`` each.

        Workers started from now on start with them.
        """
        self.settings = self.settings.reloaded(settings)
        self.keeper.configure(settings)
        d = self.ask_all(Reload, settings=settings.to_json())
        return d.addCallback(lambda answers: [
            {"worker": w.index, "pid": w.pid, "ok": not _error_of(a), "error": _error_of(a)}
            for w, a in answers])

    def restart_workers(self) -> Deferred:
        """Replace every worker by a new one (``restart.RollingRestart``)."""
        return ensureDeferred(self.restarter.run())


def _error_of(answer) -> str | None:
    """The error text of a Reload answer (or of its failure), None if it worked."""
    if isinstance(answer, Failure):
        return f"no answer: {answer.getErrorMessage()}"
    return answer["error"] or None
