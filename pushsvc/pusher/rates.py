"""An app's event rates (docs/pusher.md, "Per-app limits"): a connection's
client events (``max_client_events_per_second``: over it, ``pusher:error``
4301) and the app's HTTP API events in this process
(``max_backend_events_per_second``: over it, 429).  No I/O: the time is an
argument.

Each rate is a ``limits.TokenBucket`` whose rate and burst are the app's
figure: a burst of N events at once, then N a second.  The figure is read at
every event, so a reload applies from the next event on (a bucket made for
another figure is set to the new one; 0 lets everything through).
"""

from __future__ import annotations

import math
from typing import Iterable

from ..limits import TokenBucket
from .apps import PusherApp
from .names import PusherError


class EventRate:
    """One count of events against a per-second figure that may change."""

    __slots__ = ("bucket",)

    def __init__(self):
        self.bucket: TokenBucket | None = None

    def admit(self, limit: int, now: float, cost: int = 1) -> bool:
        """Whether ``cost`` events at ``now`` are within ``limit`` a second
        (0: no limit); they are counted when they are."""
        if limit <= 0:
            self.bucket = None
            return True
        bucket = self.bucket
        if bucket is None:
            bucket = self.bucket = TokenBucket(limit, limit, now)
        elif bucket.rate != limit:
            bucket.configure(limit, limit)
        return bucket.take(now, cost)

    def retry_after(self, cost: int = 1) -> int:
        """Whole seconds, at least 1, until ``cost`` events would be admitted
        (after an ``admit`` that refused them)."""
        wait = self.bucket.wait(cost) if self.bucket is not None else 0.0
        return max(1, math.ceil(wait))


class OverRate(PusherError):
    """429: an app's HTTP API events over its rate in this process; the
    answer's ``Retry-After`` is ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(429, message)
        self.retry_after = retry_after


class AppRates:
    """Each app's HTTP API events in this process, by app id: an event
    counts once per channel it is triggered on, as soketi counts them."""

    def __init__(self):
        self.rates: dict[str, EventRate] = {}

    def check(self, app: PusherApp, cost: int, now: float) -> None:
        """Count ``cost`` events of ``app``; OverRate (none counted) when
        they are over its ``max_backend_events_per_second``."""
        limit = app.max_backend_events_per_second
        if limit <= 0:
            self.rates.pop(app.id, None)
            return
        rate = self.rates.get(app.id)
        if rate is None:
            rate = self.rates[app.id] = EventRate()
        if not rate.admit(limit, now, cost):
            raise OverRate(f"too many events: app {app.id} may trigger {limit} a second "
                           f"(an event counts once per channel; this request has {cost}); "
                           f"nothing was sent", rate.retry_after(cost))

    def keep(self, app_ids: Iterable[str]) -> None:
        """Forget the apps not in ``app_ids`` (a reload removed them)."""
        wanted = set(app_ids)
        for app_id in [a for a in self.rates if a not in wanted]:
            del self.rates[app_id]
