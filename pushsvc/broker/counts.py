"""Counts that every engine shares with the others at an interval (each
Pusher app's open connections, ``pusher/capacity.py``): what a report may
hold, how reports add up, and the loop that exchanges them
(``IBroker.share_counts``).

A report is a dict name -> count (a whole number, at least 0); the names
are Pusher app ids, which hold no space (``pusher/apps.py``), so Redis keeps
a report as text (``redis_counts``).  An exchange sends this engine's
report and gets back the sum of the other live engines' last reports: in a
pool the hub answers (it drops a worker's report when the worker ends),
with Redis a script (an engine's report expires when it stops reporting).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["CountExchange", "add_up", "check_counts"]

_log = Logger()

MAX_NAMES = 10_000  # names in one report (apps): a sanity bound


def check_counts(value: Any) -> dict[str, int]:
    """``value`` as a report; ValueError saying what is wrong with it."""
    if not isinstance(value, dict):
        raise ValueError(f"counts must be an object of name -> count, got {type(value).__name__}")
    if len(value) > MAX_NAMES:
        raise ValueError(f"counts hold {len(value)} names, more than {MAX_NAMES}")
    for name, count in value.items():
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"a count's name must be a non-empty string without spaces, "
                             f"got {name!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"the count of {name!r} must be a whole number, at least 0, "
                             f"got {count!r}")
    return value


def add_up(reports: Iterable[dict[str, int]]) -> dict[str, int]:
    """The reports summed, name by name (a name at 0 everywhere is left out)."""
    totals: dict[str, int] = {}
    for report in reports:
        for name, count in report.items():
            if count:
                totals[name] = totals.get(name, 0) + count
    return totals


class CountExchange:
    """Every ``interval`` seconds (on ``clock``): ``report()`` (None:
    nothing to share now) goes to ``send(counts)``, a Deferred firing with
    the other engines' totals, which go to ``learned(totals)``.  One
    exchange at a time; one that fails leaves what was learned before (it
    is logged once until one succeeds again)."""

    def __init__(self, clock, send: Callable[[dict[str, int]], Deferred],
                 report: Callable[[], dict[str, int] | None],
                 learned: Callable[[dict[str, int]], None], interval: float):
        self.send = send
        self.report = report
        self.learned = learned
        self.interval = interval
        self._loop = LoopingCall(self._exchange)
        self._loop.clock = clock
        self._busy = False
        self._error: str | None = None

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: _log.failure("the exchange of connection counts stopped", f))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _exchange(self) -> None:
        if self._busy:
            return
        counts = self.report()
        if counts is None:
            return
        self._busy = True
        d = self.send(counts)
        d.addCallback(lambda totals: self.learned(check_counts(totals)))
        d.addCallbacks(self._done, self._failed)

    def _done(self, _) -> None:
        self._busy = False
        if self._error is not None:
            _log.info("connection counts exchanged again")
            self._error = None

    def _failed(self, failure) -> None:
        self._busy = False
        error = failure.getErrorMessage()
        if self._error is None:
            _log.warn("could not exchange connection counts ({error}); the others' "
                      "stay as last known", error=error)
        self._error = error
