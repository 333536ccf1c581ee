"""The rolling restart (``pushsvc-admin restart-workers``): every worker
replaced by a new one, each client closed once, the closes paced."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from ..protocol import CLOSE_RESTART
from ..wire.worker_commands import Retire, StopAccepting
from . import COMMAND_TIMEOUT, STOP_GRACE
from .process import WorkerProcess, signal_worker

if TYPE_CHECKING:
    from .supervisor import Pool

_log = Logger(namespace="pushsvc.pool.master")

START_TIMEOUT = 30.0    # seconds a rolling restart waits for a new worker to accept


class RestartFailed(Exception):
    """A rolling restart stopped; the text says where and why."""


class RollingRestart:
    """Replaces the workers of ``pool``; one restart at a time."""

    def __init__(self, pool: "Pool"):
        self.pool = pool
        self.running = False

    async def run(self) -> dict:
        """Replace every worker by a new one, each client closed once.

        First every replacement starts and accepts on its slot's sockets
        beside the old worker; then every old worker stops accepting, so a
        client that reconnects can only reach a new one; then the old workers
        close their clients with 1012, spread over ``timeouts.restart_drain``
        seconds, and exit.  A replacement that does not come up is killed with
        the others started so far: the old workers keep serving, nothing
        changed, and the restart ends with RestartFailed.
        """
        if self.running:
            raise RestartFailed("a rolling restart is already running")
        self.running = True
        try:
            pairs = await self._start_replacements()
            olds = [old for _, old in pairs]
            stops = [old.amp.callRemote(StopAccepting).addTimeout(COMMAND_TIMEOUT, self.pool.clock)
                     for old in olds]
            await DeferredList(stops, consumeErrors=True)
            await DeferredList([self.retire(old) for old in olds])
        finally:
            self.running = False
        ended = [str(new.index) for new, _ in pairs if new not in self.pool.live]
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
        for index in range(self.pool.count):
            if self.pool.stopping:
                self._abandon(pairs)
                raise RestartFailed("the server is stopping; nothing was replaced")
            old = self.pool.workers.get(index)
            if old is None:  # crashed meanwhile: the pool is restarting it anyway
                continue
            new = self.pool.spawn(index)
            new.replacing = old
            pairs.append((new, old))
            up = new.up().addTimeout(START_TIMEOUT, self.pool.clock)
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
            signal_worker(new, "KILL")

    def retire(self, worker: WorkerProcess) -> Deferred:
        """Have ``worker`` close its clients with 1012 over the drain period
        and exit; fires when it has (killed if it takes longer than the drain,
        close_timeout and STOP_GRACE)."""
        worker.retiring = True
        drain = self.pool.settings.restart_drain
        worker.amp.callRemote(Retire, code=CLOSE_RESTART, reason="server restarting, reconnect",
                              drain=drain)
        kill = self.pool.clock.callLater(drain + self.pool.settings.close_timeout + STOP_GRACE,
                                         signal_worker, worker, "KILL")
        return worker.ended.addBoth(lambda _: kill.active() and kill.cancel())
