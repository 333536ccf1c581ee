"""Limits against abuse, without I/O: the I/O edges (websocket.py, http/)
ask these objects and act on the answer.  See docs/security.md.

- ``TokenBucket``: a client's message rate (``limits.messages_per_second``,
  ``limits.message_burst``).  It takes the time as an argument and keeps no
  clock of its own.
- ``PerAddress``: connections held per client address, with a cap
  (``limits.max_connections_per_ip``); ``acquire`` hands out a ``Slot`` that
  the connection releases once, when it ends.
- ``address_key``: the address a connection is counted under (an IPv6
  client counts by its /64 network: one machine usually has a whole /64).
- ``Proxies``: the reverse proxies whose ``X-Forwarded-For`` is believed
  (``http.trusted_proxies``), and the client address it names.
- ``OriginPolicy``: the browser origins allowed to open a WebSocket
  (``http.allowed_origins``).

The counters the edges keep for each refusal are listed in ``COUNTERS``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

# Counted in ``engine.counters`` by the edges, one per kind of refusal (the
# engine's COUNTERS lists them, so ``stats`` shows them from zero).
COUNTERS = (
    "rate_limited",     # client frames refused with error rate_limited (and Pusher
                        # client events refused with 4301 by their app's rate)
    "dropped_flood",    # sessions closed with 1008: went on sending while refused
    "dropped_large",    # sessions closed with 1009: a message or its fragments over the limit
    "dropped_invalid",  # sessions closed with 1002/1007: broken framing, invalid UTF-8
    "refused_ip",       # connections refused with 429: too many from one address
    "refused_origin",   # WebSocket handshakes refused with 403: Origin not allowed
                        # (and Pusher connections closed with 4009 by their app's origins)
    "slow_handshakes",  # connections closed for not sending a whole request in time
    "http_invalid",     # HTTP 400 answers: bad JSON, a malformed request, ...
    "http_bad_key",     # HTTP 401 answers: no API key, or not a valid one
    "http_forbidden",   # HTTP 403 answers: a read-only key that writes
    "http_too_large",   # HTTP 413 (body) and 431 (request line and headers) answers
)


class TokenBucket:
    """A rate of ``rate`` events a second with bursts of up to ``burst``.

    The bucket starts full.  ``take(now)`` spends one token when there is
    one; tokens come back at ``rate`` a second up to ``burst``.  A rate of 0
    means no limit.  Time going backwards (a clock step) refills nothing.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens (one by default): True if there were that
        many, False if the rate is exceeded.  A cost over the burst is
        served by a full bucket, which then owes the rest (it refills from
        below zero before it serves again)."""
        if self.rate <= 0:
            return True
        elapsed = now - self.stamp
        self.stamp = now
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= min(cost, self.burst):
            self.tokens -= cost
            return True
        return False

    def wait(self, cost: float = 1.0) -> float:
        """Seconds from the last ``take`` until ``cost`` tokens can be spent
        (0: now)."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, (min(cost, self.burst) - self.tokens) / self.rate)

    def configure(self, rate: float, burst: int) -> None:
        """Use a new rate and burst from now on (a reload); never more
        tokens than the new burst."""
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = min(self.tokens, self.burst)


class RateGuard:
    """A session's frames against its message rate (``TokenBucket``), and
    what it refuses over windows of ``WINDOW`` seconds.

    ``admit(now)`` answers ``SERVE``; or, over the rate, ``TELL`` for the
    first refusal of a window (answer it with ``rate_limited``), ``QUIET``
    for the others (drop them: one error frame a window is enough), and
    ``CLOSE`` once a window's refusals reach the burst and outnumber what it
    served: a flood, however it is paced (a run of refusals broken by each
    token that trickles back is still one).
    """

    __slots__ = ("bucket", "window_start", "served", "refused")

    WINDOW = 10.0
    SERVE, TELL, QUIET, CLOSE = "serve", "tell", "quiet", "close"

    def __init__(self, rate: float, burst: int, now: float):
        self.bucket = TokenBucket(rate, burst, now)
        self.window_start = now
        self.served = self.refused = 0

    def admit(self, now: float) -> str:
        if now - self.window_start >= self.WINDOW or now < self.window_start:
            self.window_start, self.served, self.refused = now, 0, 0
        if self.bucket.take(now):
            self.served += 1
            return self.SERVE
        self.refused += 1
        if self.refused >= self.bucket.burst and self.refused >= self.served:
            return self.CLOSE
        return self.TELL if self.refused == 1 else self.QUIET

    def configure(self, rate: float, burst: int) -> None:
        """A new rate and burst from now on (a reload)."""
        self.bucket.configure(rate, burst)


class Slot:
    """One connection's place in a ``PerAddress`` count."""

    __slots__ = ("owner", "key")

    def __init__(self, owner: "PerAddress", key: str):
        self.owner: PerAddress | None = owner
        self.key = key

    def release(self) -> None:
        """Give the place back; later calls do nothing."""
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._release(self.key)


