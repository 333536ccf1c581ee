"""What one process counts: every counter, declared once.  ``stats`` shows
them all from zero; ``metrics.engine_values`` turns them into metrics."""

from __future__ import annotations

from collections import Counter

from .limits import COUNTERS as REFUSALS

# Counted by the engine.
ENGINE = ("published", "delivered", "sent_by_clients", "dropped_slow", "refused_full")

# The backend's answers (pushsvc/proxy.py, ``Verdict.result``).
PROXY_RESULTS = ("allow", "deny", "error")

# Every counter: the engine's, the edges' refusals (limits.py), the backend's.
COUNTERS = ENGINE + REFUSALS + tuple(f"proxy_{result}" for result in PROXY_RESULTS)


def new_counters() -> Counter[str]:
    """Every counter at zero: the engine keeps one, and the edges add to it."""
    return Counter(dict.fromkeys(COUNTERS, 0))
