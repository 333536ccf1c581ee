"""``GET /metrics``: what one process counts, summed for the whole machine, in
the Prometheus text format.

Each engine keeps its figures as plain numbers: ``Engine.counters`` (what
``stats`` shows) and a ``Meter`` (messages by address kind, bytes,
connections opened, round-trip times, reloads).  ``engine_values`` turns them
into *values*: a JSON object of numbers and objects of numbers, one process's
raw figures.  Values add up with ``commands.merge`` (numbers add, objects
merge key by key), so the master asks every worker for theirs (``Perform``
``metrics``), adds the counts of the workers that have ended (as they were
at the last scrape: a machine's counter never falls), adds its own
(workers, restarts, reloads, the hub's round trips) and hands the sum to the
worker that serves the scrape (``wire.hub_commands.GatherMetrics``); with
``--workers 0`` the one process's values are the machine's.

``render`` turns values into the exposition with prometheus-client: a
``MachineCollector`` yields the metric families from the values in a
registry made for that one scrape.  Nothing here uses prometheus-client's
global registry or live metric objects: they would count per process.

The metric names are listed in docs/http-api.md (``GET /metrics``).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

from .commands import merge
from .counters import WEBHOOK_RESULTS
from .protocol import ADDRESS_KINDS, Address

# Upper bounds of the round-trip histograms, in seconds (+Inf is implied).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0)

KINDS = (*ADDRESS_KINDS, "all", "mixed")


# (has sessions, users, groups, tags, all) -> the kind label; anything else is mixed.
_KINDS = {(True, False, False, False, False): "session",
          (False, True, False, False, False): "user",
          (False, False, True, False, False): "group",
          (False, False, False, True, False): "tag",
          (False, False, False, False, True): "all"}


def address_kind(to: Address) -> str:
    """The kind of an address for the ``kind`` label: ``session``, ``user``,
    ``group``, ``tag``, ``all``, or ``mixed`` when it has several (once per
    message and per delivery batch: kept cheap)."""
    return _KINDS.get((bool(to.session), bool(to.user), bool(to.group), bool(to.tag),
                       to.all), "mixed")


class Histogram:
    """Observations in fixed buckets (``BUCKETS``), with their count and sum."""

    __slots__ = ("counts", "count", "sum")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: over the largest bound
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                break
        else:
            i = len(BUCKETS)
        self.counts[i] += 1
        self.count += 1
        self.sum += seconds

    def to_json(self) -> dict[str, Any]:
        """Values that add up: ``buckets`` by upper bound, not cumulative."""
        bounds = [repr(b) for b in BUCKETS] + ["+Inf"]
        return {"count": self.count, "sum": self.sum,
                "buckets": dict(zip(bounds, self.counts))}


def timed(d, observe: Callable[[float], None]):
    """Observe how long ``d`` (a Deferred just sent off) takes to fire with a
    result (a failure is not a round trip); ``d`` itself, unchanged."""
    started = time.monotonic()

    def done(result):
        observe(time.monotonic() - started)
        return result
    return d.addCallback(done)


class Meter:
    """What an engine counts for ``/metrics`` besides ``Engine.counters``.

    The WebSocket edge adds the bytes and the connections; the engine the
    messages; a broker the round trips (``round_trip(name)``);
    ``LocalControl`` the reloads of a one-process server.
    """

    __slots__ = ("messages_in", "messages_out", "bytes_in", "bytes_out",
                 "connections_opened", "round_trips", "reloads")

    def __init__(self):
        self.messages_in: Counter[str] = Counter()   # published, by address kind
        self.messages_out: Counter[str] = Counter()  # copies written to sessions, by kind
        self.bytes_in = 0    # read from WebSocket clients
        self.bytes_out = 0   # written to WebSocket clients
        self.connections_opened = 0
        self.round_trips: dict[str, Histogram] = {}
        self.reloads: Counter[str] = Counter()       # "ok" / "failed"

    def observer(self, name: str) -> Callable[[float], None]:
        """The ``observe`` of the histogram ``name``, made at its first
        observation (so a broker that never observes adds no metric)."""
        def observe(seconds: float) -> None:
            self.round_trip(name)(seconds)
        return observe

    def round_trip(self, name: str) -> Callable[[float], None]:
        """The ``observe`` of the histogram ``name`` (``hub``, ``redis``)."""
        histogram = self.round_trips.get(name)
        if histogram is None:
            histogram = self.round_trips[name] = Histogram()
        return histogram.observe


def engine_values(engine) -> dict[str, Any]:
    """One engine's raw figures (see the module's docstring)."""
    counters, meter, registry = engine.counters, engine.meter, engine.registry
    authenticated = sum(map(len, registry.users.members.values()))
    return {
        "connections": len(engine.connections),
        "sessions": {"authenticated": authenticated,
                     "anonymous": len(registry) - authenticated},
        "connections_opened": meter.connections_opened,
        "messages_in": dict(meter.messages_in),
        "messages_out": dict(meter.messages_out),
        "client_messages": counters["sent_by_clients"],
        "bytes": {"received": meter.bytes_in, "sent": meter.bytes_out},
        "dropped": {"slow_reader": counters["dropped_slow"],
                    "rate_limit": counters["dropped_flood"],
                    "too_large": counters["dropped_large"],
                    "invalid": counters["dropped_invalid"]},
        "rate_limited": counters["rate_limited"],
        "refused": {"full": counters["refused_full"], "per_ip": counters["refused_ip"],
                    "origin": counters["refused_origin"],
                    "slow_handshake": counters["slow_handshakes"]},
        "http_refused": {"invalid": counters["http_invalid"],
                         "bad_key": counters["http_bad_key"],
                         "forbidden": counters["http_forbidden"],
                         "too_large": counters["http_too_large"]},
        "proxy": {"allow": counters["proxy_allow"], "deny": counters["proxy_deny"],
                  "error": counters["proxy_error"]},
        "webhooks": webhook_values(counters),
        "round_trips": {name: h.to_json() for name, h in meter.round_trips.items()},
        "reloads": dict(meter.reloads),
    }


def webhook_values(counters) -> dict[str, int]:
    """The Pusher webhook events of a process's ``counters``, by result."""
    return {result: counters[f"webhook_{result}"] for result in WEBHOOK_RESULTS}