class PerAddress:
    """How many connections each address holds, at most ``limit`` (0 = no
    limit, but still counted, so a reload may set one)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.counts: dict[str, int] = {}

    def acquire(self, key: str) -> Slot | None:
        """A slot for one more connection from ``key``, or None at the limit."""
        held = self.counts.get(key, 0)
        if self.limit and held >= self.limit:
            return None
        self.counts[key] = held + 1
        return Slot(self, key)

    def held(self, key: str) -> int:
        return self.counts.get(key, 0)

    def __len__(self) -> int:
        """Addresses holding at least one connection."""
        return len(self.counts)

    def _release(self, key: str) -> None:
        held = self.counts.get(key, 0)
        if held <= 1:
            self.counts.pop(key, None)
        else:
            self.counts[key] = held - 1


def address_key(host: str) -> str:
    """The key a client address is counted under: an IPv4 address as it is,
    an IPv6 address by its /64 network (an IPv4-mapped one as IPv4), anything
    that is not an IP address as it is."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def parse_networks(values: Iterable[str]) -> tuple[ipaddress._BaseNetwork, ...]:
    """IP addresses and CIDR networks; ValueError naming a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network "
                             f"(such as 10.0.0.1 or 10.0.0.0/8)") from None
    return tuple(networks)


class Proxies:
    """The reverse proxies trusted to say, in ``X-Forwarded-For``, who the
    client is.  No proxies (the default): the header is never read."""

    def __init__(self, networks: Iterable[str] = ()):
        self.networks = parse_networks(networks)

    def trusts(self, host: str | None) -> bool:
        if not self.networks or host is None:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if getattr(address, "ipv4_mapped", None) is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: list[bytes] | None) -> str:
        """The client's address for a request that came from ``peer``.

        Only when ``peer`` is trusted: the right-most address in
        ``X-Forwarded-For`` (every header of that name, in order) that is not
        itself a trusted proxy; each proxy appends who it talked to, so what
        is left of that the client may have written itself.  When the header
        is missing or names no usable address, the peer itself.
        """
        if not forwarded_for or not self.trusts(peer):
            return peer
        entries = b",".join(forwarded_for).decode("latin-1").split(",")
        for entry in reversed(entries):
            entry = entry.strip()
            try:
                ipaddress.ip_address(entry.split("%", 1)[0])
            except ValueError:
                return peer  # not written by a proxy we trust: do not believe it
            if not self.trusts(entry):
                return entry
        return peer


# An allowed origin: scheme://host[:port], the host optionally starting with
# "*." (any subdomain); or "null".
ORIGIN_RE = re.compile(r"^(https?)://(\*\.)?([a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])"
                       r"(:[0-9]{1,5})?$")
DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normalise_origin(origin: str) -> str:
    """An origin lower-cased and without its scheme's default port."""
    origin = origin.strip().lower()
    scheme = origin.split("://", 1)[0]
    default = DEFAULT_PORTS.get(scheme)
    if default and origin.endswith(default):
        origin = origin[: -len(default)]
    return origin


def check_origin(value: str) -> str:
    """One entry of ``http.allowed_origins``, normalised; ValueError if it
    is not ``scheme://host[:port]`` (host maybe ``*.domain``) or ``null``."""
    origin = normalise_origin(value)
    if origin != "null" and not ORIGIN_RE.match(origin):
        raise ValueError(f"{value!r} is not an origin such as https://app.example.com, "
                         f"https://*.example.com or http://localhost:3000 (no path, "
                         f"no trailing slash)")
    return origin


class OriginPolicy:
    """Which browser pages may open a WebSocket, by their ``Origin`` header.

    No allowed origins (the default): any.  Otherwise a request with an
    ``Origin`` must match one: exactly (scheme, host and port; case and a
    default port do not matter), or ``scheme://*.domain[:port]`` for any
    subdomain of ``domain`` (not ``domain`` itself).  ``null`` (sandboxed
    frames, ``file:`` pages) is allowed only if listed.  A request without
    ``Origin`` is not from a browser page and is always allowed.
    """

    def __init__(self, allowed: Iterable[str] = ()):
        self.exact: set[str] = set()
        self.wildcards: list[tuple[str, str]] = []  # (prefix "scheme://", suffix ".domain[:port]")
        for value in allowed:
            origin = check_origin(value)
            scheme, _, host = origin.partition("://")
            if host.startswith("*."):
                self.wildcards.append((scheme + "://", host[1:]))
            else:
                self.exact.add(origin)

    @property
    def any(self) -> bool:
        return not self.exact and not self.wildcards

    def allows(self, origin: str | None) -> bool:
        if origin is None or self.any:
            return True
        origin = normalise_origin(origin)
        if origin in self.exact:
            return True
        for prefix, suffix in self.wildcards:
            if origin.startswith(prefix) and origin.endswith(suffix):
                sub = origin[len(prefix):-len(suffix)]
                if sub and re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*", sub):
                    return True
        return False
