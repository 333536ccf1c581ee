"""What the parts of a ``RedisBroker`` share: this engine's place in Redis.

``Context`` is who this engine is there (its member id ``OWNER.INCARNATION``,
new each run), the keys it uses, its two connections (``redis_link._Link``:
one for commands and scripts, one subscriber), whether they carry messages
both ways (``health``), the script calls on the command connection
(``eval``, each round trip timed by ``observe``), the history's settings and
its epoch in Redis, the counters, and, for a pool worker, the AMP pipe to
its node's hub.  It holds state and answers questions; what happens on a
connection's loss or return is the facade's to dispatch (``redis.py``).

Keys (``PREFIX`` is ``[redis] prefix``): ``PREFIX_cmd`` (the channel of
cluster commands) and ``PREFIX_reply:ID`` (this member's results); an engine
channel ``C`` is the Redis channel ``PREFIX + C`` (``key``);
``PREFIX_members`` (a sorted set: member id -> expiry, from the Redis
server's clock), ``PREFIX_node:NODE`` (which process holds a node name), and
the history's and mailboxes' (``redis_scripts``).

Faults.  Each connection reconnects with backoff (0.1 s doubling to 5 s);
Redis going away is logged once (``went_down``) and its return once
(``maybe_up``).  While Redis is away the broker is *degraded*: ``health``
says why, and ``/healthz`` answers 503 with it.
"""

from __future__ import annotations

from itertools import count
from typing import Callable

import txredisapi
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger

from ..ids import base36, new_incarnation
from ..metrics import timed
from .redis_link import RETRY_JITTER, RETRY_MAX, _Link
from .redis_scripts import utf8 as _utf8
from .redis_url import RedisURL

__all__ = ["Context", "MISSED_BEATS", "QUEUE_MAX_AGE", "RepeatedError"]

_log = Logger()

QUEUE_MAX_AGE = 60.0   # seconds a message kept while Redis is away stays worth sending
MISSED_BEATS = 3       # heartbeat intervals after which a member is taken for gone


class RepeatedError:
    """The error of a call Redis is asked at every heartbeat, logged when it
    first comes and when it changes, not at every beat; ``ok()`` when the
    call succeeds again.  A connection that went is logged as such, elsewhere."""

    def __init__(self, what: str):
        self.what = what
        self.last: str | None = None

    def ok(self) -> None:
        self.last = None

    def failed(self, failure, what: str | None = None) -> None:
        if not failure.check(txredisapi.ResponseError):
            return
        error = str(failure.value)
        if error != self.last:
            self.last = error
            _log.error("{what} failed: {error}", what=what or self.what, error=error)


