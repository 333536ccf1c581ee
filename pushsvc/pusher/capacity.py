"""Each Pusher app's open connections against its ``max_connections``,
counted across every engine of the cluster (docs/pusher.md, "Per-app
limits").  No I/O.

An engine (the one process, each pool worker, each worker of each Redis
node) knows its own connections exactly (``opened``, ``closed``) and the
other engines' as they last reported them: every ``limits.count_interval``
its broker exchanges them (``IBroker.share_counts``: ``report`` goes out,
``learned`` takes the others' totals).  A new connection is admitted while
its own count plus the others' last known is under the limit, so a connect
never waits for a round trip.  The price is slack: the others' counts are up
to two intervals old, so connections that arrive on several engines within
that time may go over the limit (each engine sees only its own new ones);
from the exchange after, every engine refuses until the total is under it.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

__all__ = ["Capacity"]


class Capacity:
    """Open connections by app id: this engine's (``own``), the other
    engines' totals as last learned (``others``).

    ``capped()`` says whether any app has a ``max_connections`` now (a
    reload may change it): while none has, there is nothing to exchange.
    """

    def __init__(self, capped: Callable[[], bool] = lambda: True):
        self.own: Counter[str] = Counter()
        self.others: dict[str, int] = {}
        self.capped = capped

    def admits(self, app_id: str, limit: int) -> bool:
        """Whether one more connection of ``app_id`` is under ``limit``
        (0: no limit)."""
        return limit <= 0 or self.total(app_id) < limit

    def total(self, app_id: str) -> int:
        """The app's connections in the cluster, as far as this engine knows."""
        return self.own[app_id] + self.others.get(app_id, 0)

    def opened(self, app_id: str) -> None:
        self.own[app_id] += 1

    def closed(self, app_id: str) -> None:
        left = self.own[app_id] - 1
        if left > 0:
            self.own[app_id] = left
        else:
            del self.own[app_id]

    def report(self) -> dict[str, int] | None:
        """What to tell the others: this engine's counts, or None while no
        app has a cap (then nothing is exchanged, and what was learned is
        forgotten: it would be stale when a cap comes back)."""
        if not self.capped():
            self.others = {}
            return None
        return dict(self.own)

    def learned(self, others: dict[str, int]) -> None:
        """The other live engines' totals, by app id (an app missing: none)."""
        self.others = others
