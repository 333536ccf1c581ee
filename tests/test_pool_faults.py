"""Faults of the worker pool: the master dying or stopping, workers crashing.

- ``RealMasterTests`` run the real ``twistd pushsvc --workers 2`` as a child and
  find its workers among its children in ``/proc``: SIGKILL on the master leaves
  no orphan, SIGTERM/SIGINT close every client with 1001 and exit 0.
- ``PoolRestartTests`` run a Master in the test process with a ``task.Clock``
  for its timers and tiny scripts as workers (``worker_argv``): a worker that
  keeps crashing is restarted with growing delays and the log says why; one
  that lived is restarted at once; one that ignores SIGTERM is killed at
  shutdown.
- ``AmpLimitTests``: an address naming more channels than one AMP value holds
  (64 KiB) still crosses workers.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from pushsvc.pool.master import MAX_BACKOFF, QUICK_EXIT, STOP_GRACE, Master
from tests.helpers import ChildTestCase, eventually, free_port, run, settings
from tests.test_pool import PoolTestCase

GONE_DEADLINE = 10.0  # seconds for workers to exit and clients to be closed

# Workers for PoolRestartTests.  CRASH fails at once, as a worker that cannot
# start would; STUBBORN ignores SIGTERM, says "up", then waits for its AMP pipe
# (descriptor 3) to close, so it never outlives the test process.
CRASH = [sys.executable, "-c",
         "import sys; sys.stderr.write('boom: cannot start\\n'); sys.exit(3)"]
STUBBORN = [sys.executable, "-c",
            "import os, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); os.read(3, 1)"]


# -- processes as /proc shows them ---------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of ``pid``, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "PID (COMM) "
    return fields[0], int(fields[1]), int(fields[19])


def children(pid: int) -> dict[int, int]:
    """The processes whose parent is ``pid``: pid -> start time."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and stat[1] == pid:
                found[int(name)] = stat[2]
    return found


def running(processes: dict[int, int]) -> list[int]:
    """The pids in ``processes`` (pid -> start time) that still run: a zombie
    or a new process that reuses the pid does not count."""
    out = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z" and stat[2] == started:
            out.append(pid)
    return out


def kill_all(processes: dict[int, int]) -> None:
    for pid in running(processes):
        os.kill(pid, signal.SIGKILL)


class RealMasterTests(ChildTestCase):
    """``twistd -n pushsvc --workers 2`` as a child process."""

    async def start_master(self, *more: str):
        """The running master (a Child) and its two workers (pid -> start time)."""
        port = free_port()
        master = self.spawn("twistd", "--workers", "2", "--port", str(port), *more)
        await self.wait_serving(master, port, workers=2)
        pid = master.transport.pid
        await eventually(lambda: len(children(pid)) == 2, what="two workers")
        workers = children(pid)
        self.addCleanup(kill_all, workers)  # if a test fails, leave no orphans
        return master, workers

    @run
    async def test_master_killed_workers_exit(self):
        master, workers = await self.start_master()
        clients = [await self.client() for _ in range(4)]
        master.transport.signalProcess("KILL")
        await eventually(lambda: not running(workers), GONE_DEADLINE,
                         f"the end of workers {sorted(workers)}")
        await eventually(lambda: all(c.close_code is not None for c in clients),
                         GONE_DEADLINE, "every client closed")
        self.assertEqual([c.close_code for c in clients], [1001] * len(clients))

    @run
    async def test_master_killed_workers_exit_even_with_redis_gone(self):
        """A worker whose master is gone stops on its own, within a bound,
        even when its stop cannot finish (its Redis is gone too): nobody is
        left to kill it."""
        from tests.redis_helpers import RedisServer
        shards = [RedisServer(self), RedisServer(self)]
        for redis in shards:
            await redis.start()
        master, workers = await self.start_master("--redis", " ".join(r.url for r in shards))
        await shards[0].stop()
        master.transport.signalProcess("KILL")
        # close_timeout (3 s) and STOP_GRACE (5 s): their bound, and some
        await eventually(lambda: not running(workers), GONE_DEADLINE + 8,
                         f"the end of workers {sorted(workers)}")

    async def check_stops(self, sig: str) -> None:
        """``sig`` to the master alone: clients on both workers see 1001, the
        master exits 0 and no worker outlives it."""
        master, workers = await self.start_master()
        clients = [await self.client() for _ in range(20)]
        self.assertEqual({c.session.split(".")[1] for c in clients}, {"0", "1"},
                         [c.session for c in clients])
        master.transport.signalProcess(sig)
        self.assertEqual(await self.wait_exit(master), 0, master.output())
        self.assertEqual(running(workers), [])
        await eventually(lambda: all(c.close_code is not None for c in clients),
                         GONE_DEADLINE, "every client closed")
        self.assertEqual([c.close_code for c in clients], [1001] * len(clients))
        self.assertNotIn("Traceback", master.output())

    @run
    async def test_sigterm(self):
        await self.check_stops("TERM")

    @run
    async def test_sigint(self):
        await self.check_stops("INT")


