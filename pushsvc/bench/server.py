"""The server under test: a ``twistd pushsvc`` child, or one already running."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .stats import cpu_seconds, process_tree, rss_bytes
from .wire import ResponseReader, http_request

# Room for every benchmark client, and no pings or timeouts during a run.
BENCH_CONFIG = """\
[limits]
max_connections = 30000
# Every benchmark client comes from one address and some publish fast.
max_connections_per_ip = 0
messages_per_second = 0.0

[timeouts]
ping_interval = 3600.0
ping_timeout = 7200.0
handshake_timeout = 120.0

# The app of --protocol pusher (workloads.PUSHER_PATH).
[[pusher.apps]]
id = "bench"
key = "bench-key"
secret = "bench-secret"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(host: str, port: int, path: str, api_key: str | None = None) -> int | None:
    """The status of ``GET path``, or None when nothing answers."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(http_request("GET", path, f"{host}:{port}", api_key=api_key))
            reader = ResponseReader()
            while True:
                data = s.recv(4096)
                if not data:
                    return None
                answers = reader.feed(data)
                if answers:
                    return answers[0][0]
    except OSError:
        return None


class Server:
    """A server to measure: its address and, when known, its processes."""

    def __init__(self, host: str, port: int, pid: int | None = None):
        self.host = host
        self.port = port
        self.pid = pid

    def pids(self) -> list[int]:
        """The server's processes now (the master and all its children)."""
        return process_tree(self.pid) if self.pid else []

    def cpu(self) -> dict[int, float]:
        return cpu_seconds(self.pids())

    def rss(self) -> int | None:
        return rss_bytes(self.pids()) if self.pid else None

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while http_status(self.host, self.port, "/healthz") != 200:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the server at {self.host}:{self.port} did not "
                                   f"answer /healthz with 200 within {timeout:.0f} s")
            self.check_alive()
            time.sleep(0.1)

    def check_alive(self) -> None:
        pass

    def stop(self) -> int | None:
        return None


class ChildServer(Server):
    """``twistd -n pushsvc --workers N`` started by the benchmark, on a free port."""

    def __init__(self, workers: int, extra_args: list[str], log_path: str):
        super().__init__("127.0.0.1", free_port())
        self.dir = tempfile.mkdtemp(prefix="pushsvc-bench-")
        config = os.path.join(self.dir, "bench.toml")
        with open(config, "w") as f:
            f.write(BENCH_CONFIG)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            twistd = shutil.which("twistd") or "twistd"
        self.command = [twistd, "-n", "--pidfile=", "pushsvc", "--workers", str(workers),
                        "--listen", f"tcp:{self.port}:interface=127.0.0.1:backlog=4096",
                        "--config", config, *extra_args]
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=self.dir)
        self.pid = self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with status {self.process.returncode}; "
                               f"the end of its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait (SIGKILL the whole tree past ``timeout``)."""
        tree = self.pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            status = self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return status
