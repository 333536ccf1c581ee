"""The coordinator: generator processes, the publisher, and the workloads.

Every workload is bounded in count and in time, and runs against one set of
clients opened once (the connect workload), so a run opens each client once.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import sys
import time
from dataclasses import dataclass

from . import report
from .loadgen import FAILED, OPENED, PROGRESS_FIELDS, RECEIVED, UNIQUE, run
from .publisher import Publisher
from .report import Figure, Result
from .server import Server
from .stats import cpu_seconds, cpu_used, machine_cpu, percentile
from .wire import push_data


@dataclass
class Options:
    clients: int = 10_000
    generators: int = 2
    small_group: int = 1_000
    messages: int = 200               # pushes per broadcast to every client
    rate: int = 50_000                # deliveries per second in the latency workload
    rate_seconds: float = 10.0
    unicast: int = 20_000             # pushes in the unicast workload
    timeout: float = 60.0             # seconds a phase may take before it gives up
    concurrency: int = 200            # handshakes in flight per generator
    sample_every: int = 16            # one client in N decodes its frames (latency)
    push_connections: int = 4
    window: int = 16                  # pipelined messages per connection (broadcast, latency)
    # requests in flight per connection pushing one message each (unicast):
    # one, as most HTTP clients push (they do not pipeline)
    unicast_window: int = 1
    batch: int = 100                  # messages per POST /api/batch (unicast batch)
    api_key: str | None = None
    protocol: str = "pushsvc"         # the clients' protocol: pushsvc (/ws) or pusher


# --protocol pusher: the app the clients connect to (server.BENCH_CONFIG has it)
# and the prefix of its channels' groups.
PUSHER_PATH = "/app/bench-key?protocol=7"
PUSHER_GROUPS = "pusher.bench:"


class Progress:
    """One status line on stderr: rewritten in place on a terminal, else now and then."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.next = 0.0

    def update(self, text: str) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        if self.tty:
            self.stream.write(f"\r{text:<100}")
            self.next = now + 0.2
        else:
            self.stream.write(text + "\n")
            self.next = now + 2.0
        self.stream.flush()

    def done(self, text: str) -> None:
        self.stream.write(f"\r{text:<100}\n" if self.tty else text + "\n")
        self.stream.flush()
        self.next = 0.0


