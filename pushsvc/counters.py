"""What one process counts: every counter, declared once.  ``stats`` shows
them all from zero; ``metrics.engine_values`` turns them into metrics."""

from __future__ import annotations

from collections import Counter

from .limits import COUNTERS as REFUSALS

# Counted by the engine.
ENGINE = ("published", "delivered", "sent_by_clients", "dropped_slow", "refused_full")

# The backend's answers (pushsvc/proxy.py, ``Verdict.result``).
PROXY_RESULTS = ("allow", "deny", "error")

# Pusher webhook events, by what became of them (pusher/webhook_sender.py).
WEBHOOK_RESULTS = ("sent", "retried", "dropped", "failed")

# Every counter: the engine's, the edges' refusals (limits.py), the backend's,
# the webhooks'.
COUNTERS = (ENGINE + REFUSALS + tuple(f"proxy_{result}" for result in PROXY_RESULTS)
            + tuple(f"webhook_{result}" for result in WEBHOOK_RESULTS))


def new_counters() -> Counter[str]:
    """Every counter at zero: the engine keeps one, and the edges add to it."""
    return Counter(dict.fromkeys(COUNTERS, 0))