class PoolRestartTests(unittest.TestCase):
    """A Master in this process with one worker, timed by ``self.clock``."""

    def setUp(self):
        self.clock = Clock()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def start_pool(self, worker_argv: list[str]):
        self.settings = settings(listen=["tcp:0:interface=127.0.0.1"], workers=1)
        master = Master(self.settings, reactor, 1, clock=self.clock,
                        worker_argv=worker_argv)
        master.startService()
        self.addCleanup(self.stop, master)
        return master.pool

    def stop(self, master: Master):
        """Stop ``master`` without waiting for the clock: any worker still
        there is killed at once."""
        d = master.stopService()
        self.clock.advance(self.settings.close_timeout + STOP_GRACE)
        return d

    def ends(self) -> list[dict]:
        """The master's error events, one per worker that ended."""
        return [e for e in self.events
                if e.get("log_level") == LogLevel.error and "how" in e]

    async def next_end(self, count: int) -> dict:
        """Wait for the ``count``-th end of a worker; its event."""
        await eventually(lambda: len(self.ends()) >= count, what=f"worker end {count}")
        self.assertEqual(len(self.ends()), count)
        return self.ends()[-1]

    def pending(self) -> list[float]:
        """The delays of the clock's pending calls, from now."""
        now = self.clock.seconds()
        return [call.getTime() - now for call in self.clock.getDelayedCalls()]

    async def wait_up(self, pool) -> None:
        """Wait until the STUBBORN worker 0 has said "up"."""
        await eventually(lambda: 0 in pool.workers and "up" in pool.workers[0].last_lines,
                         what="the worker up")

    @run
    async def test_crash_loop_backs_off_and_says_why(self):
        pool = self.start_pool(CRASH)
        delays = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF]
        for count, delay in enumerate(delays, 1):
            pid = pool.workers[0].pid
            event = await self.next_end(count)
            self.assertEqual((event["index"], event["pid"], event["how"], event["last"],
                              event["delay"]),
                             (0, pid, "exited with status 3", "boom: cannot start", delay))
            self.assertEqual(
                formatEvent(event),
                f"worker 0 (pid {pid}) exited with status 3 after 0.0 s (last output: "
                f"boom: cannot start); restarting it in {delay:.2f} s")
            self.assertEqual(self.pending(), [delay])
            self.assertNotIn(0, pool.workers)
            self.clock.advance(delay / 2)
            self.assertNotIn(0, pool.workers)
            self.clock.advance(delay / 2)
            self.assertIn(0, pool.workers)
        self.assertEqual((pool.crashes[0], pool.restarts), (len(delays), len(delays)))
        relayed = [formatEvent(e) for e in self.events
                   if e.get("log_level") == LogLevel.warn and e.get("index") == 0]
        self.assertIn("worker 0: boom: cannot start", relayed)

    @run
    async def test_worker_that_lived_is_restarted_at_once(self):
        pool = self.start_pool(CRASH)
        self.assertEqual((await self.next_end(1))["delay"], 0.25)
        self.clock.advance(0.25)
        self.assertEqual((await self.next_end(2))["delay"], 0.5)

        pool.worker_argv = STUBBORN
        self.clock.advance(0.5)
        await self.wait_up(pool)
        self.clock.advance(QUICK_EXIT + 1)
        os.kill(pool.workers[0].pid, signal.SIGKILL)
        event = await self.next_end(3)
        self.assertEqual((event["how"], event["lived"], event["delay"]),
                         (f"was killed by signal {signal.SIGKILL}", QUICK_EXIT + 1, 0.0))
        self.assertEqual(self.pending(), [0.0])

        # The crash count starts over: the next quick exit waits 0.25 s again.
        pool.worker_argv = CRASH
        self.clock.advance(0)
        self.assertEqual((await self.next_end(4))["delay"], 0.25)

    @run
    async def test_worker_ignoring_sigterm_is_killed_at_shutdown(self):
        pool = self.start_pool(STUBBORN)
        await self.wait_up(pool)
        worker = pool.workers[0]
        stopped = pool.stopService()
        grace = self.settings.close_timeout + STOP_GRACE
        self.assertEqual(self.pending(), [grace])
        self.clock.advance(grace - 0.5)
        self.assertFalse(stopped.called)
        self.assertEqual(running({worker.pid: _stat(worker.pid)[2]}), [worker.pid])
        self.clock.advance(0.5)
        await eventually(lambda: stopped.called, GONE_DEADLINE, "the worker killed")
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.ends(), [])  # a stop is not a crash: nothing restarts


class AmpLimitTests(PoolTestCase):
    @run
    async def test_address_with_channels_over_64_kib_crosses(self):
        groups = [f"g{i:03d}".ljust(200, "x") for i in range(400)]  # ~83 KB of channels
        await self.start_pool(2, max_targets=400, max_message_bytes=256 * 1024)
        clients, by_worker = await self.spread_clients(20)
        self.assertEqual(len(by_worker), 2)
        for i, c in enumerate(clients):
            await c.request("join", group=groups[i * 20])
        msg_id = await self.push({"group": groups}, "to 400 groups")
        await self.settle(clients, 1)
        self.assertEqual([[m["id"] for m in c.messages] for c in clients],
                         [[msg_id]] * len(clients))
