"""``pushsvc-bench --cross-node 1,3``: two nodes through Redis shards.

For each shard count, one run: that many ``redis-server``s (from PATH, on
free loopback ports, keeping nothing on disk), nodes ``a`` and ``b`` on them
(``--redis`` with their URLs), every client on node ``b``, every push
through node ``a``: so each message crosses Redis.  The same workloads run
each time (a broadcast to every client and unicast to users, both cross-node),
and the table ends with each figure's ratio to the first run's.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from .server import ChildServer, Server, free_port
from .stats import cpu_seconds, process_tree, rss_bytes
from .workloads import Bench, group_name

__all__ = ["Redis", "Cluster", "parse_counts", "run_counts"]

START_SECONDS = 10.0


def parse_counts(text: str) -> list[int]:
    """``"1,3"`` -> [1, 3]: the shard counts to compare (each 1 to 16)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or not all(1 <= n <= 16 for n in counts):
        raise ValueError(f"--cross-node takes shard counts from 1 to 16, such as 1,3; "
                         f"got {text!r}")
    return counts


class Redis:
    """One ``redis-server`` child on a free loopback port, keeping nothing."""

    def __init__(self):
        path = shutil.which("redis-server")
        if path is None:
            raise RuntimeError("--cross-node needs redis-server on PATH "
                               "(apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pushsvc-bench-redis-")
        self.process = subprocess.Popen(
            [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", "",
             "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_SECONDS
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster(Server):
    """Nodes ``a`` and ``b`` on ``shards`` Redis: clients connect to ``b``
    (this Server's address), pushes go to ``a`` (``push_to``); the CPU and
    memory counted are all of theirs, Redis's included."""

    def __init__(self, shards: int, workers: str, extra_args: list[str], log_path: str):
        self.redis: list[Redis] = []
        self.nodes: list[ChildServer] = []
        try:
            self.redis = [Redis() for _ in range(shards)]
            urls = " ".join(r.url for r in self.redis)
            for name in ("a", "b"):
                log = f"{log_path}.{shards}{name}"
                self.nodes.append(ChildServer(workers, ["--redis", urls, "--node", name,
                                                        *extra_args], log))
        except Exception:
            self.stop()
            raise
        a, b = self.nodes
        super().__init__(b.host, b.port, b.pid)
        self.push_to = a
        self.command = a.command

    def pids(self) -> list[int]:
        out = [p for node in self.nodes for p in process_tree(node.pid)]
        return out + [r.process.pid for r in self.redis]

    def cpu(self) -> dict[int, float]:
        return cpu_seconds(self.pids())

    def rss(self) -> int | None:
        return rss_bytes(self.pids())

    def wait_healthy(self, timeout: float) -> None:
        for node in self.nodes:
            node.wait_healthy(timeout)

    def check_alive(self) -> None:
        for node in self.nodes:
            node.check_alive()
        for r in self.redis:
            if r.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {r.port} exited")

    def stop(self) -> int | None:
        statuses = [node.stop() for node in self.nodes]
        for r in self.redis:
            r.stop()
        return next((s for s in statuses if s not in (None, 0)), 0)


def run_counts(counts: list[int], workers: str, extra_args: list[str], log_path: str,
               options, progress) -> tuple[list, list[str], Exception | None]:
    """Each shard count's run: (results, ratio lines, the error that stopped it)."""
    results, by_count = [], {}
    for shards in counts:
        cluster = bench = None
        try:
            cluster = Cluster(shards, workers, extra_args, log_path)
            progress.done(f"{shards} shard(s): nodes a and b on ports "
                          f"{cluster.push_to.port} and {cluster.port}")
            cluster.wait_healthy(60)
            bench = Bench(cluster, options, progress, push_to=cluster.push_to)
            bench.connect()
            if bench.opened < options.clients:
                raise RuntimeError(f"only {bench.opened} of {options.clients} clients "
                                   f"connected")
            bench.request(options.clients, "join", group=group_name(options.clients))
            bench.authenticate()
            mine = [bench.broadcast(options.clients), bench.unicast()]
        except (Exception, KeyboardInterrupt) as e:
            return results, ratios(by_count, counts), e
        finally:
            if bench:
                bench.close()
            if cluster:
                cluster.stop()
        for result in mine:
            result.workload = f"{shards} shard{'s' if shards > 1 else ''}: {result.workload}"
        results += mine
        by_count[shards] = [r.figures[0].value for r in mine]
    return results, ratios(by_count, counts), None


def ratios(by_count: dict[int, list], counts: list[int]) -> list[str]:
    """Each run's deliveries/s over the first's, per workload."""
    if len(by_count) < 2:
        return []
    first = by_count[counts[0]]
    lines = []
    for shards in counts[1:]:
        if shards not in by_count:
            continue
        parts = [f"{name} {mine / base:.2f}" if mine and base else f"{name} -"
                 for name, mine, base in zip(("broadcast", "unicast"), by_count[shards], first)]
        lines.append(f"cross-node deliveries/s, {shards} shards over {counts[0]}: "
                     + ", ".join(parts))
    return lines

