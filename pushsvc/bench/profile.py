"""py-spy attached to the server's processes, and a summary of its samples."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from .stats import cpu_seconds

_FRAME = re.compile(r"^(.*) \((.*):\d+\)$")


def find_py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` on a process and its children, raw (collapsed) stacks."""

    def __init__(self, pid: int, out_path: str, rate: int = 100):
        py_spy = find_py_spy()
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy: pip install 'pushsvc[bench]'")
        self.out_path = out_path
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
             "--rate", str(rate), "--format", "raw", "--output", out_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> "Profile":
        """Stop sampling (py-spy writes its file on SIGINT) and read the samples."""
        own_cpu = sum(cpu_seconds([self.process.pid]).values())
        wall = time.monotonic() - self.started
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=60)
        if not os.path.exists(self.out_path):
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')}")
        with open(self.out_path, encoding="utf-8", errors="replace") as f:
            profile = summarize(f)
        profile.overhead = own_cpu / wall if wall else 0.0
        return profile


@dataclass
class Profile:
    samples: int = 0
    by_process: Counter = field(default_factory=Counter)
    own: Counter = field(default_factory=Counter)        # the frame on top of the stack
    total: Counter = field(default_factory=Counter)      # anywhere in the stack
    by_package: Counter = field(default_factory=Counter)  # own samples, by top-level module
    overhead: float | None = None     # cores py-spy itself kept busy

    def format(self, top: int = 15) -> str:
        def share(n: int) -> str:
            return f"{100 * n / self.samples:5.1f}%"

        lines = [f"profile: {self.samples} samples of busy server threads"]
        if self.overhead is not None:
            lines[0] += (f" (py-spy itself kept {self.overhead:.2f} cores busy: the "
                         f"figures above are not comparable with a run without --profile)")
        for process, n in self.by_process.most_common():
            lines.append(f"  {share(n)}  {process}")
        lines.append("by package (own time):")
        lines += [f"  {share(n)}  {name}" for name, n in self.by_package.most_common()]
        lines.append(f"top {top} functions by own time:")
        lines += [f"  {share(n)}  {name}" for name, n in self.own.most_common(top)]
        lines.append(f"top {top} functions by total time (self and callees):")
        lines += [f"  {share(n)}  {name}" for name, n in self.total.most_common(top)]
        return "\n".join(lines)


def function_name(frame: str) -> str:
    """``'write (twisted/internet/tcp.py:241)'`` -> ``'write (twisted/internet/tcp.py)'``."""
    match = _FRAME.match(frame)
    return f"{match[1]} ({match[2]})" if match else frame


def package(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match[2] if match else ""
    for name in ("pushsvc", "autobahn", "twisted", "txaio", "json", "zope"):
        if f"{name}/" in path or path.startswith(f"{name}."):
            return name
    return "other (stdlib, C extensions)"


def summarize(lines) -> Profile:
    """Read py-spy's raw output: ``process P:"cmd";frame;frame... COUNT`` per line."""
    profile = Profile()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        # With --subprocesses a stack starts with the chain of processes down to
        # the one sampled: 'process 10:"twistd ...";process 11:"python -m ...";...'
        processes = 0
        while processes < len(frames) and frames[processes].startswith("process "):
            processes += 1
        process = frames[processes - 1] if processes else "?"
        frames = frames[processes:]
        profile.samples += n
        profile.by_process[process[:100]] += n
        if not frames:
            continue
        names = [function_name(f) for f in frames]
        profile.own[names[-1]] += n
        profile.by_package[package(frames[-1])] += n
        for name in set(names):
            profile.total[name] += n
    return profile