class Context:
    """This engine in Redis, shared by the parts of its ``RedisBroker``.

    ``owner`` is the engine's ``NODE.WORKER``; ``cmd`` and ``sub`` its two
    links to ``url``; ``clock`` runs the timers; ``token`` (None until the
    broker attaches) tells this node's processes from another node's of the
    same name.  ``prefix`` (default ``[redis] prefix``) starts every key and
    channel (a Redis Cluster's logical shard puts its hash tag there).
    """

    def __init__(self, settings, owner: str, clock, url: RedisURL, cmd: _Link, sub: _Link,
                 token: str | None, prefix: str | None = None):
        self.settings = settings
        self.url = url
        self.owner = owner
        self.node = owner.rsplit(".", 1)[0]
        self.id = f"{owner}.{new_incarnation()}"   # this member, this run
        self.id_b = _utf8(self.id)
        self.clock = clock
        self.token = token
        self.cmd, self.sub = cmd, sub
        self.timeout = settings.redis_timeout
        self.interval = settings.redis_heartbeat
        self.ttl_ms = int(MISSED_BEATS * self.interval * 1000)  # a member's life
        # How long the queue waits after an outage for the peers to be back:
        # their longest backoff, and time to subscribe again and register.
        self.hold_time = RETRY_MAX * (1 + RETRY_JITTER) + self.timeout + 2 * self.interval
        prefix = settings.redis_prefix if prefix is None else prefix
        self.prefix = _utf8(prefix)
        self.cmd_key = _utf8(prefix + "_cmd")
        self.reply_key = _utf8(f"{prefix}_reply:{self.id}")
        self.members_key = _utf8(prefix + "_members")
        self.node_key = _utf8(f"{prefix}_node:{self.node}")
        # The history's keys, in the order of redis_history_lua.
        self.history_keys = [_utf8(prefix + "_history" + part) for part in (
            "", "_log", "_frames", "_meta", "_refs", "_chans", "_ticks", "_index",
            "_lost", "_emptied")]

        self.receiver = None           # the engine (IReceiver), once attached
        self.hub = None                # a pool worker's WorkerProtocol (``use_hub``)
        self.channels: set[str] = set()  # the engine channels this engine subscribes to
        self.closed = False
        self.counters = {"sent": 0, "queued": 0, "dropped": 0, "lost": 0, "received": 0,
                         "duplicates": 0, "bad": 0, "relayed": 0, "from_hub": 0}
        # Called with the seconds each script call took (``RedisBroker.timed``).
        self.observe: Callable[[float], None] | None = None

        self.sub_ready = False         # resubscribed everything since it connected
        self.reason = f"not connected yet to {url.describe()}"
        self._down = False             # Redis is away (logged)
        self._down_since = 0.0
        self._ever_up = False
        self._epoch: str | None = None  # the history's, as Redis last said
        self._epoch_seed = new_incarnation()
        self._candidates = count(1)

    def key(self, channel: str) -> bytes:
        """The Redis channel of engine channel ``channel``."""
        return self.prefix + _utf8(channel)

    # -- health -------------------------------------------------------------

    def health(self) -> str | None:
        """None when Redis carries messages both ways (and, with history,
        its epoch is known), else why not."""
        if (self.cmd.protocol is not None and self.sub_ready
                and (self._epoch is not None or not self.keeping())):
            return None
        return f"redis unavailable: {self.reason}"

    def went_down(self) -> None:
        """A connection went (``reason`` says which and why): logged once
        per outage."""
        if self.closed or self._down:
            return
        self._down = True
        self._down_since = self.clock.seconds()
        _log.warn("redis unavailable: {reason}; local delivery goes on, messages for "
                  "other nodes are kept (up to {count} or {bytes} bytes), reconnecting "
                  "with backoff", reason=self.reason, count=self.settings.redis_max_queued,
                  bytes=self.settings.redis_max_queued_bytes)

    def maybe_up(self) -> None:
        """Log Redis's return (or the first connection) once it is healthy."""
        if self.health() is not None:
            return
        self.reason = "up"
        if self._down:
            self._down = False
            _log.info("redis is back after {seconds:.1f} s: resubscribed {count} channels",
                      seconds=self.clock.seconds() - self._down_since,
                      count=len(self.channels))
        elif not self._ever_up:
            _log.info("connected to redis at {url} as {member}", url=self.url.describe(),
                      member=self.id)
        self._ever_up = True

    # -- calls --------------------------------------------------------------

    def eval(self, script: str, keys: list, args: list) -> Deferred:
        """``script`` on the command connection (failing at once without one)."""
        proto = self.cmd.protocol
        if proto is None:
            return fail(txredisapi.ConnectionError("not connected to redis"))
        d = maybeDeferred(proto.eval, script, keys, args)
        if self.observe is not None:
            timed(d, self.observe)
        return d

    def to_hub(self, command, **args) -> Deferred | None:
        """``command`` to the hub; a Deferred of its answer (None on failure:
        the pipe is gone, and so is the master, so this worker stops), or
        None for a command without one."""
        d = self.hub.callRemote(command, **args)
        if d is not None:
            d.addErrback(lambda _: None)
        return d

    def bad(self, what: str, error: Exception) -> None:
        """Something from Redis that pushsvc cannot read: counted, logged now and then."""
        self.counters["bad"] += 1
        if self.counters["bad"] in (1, 10, 100) or self.counters["bad"] % 1000 == 0:
            _log.warn("ignored {what} from redis that pushsvc cannot read ({count} so far): "
                      "{error}", what=what, count=self.counters["bad"], error=error)

    # -- the history's settings and epoch -----------------------------------

    def limits(self):
        """The [history] settings (``RedisBroker.configure`` follows a reload)."""
        return self.settings

    def keeping(self) -> bool:
        return self.limits().ttl > 0

    @property
    def epoch(self) -> str | None:
        """The history's epoch in Redis (as last seen); None without history."""
        return self._epoch if self.keeping() else None

    def set_epoch(self, raw) -> None:
        """Redis named the history's epoch ``raw``: a new one is logged (Redis
        lost what it kept), the first one may make the broker healthy."""
        if not raw:
            return
        epoch = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if epoch == self._epoch:
            return
        if self._epoch is not None:
            _log.warn("the history in redis has a new epoch ({epoch}): redis lost what it "
                      "kept; clients that resume get gaps", epoch=epoch)
        first = self._epoch is None
        self._epoch = epoch
        if first:
            self.maybe_up()

    def candidate(self) -> bytes:
        """A fresh epoch, in case the history in Redis has none."""
        return _utf8(f"{self._epoch_seed}{base36(next(self._candidates))}")