class Bench:
    """The workloads against ``server``; pushes go to ``push_to`` (default
    the same server: another node, for a run across nodes)."""

    def __init__(self, server: Server, options: Options, progress: Progress,
                 push_to: Server | None = None):
        self.server = server
        self.push_to = push_to or server
        self.o = options
        self.progress = progress
        self.next_seq = 1
        self.opened = 0
        ctx = multiprocessing.get_context()
        self.counts = ctx.Array("q", PROGRESS_FIELDS * options.generators, lock=False)
        self.gens = []
        for number in range(options.generators):
            ours, theirs = ctx.Pipe()
            process = ctx.Process(
                target=run, name=f"pushsvc-bench-gen-{number}", daemon=True,
                args=(number, options.generators, server.host, server.port,
                      PUSHER_PATH if options.protocol == "pusher" else "/ws",
                      theirs, self.counts))
            process.start()
            theirs.close()
            self.gens.append((process, ours))

    # -- talking to the generators -------------------------------------------

    def total(self, field: int) -> int:
        return sum(self.counts[g * PROGRESS_FIELDS + field] for g in range(len(self.gens)))

    def ask(self, *command, status=None, timeout=None) -> list[dict]:
        """Send ``command`` to every generator and wait for each one's reply;
        ``status()`` is the progress line meanwhile."""
        for _, pipe in self.gens:
            pipe.send(command)
        replies: list[dict | None] = [None] * len(self.gens)
        deadline = time.monotonic() + (timeout or self.o.timeout + 30)
        while None in replies:
            for n, (_, pipe) in enumerate(self.gens):
                if replies[n] is None and pipe.poll(0.02):
                    kind, body = pipe.recv()
                    if kind == "error":
                        raise RuntimeError(f"generator {n} failed:\n{body}")
                    replies[n] = body
            self.check_alive()
            if status:
                self.progress.update(status())
            if time.monotonic() > deadline:
                raise RuntimeError(f"the generators did not answer {command[0]!r} in time")
        return replies

    def wait_for(self, done, status, timeout: float) -> bool:
        """Show progress until ``done()`` or ``timeout`` seconds; whether it got done."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() >= deadline:
                return False
            self.check_alive()
            self.progress.update(status())
            time.sleep(0.02)
        return True

    def check_alive(self) -> None:
        for process, _ in self.gens:
            if not process.is_alive():
                raise RuntimeError(f"{process.name} died (exit {process.exitcode})")
        self.server.check_alive()

    def cpu(self) -> tuple[dict, dict, float]:
        """CPU seconds so far: of each server process, each client process, the machine."""
        client = [os.getpid()] + [p.pid for p, _ in self.gens]
        return self.server.cpu(), cpu_seconds(client), machine_cpu()

    def measured(self, name: str, figures: list[Figure], started: float,
                 cpu_before: tuple[dict, dict, float], wall: float | None = None,
                 notes: list[str] | None = None) -> Result:
        """A Result with the CPU used since ``cpu_before``."""
        wall = time.monotonic() - started if wall is None else wall
        server_after, client_after, machine_after = self.cpu()
        server = cpu_used(cpu_before[0], server_after)
        client = cpu_used(cpu_before[1], client_after)
        known = self.server.pid is not None
        others = machine_after - cpu_before[2] - sum(server) - sum(client)
        return Result(name, figures, wall, server if known else None, client,
                      max(0.0, others) if known else None, notes or [])

    def close(self) -> None:
        for process, pipe in self.gens:
            if process.is_alive():
                try:
                    pipe.send(("close",))
                except OSError:
                    pass
        for process, _ in self.gens:
            process.join(10)
            if process.is_alive():
                process.kill()

    # -- workloads ------------------------------------------------------------

    def connect(self) -> Result:
        """Open every client; connections per second, each client's handshake
        time (from the start of its TCP connect to its welcome), the server's
        CPU time and memory per client."""
        o = self.o
        rss_before = self.server.rss()
        cpu_before = self.cpu()
        started = time.monotonic()
        replies = self.ask("connect", o.clients, o.concurrency, o.timeout,
                           status=lambda: f"connect: {self.total(OPENED):,}/{o.clients:,} "
                                          f"open, {self.total(FAILED):,} failed")
        opened = sum(r["opened"] for r in replies)
        span = max(r["last"] for r in replies) - min(r["first"] for r in replies)
        result = self.measured(f"connect {o.clients:,} clients", [], started, cpu_before)
        time.sleep(1.0)   # let the server settle before reading its memory
        rss_after = self.server.rss()
        per_client = cpu_per_connect = None
        if rss_before is not None and opened:
            per_client = (rss_after - rss_before) / opened / 1024
        if result.server is not None and opened:
            cpu_per_connect = sum(result.server) / opened * 1e6
        handshakes = sorted(t for r in replies for t in r["handshakes"])
        result.figures = [
            Figure("connects/s", opened / span if opened and span > 0 else None, "/s",
                   report.CONNECTS),
            *latency_figures(handshakes, report.HANDSHAKE, "handshake", peak=True),
            Figure("server CPU per connect", cpu_per_connect, "µs"),
            Figure("server RSS per client", per_client, "KB", report.MEMORY),
            Figure("failed", o.clients - opened, "", report.NONE),
        ]
        result.notes += failures(replies, "failed")
        self.opened = opened
        p99 = percentile(handshakes, 99)
        self.progress.done(f"connect: {opened:,} open in {span:.2f} s" + (
            f", handshake p99 {p99 * 1000:.1f} ms" if p99 is not None else ""))
        return result

    def request(self, upto: int, op: str, **fields) -> None:
        """Every client below index ``upto`` sends ``op``; all must be answered ok."""
        replies = self.ask("request", upto, op, fields, self.o.timeout,
                           status=lambda: f"{op}: {upto:,} clients")
        ok = sum(r["ok"] for r in replies)
        if ok != min(upto, self.o.clients):
            raise RuntimeError(f"{op}: only {ok} of {upto} clients were answered ok: "
                               f"{failures(replies, 'errors')}")
        self.progress.done(f"{op} {fields}: {ok:,} clients ok")

    def join_groups(self) -> None:
        self.request(self.o.small_group, "join", group=group_name(self.o.small_group))
        self.request(self.o.clients, "join", group=group_name(self.o.clients))

    def authenticate(self) -> None:
        self.request(self.o.clients, "auth", user="u{i}")

    def push(self, name: str, members: int, count: int, address, target,
             unicast: bool = False, rate: float | None = None,
             batch: int = 0) -> tuple[Result, list[float]]:
        """Push ``count`` messages and count their deliveries.

        ``address(n)`` is the address (JSON text) of the n-th message.
        ``members`` clients each get every message (or, ``unicast``, each
        message is for one client).  With ``batch``, messages go ``batch`` per
        ``POST /api/batch``, else one per ``POST /api/push``.  Waits until every
        delivery arrived or the timeout passed.  Returns the result (figures:
        deliveries/s, lost, duplicated) and the latencies measured, sorted.
        """
        o = self.o
        per_request = batch or 1
        count = math.ceil(count / per_request) * per_request
        seq0, self.next_seq = self.next_seq, self.next_seq + count
        self.ask("expect", seq0, count, members, unicast, o.sample_every)
        deliveries = 1 if unicast else members

        def item(n: int) -> str:
            return f'{{"to":{address(n)},"data":"{push_data(seq0 + n, time.time())}"}}'

        def body(r: int) -> bytes:
            if not batch:
                return item(r).encode()
            items = ",".join(item(n) for n in range(r * batch, (r + 1) * batch))
            return f'{{"messages":[{items}]}}'.encode()

        def status(sent: int = 0) -> str:
            return (f"{name}: {sent * per_request:,} pushed, {self.total(UNIQUE):,} of "
                    f"{count * deliveries:,} delivered ({self.total(RECEIVED):,} frames)")

        cpu_before = self.cpu()
        started = time.monotonic()
        # The window counts messages; a batch request counts as all of its own.
        window = o.unicast_window if unicast and not batch else o.window
        publisher = Publisher(self.push_to.host, self.push_to.port, o.push_connections,
                              max(1, window // per_request), o.api_key,
                              "/api/batch" if batch else "/api/push")
        pushed = publisher.run(count // per_request, body,
                               rate=rate and rate / per_request, timeout=o.timeout,
                               tick=lambda sent: self.progress.update(status(sent)))
        accepted = pushed["accepted"] * per_request
        expected = accepted * deliveries
        complete = self.wait_for(lambda: self.total(UNIQUE) >= expected, status, o.timeout)
        wall = time.monotonic() - started
        reports = self.ask("report")
        unique = sum(r["unique"] for r in reports)
        last = max(r["last"] for r in reports)
        # On a schedule, n pushes take n intervals (the last one ends after it).
        elapsed = last - pushed["first"] + (1 / rate if rate else 0)
        figures = [
            Figure("deliveries/s", unique / elapsed if unique and elapsed > 0 else None,
                   "/s", target),
            Figure("lost", expected - unique, "", report.NONE),
            Figure("duplicated", sum(r["dupes"] for r in reports), "", report.NONE),
        ]
        notes = [f"push answered {answer}: {n} times"
                 for answer, n in pushed["errors"].items()]
        stray = sum(r["stray"] for r in reports)
        if stray:
            notes.append(f"{stray} msg frames that no client of this workload expected")
        if not complete:
            notes.append(f"stopped waiting after {o.timeout:.0f} s")
        notes += failures(reports, "lost")
        result = self.measured(name, figures, started, cpu_before, wall, notes)
        self.progress.done(f"{name}: {accepted:,} messages accepted, "
                           f"{unique:,}/{expected:,} delivered in {elapsed:.2f} s")
        return result, sorted(x for r in reports for x in r["latencies"])

    def broadcast(self, members: int) -> Result:
        """Every client of one group gets every push; as many deliveries in all
        (``messages`` x ``clients``) whatever the group's size."""
        o = self.o
        count = o.messages * o.clients // members
        group = f'{{"group":"{self.pushed_group(members)}"}}'
        result, _ = self.push(f"broadcast {members:,} x {count:,}", members, count,
                              lambda n: group,
                              report.BROADCAST if members == o.clients else None)
        return result

    def latency(self) -> Result:
        """Broadcast to every client at a fixed rate of deliveries per second."""
        o = self.o
        per_second = o.rate / o.clients
        group = f'{{"group":"{self.pushed_group(o.clients)}"}}'
        result, latencies = self.push(
            f"{o.rate:,} deliveries/s to {o.clients:,}", o.clients,
            max(1, round(per_second * o.rate_seconds)), lambda n: group, None,
            rate=per_second)
        result.figures[0].name = "deliveries/s achieved"
        result.figures[1:1] = latency_figures(latencies, report.P99)
        return result

    def pushed_group(self, members: int) -> str:
        """The group a broadcast to ``members`` clients is pushed to: the one
        they joined, or the group of the Pusher channel they subscribed to."""
        prefix = PUSHER_GROUPS if self.o.protocol == "pusher" else ""
        return prefix + group_name(members)

    def unicast(self, batch: int = 0) -> Result:
        """Pushes to random users, one client each; ``batch`` per request, if given."""
        o = self.o
        choose = random.Random(3).randrange
        how = (f" (/api/batch of {batch})" if batch else
               f" ({o.push_connections} connections x {o.unicast_window} in flight)")
        result, latencies = self.push(
            f"unicast {o.clients:,} users x {o.unicast:,}{how}", o.clients, o.unicast,
            lambda n: f'{{"user":"u{choose(o.clients)}"}}', report.UNICAST,
            unicast=True, batch=batch)
        result.figures[1:1] = latency_figures(latencies, None)
        return result


def group_name(members: int) -> str:
    return f"b{members}"


def latency_figures(ordered: list[float], p99_target: report.Target | None,
                    name: str = "latency", peak: bool = False) -> list[Figure]:
    """p50 and p99 (and, with ``peak``, the maximum) of ``ordered`` (sorted
    seconds), in ms."""
    figures = []
    for p in (50, 99, 100) if peak else (50, 99):
        value = percentile(ordered, p)
        figures.append(Figure(f"{name} {'max' if p == 100 else f'p{p}'}",
                              None if value is None else value * 1000,
                              "ms", p99_target if p == 99 else None))
    return figures


def failures(replies: list[dict], key: str) -> list[str]:
    """Failure reasons counted by the generators, merged: ``['close 1013 ...: 5']``."""
    merged: dict[str, int] = {}
    for reply in replies:
        for reason, n in reply.get(key, {}).items():
            merged[reason] = merged.get(reason, 0) + n
    return [f"{reason}: {n}" for reason, n in sorted(merged.items())]
