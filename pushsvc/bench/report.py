"""The targets of issue 3 and the final table."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    op: str
    value: float

    def met(self, measured: float | None) -> bool | None:
        return None if measured is None else _OPS[self.op](measured, self.value)


# On the project's 2-core machine, with the generator sharing it.
CONNECTS = Target(">=", 8000)            # connections per second
HANDSHAKE = Target("<", 100.0)           # ms, a client's handshake p99 (issue 16)
MEMORY = Target("<=", 8.0)               # KB of server RSS per idle connection
BROADCAST = Target(">=", 300_000)        # deliveries per second, one group of 10,000
P99 = Target("<", 100.0)                 # ms, at 50,000 deliveries/s to 10,000
UNICAST = Target(">=", 40_000)           # deliveries per second, random users
NONE = Target("==", 0)                   # messages lost or duplicated


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str = ""              # "/s", "KB", "ms", "µs" or "" (a count)
    target: Target | None = None


@dataclass
class Result:
    workload: str
    figures: list[Figure]
    wall: float                              # seconds the measured part took
    server: list[float] | None = None        # CPU seconds of each server process
    client: list[float] = field(default_factory=list)   # generators, publisher
    others: float | None = None              # CPU seconds of the rest of the machine
    notes: list[str] = field(default_factory=list)


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit in ("KB", "ms", "µs"):
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f}{unit}"


def verdict(figure: Figure) -> str:
    met = figure.target.met(figure.value) if figure.target else None
    return "" if met is None else ("met" if met else "MISSED")


def bottleneck(result: Result, cores: int) -> str:
    """Who limited the workload: a process at (nearly) a full core, or the machine;
    and whether other processes took a noticeable share of it."""
    wall = result.wall or 1.0
    busy = []
    if result.server and max(result.server) / wall >= 0.85:
        busy.append("server")
    if result.client and max(result.client) / wall >= 0.85:
        busy.append("client")
    total = sum(result.server or ()) + sum(result.client) + (result.others or 0.0)
    if not busy and total / wall >= 0.9 * cores:
        busy.append("all cores")
    if result.others is not None and result.others / wall >= 0.2:
        busy.append("others busy!")
    return ", ".join(busy) or "-"


def format_table(results: list[Result], header: str, cores: int) -> str:
    rows = [("workload", "figure", "measured", "target", "")]
    for result in results:
        for n, figure in enumerate(result.figures):
            target = figure.target
            rows.append((result.workload if n == 0 else "", figure.name,
                         number(figure.value, figure.unit),
                         f"{target.op} {number(target.value, figure.unit)}" if target else "",
                         verdict(figure)))
    lines = [header, ""] + _columns(rows, right=(2,))

    def busy(seconds: float | None, wall: float) -> str:
        return "n/a" if seconds is None else f"{seconds / (wall or 1.0):.2f}"

    cpu = [("workload", "wall", "server", "per process", "client", "busiest", "others",
            "bottleneck")]
    for r in results:
        server = None if r.server is None else sum(r.server)
        cpu.append((r.workload, f"{r.wall:.1f} s", busy(server, r.wall),
                    " ".join(busy(s, r.wall) for s in r.server or ()),
                    busy(sum(r.client), r.wall), busy(max(r.client, default=0.0), r.wall),
                    busy(r.others, r.wall), bottleneck(r, cores)))
    lines += ["", f"CPU in cores busy (CPU seconds / wall seconds; this machine has {cores}):"
                  " the server's processes, the client's (generators and publisher),",
              "and the rest of the machine (other processes, kernel work charged to none)"]
    lines += _columns(cpu, right=(1, 2, 4, 5, 6))
    notes = [f"{r.workload}: {note}" for r in results for note in r.notes]
    if notes:
        lines += ["", "notes:"] + [f"  {note}" for note in notes]
    return "\n".join(lines)


def _columns(rows: list[tuple[str, ...]], right: tuple[int, ...]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]