def machine_values(parts: list[dict[str, Any]], **own: Any) -> dict[str, Any]:
    """The sum of several processes' values, with ``own`` (the master's:
    ``workers``, ``restarts``, ``reloads``, ``round_trips``) added."""
    return merge([*parts, own])


# The values that are levels now, not counts since the start.
LEVELS = ("connections", "sessions")


def counts_only(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without its levels: what an ended worker still adds to the
    machine's counters."""
    return {key: value for key, value in values.items() if key not in LEVELS}


def local_values(engine) -> dict[str, Any]:
    """The machine's values when one process is the whole server (``--workers 0``)."""
    return machine_values([engine_values(engine)], workers=1, restarts=0)


# -- the exposition ------------------------------------------------------------

def _labelled(family, values: dict[str, Any], labels: tuple[str, ...] = ()):
    for label in labels:  # every known label value, at 0 when nothing was counted
        values = {label: 0, **values} if label not in values else values
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


class MachineCollector:
    """A prometheus-client collector of one scrape's values."""

    def __init__(self, values: dict[str, Any]):
        self.values = values

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        v = self.values

        def number(key: str) -> float:
            return v.get(key, 0)

        def counter(name, text, key):
            return CounterMetricFamily(name, text, value=number(key))

        def by(kind, name, text, key, label, known=()):
            return _labelled(kind(name, text, labels=[label]), v.get(key, {}), known)

        yield GaugeMetricFamily("pushsvc_workers", "Worker processes accepting clients "
                                "(1 for a one-process server).", value=number("workers"))
        yield GaugeMetricFamily("pushsvc_connections", "Open WebSocket connections.",
                                value=number("connections"))
        yield by(GaugeMetricFamily, "pushsvc_sessions", "Sessions, by whether they have "
                 "authenticated.", "sessions", "state", ("authenticated", "anonymous"))
        yield counter("pushsvc_connections_opened", "WebSocket connections accepted.",
                      "connections_opened")
        yield by(CounterMetricFamily, "pushsvc_messages_in", "Messages published (HTTP "
                 "API, console, clients), by the kind of their address.", "messages_in",
                 "kind", KINDS)
        yield by(CounterMetricFamily, "pushsvc_messages_out", "Messages written to "
                 "sessions (one per recipient), by the kind of their address.",
                 "messages_out", "kind", KINDS)
        yield counter("pushsvc_client_messages", "Messages clients sent (op send).",
                      "client_messages")
        bytes_ = v.get("bytes", {})
        yield CounterMetricFamily("pushsvc_bytes_received", "Bytes read from WebSocket "
                                  "clients (frames as sent).", value=bytes_.get("received", 0))
        yield CounterMetricFamily("pushsvc_bytes_sent", "Bytes written to WebSocket "
                                  "clients (frames as sent).", value=bytes_.get("sent", 0))
        yield by(CounterMetricFamily, "pushsvc_dropped", "Sessions the server closed for "
                 "a limit, by cause.", "dropped", "cause",
                 ("slow_reader", "rate_limit", "too_large", "invalid"))
        yield counter("pushsvc_rate_limited", "Client frames refused by the message rate "
                      "(answered rate_limited).", "rate_limited")
        yield by(CounterMetricFamily, "pushsvc_refused", "Connections refused, by cause.",
                 "refused", "cause", ("full", "per_ip", "origin", "slow_handshake"))
        yield by(CounterMetricFamily, "pushsvc_http_refused", "HTTP requests refused, by "
                 "cause (400, 401, 403, 413/431).", "http_refused", "cause",
                 ("invalid", "bad_key", "forbidden", "too_large"))
        yield by(CounterMetricFamily, "pushsvc_proxy_requests", "Joins and sends the "
                 "backend proxy decided, by result (error: no usable answer).", "proxy",
                 "result", ("allow", "deny", "error"))
        yield by(CounterMetricFamily, "pushsvc_pusher_webhook_events", "Pusher webhook "
                 "events, by what became of them (retried: requests sent again; dropped: "
                 "over a full queue or at the stop; failed: given up after the retries).",
                 "webhooks", "result", WEBHOOK_RESULTS)
        yield counter("pushsvc_worker_restarts", "Workers restarted after they ended "
                      "(crashed, killed).", "restarts")
        yield by(CounterMetricFamily, "pushsvc_reloads", "Reloads (pushsvc-admin reload, "
                 "SIGHUP), by result.", "reloads", "result", ("ok", "failed"))
        texts = {"hub": "Round trips between the master and a worker (Perform), as the "
                        "master times them, in seconds.",
                 "redis": "Round trips of the calls to Redis (publish script, heartbeat), "
                          "in seconds.",
                 "proxy": "Round trips of the requests to the backend proxy that got an "
                          "answer, in seconds."}
        for name, text in texts.items():
            histogram = v.get("round_trips", {}).get(name)
            if histogram is None:
                continue
            cumulative, buckets = 0, []
            for bound in [repr(b) for b in BUCKETS] + ["+Inf"]:
                cumulative += histogram["buckets"].get(bound, 0)
                buckets.append((bound, cumulative))
            yield HistogramMetricFamily(f"pushsvc_{name}_round_trip_seconds", text,
                                        buckets=buckets, sum_value=histogram["sum"])


def render(values: dict[str, Any], accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``values`` (the format the ``Accept`` header asks
    for: Prometheus text, or OpenMetrics) and its content type."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MachineCollector(values))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
