"""How the console shows results: aligned tables and ``key  value`` lines,
each command's result as text (``show_*``), a command's result printed as
text or ``--json`` (``perform``), and ``stats --watch`` (``watch``)."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from .connection import Connection, Unreachable
from .wire import AdminError, Run

if TYPE_CHECKING:
    from .commands import Command, Request


# -- showing results ---------------------------------------------------------

def cell(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Aligned columns under upper-case headers; numbers to the right."""
    if not rows:
        return "(none)"
    texts = [[cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool)
                   for row in rows) for i in range(len(headers))]
    lines = [[h.upper() for h in headers]] + texts
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(text.rjust(w) if right else text.ljust(w)
                               for text, w, right in zip(line, widths, numeric)).rstrip()
                     for line in lines)


def pairs(values: dict[str, Any]) -> str:
    """``key  value`` lines, the keys aligned."""
    width = max(map(len, values), default=0)
    return "\n".join(f"{key.ljust(width)}  {cell(value)}" for key, value in values.items())


def duration(seconds: float) -> str:
    """``42s``, ``5m 3s``, ``2h 5m``, ``3d 4h``."""
    s = int(seconds)
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                          ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {s % size // small_size}{small}"
    return f"{s}s"


def show_sessions(result: dict[str, Any]) -> str:
    rows = [[s["session"], s["user"], s["groups"], s["tags"]] for s in result["sessions"]]
    text = table(["session", "user", "groups", "tags"], rows)
    total = result.get("total", len(rows))
    return text if total == len(rows) else f"{text}\n({len(rows)} shown of {total})"


def show_workers(result: list[dict[str, Any]]) -> str:
    return table(["worker", "pid", "owner", "sessions", "uptime", "ready", "restarts"],
                 [[w["worker"], w["pid"], w.get("owner"), w.get("sessions"),
                   duration(w["uptime"]), w.get("ready"), w.get("restarts")]
                  for w in result])


def show_count(verb: str) -> Callable[[dict[str, Any]], str]:
    def show(result: dict[str, Any]) -> str:
        n = result["sessions"]
        text = f"{verb} {n} session{'' if n == 1 else 's'}"
        if result.get("refused"):
            text += f"; {result['refused']} refused (at max_groups_per_session)"
        return text
    return show


def show_reload(result: list[dict[str, Any]]) -> str:
    return "\n".join(f"worker {r['worker']}: reloaded" for r in result if r["ok"])


def reload_errors(result: list[dict[str, Any]]) -> list[str]:
    return [f"worker {r['worker']}: reload failed: {r['error']}" for r in result if not r["ok"]]


def totals(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` for the whole server: without the ``worker`` that each
    worker's counters carry (merged, it names only one of them)."""
    return {k: v for k, v in stats.items() if k != "worker"}


def perform(connection: Connection, command: Command, request: Request,
            as_json: bool) -> int:
    """Make the call and print its result: the exit status."""
    try:
        result = connection.call(request[0], **request[1])
    except (AdminError, Unreachable) as e:
        print(e, file=sys.stderr)
        return 1
    answer = command.answer(result)
    text = json.dumps(answer, ensure_ascii=False) if as_json else command.show(answer)
    if text:
        print(text)
    errors = command.errors(result)
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


# -- stats --watch -------------------------------------------------------------

WATCH_EVERY = 2.0  # seconds between refreshes of ``stats --watch`` by default

# Figures of ``stats`` that are levels, not counts since the start: no rate.
LEVELS_NOT_COUNTS = ("sessions", "users", "groups")

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def rates(before: tuple[float, dict[str, Any]] | None, now: float,
          stats: dict[str, Any]) -> dict[str, float]:
    """Per second, how much each counter of ``stats`` grew since ``before``
    (a (time, stats) pair; None: nothing to compare with yet)."""
    if before is None or now <= before[0]:
        return {}
    elapsed = now - before[0]
    return {key: (value - before[1].get(key, 0)) / elapsed for key, value in stats.items()
            if key not in LEVELS_NOT_COUNTS and isinstance(value, (int, float))
            and not isinstance(value, bool)}


def watch_screen(stats: dict[str, Any], per_second: dict[str, float], every: float,
                 clock: str) -> str:
    """The ``stats --watch`` table: each figure, and its rate per second."""
    rows = [(key, f"{value:,}" if isinstance(value, int) else cell(value),
             "" if key in LEVELS_NOT_COUNTS else
             f"{per_second[key]:,.1f}" if key in per_second else "-")
            for key, value in stats.items()]
    widths = [max(len(row[i]) for row in [("", "VALUE", "PER SECOND"), *rows])
              for i in range(3)]
    lines = [f"pushsvc stats at {clock}, every {every:g} s (Ctrl-C stops)", "",
             f"{''.ljust(widths[0])}  {'VALUE'.rjust(widths[1])}  "
             f"{'PER SECOND'.rjust(widths[2])}"]
    lines += [f"{k.ljust(widths[0])}  {v.rjust(widths[1])}  {r.rjust(widths[2])}".rstrip()
              for k, v, r in rows]
    return "\n".join(lines)


def watch(connection: Connection, every: float, count: int = 0,
          as_json: bool = False) -> int:
    """``stats`` every ``every`` seconds, with the counters' rates, until
    Ctrl-C (or ``count`` refreshes, 0: no end): a table rewritten in place
    on a terminal, one after the other otherwise; with ``as_json`` one JSON
    line per refresh (the figures, ``time`` and ``rates``).  The exit status."""
    tty = sys.stdout.isatty() and not as_json
    before, shown = None, 0
    try:
        while True:
            try:
                stats = connection.call(Run, name="stats", args={})
            except (AdminError, Unreachable) as e:
                print(e, file=sys.stderr)
                return 1
            now = time.monotonic()
            stats = totals(stats)
            per_second = rates(before, now, stats)
            if as_json:
                print(json.dumps({"time": round(time.time(), 3), **stats,
                                  "rates": {k: round(v, 3) for k, v in per_second.items()}},
                                 ensure_ascii=False))
            else:
                screen = watch_screen(stats, per_second, every, time.strftime("%H:%M:%S"))
                print(CLEAR + screen if tty else screen + "\n")
            sys.stdout.flush()
            before, shown = (now, stats), shown + 1
            if count and shown >= count:
                return 0
            time.sleep(max(0.0, every - (time.monotonic() - now)))
    except KeyboardInterrupt:  # the way to stop it: not a failure
        return 0
