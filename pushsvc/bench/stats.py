"""Percentiles, and what /proc says about a process tree (CPU time, memory)."""

from __future__ import annotations

import math
import os

TICK = os.sysconf("SC_CLK_TCK")


def percentile(ordered: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ``ordered`` (sorted), None if empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def parse_stat(text: str) -> tuple[int, float]:
    """``(ppid, CPU seconds)`` from a /proc/PID/stat line (user + system time)."""
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 of proc(5): state; ppid is field 4, utime 14, stime 15.
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:       # the process is gone
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            text = _read(f"/proc/{name}/stat")
            if text:
                children.setdefault(parse_stat(text)[0], []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds each live process of ``pids`` has used so far."""
    used = {}
    for pid in pids:
        text = _read(f"/proc/{pid}/stat")
        if text:
            used[pid] = parse_stat(text)[1]
    return used


def cpu_used(before: dict[int, float], after: dict[int, float]) -> list[float]:
    """CPU seconds each process used between two snapshots, the busiest first.

    A process missing from ``before`` started in between and counts from zero.
    """
    return sorted((seconds - before.get(pid, 0.0) for pid, seconds in after.items()),
                  reverse=True)


def machine_cpu() -> float:
    """CPU seconds all CPUs of the machine have been busy since boot (/proc/stat)."""
    return parse_machine(_read("/proc/stat") or "cpu 0")


def parse_machine(text: str) -> float:
    # cpu  user nice system idle iowait irq softirq steal ...
    fields = [int(v) for v in text.split("\n", 1)[0].split()[1:9]]
    fields += [0] * (8 - len(fields))
    return (sum(fields) - fields[3] - fields[4]) / TICK


def parse_rss(status: str) -> int:
    """Bytes of VmRSS in a /proc/PID/status text (0 if absent)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of ``pids``, summed."""
    return sum(parse_rss(_read(f"/proc/{pid}/status") or "") for pid in pids)
