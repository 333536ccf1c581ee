"""``PushClient``, the client that stays connected: its connection's
lifecycle (connect, reconnect with a jittered backoff, stop), its states and
events, and the frames it receives.  Its requests are in
pushsvc/client_requests.py, how it restores a connection (auth, groups,
resume) and delivers messages in pushsvc/client_restore.py.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.logger import Logger

from .client_connection import ConnectionClosed, ServerError, tls_failure
from .client_requests import _Requests
from .client_restore import Recent, _Restoring, fresh

_log = Logger(namespace="pushsvc.client")  # where these lines were always logged

POLICY = 1008   # authentication refused or expired, or sending too fast
KICKED = 4000   # POST /api/kick
TRY_LATER = 1013  # the server is full, or this client read too slowly
STATES = ("idle", "connecting", "open", "ready", "waiting", "closed")


class _Connection(WebSocketClientProtocol):
    """One WebSocket of a PushClient: hands everything to the client."""

    client: "PushClient"

    def onOpen(self):
        self.client._opened(self)

    def onMessage(self, payload, isBinary):
        try:
            frame = json.loads(payload)
        except ValueError:
            self.client._emit("error", ValueError("the server sent a frame that is not JSON"))
            return
        if isinstance(frame, dict):
            self.client._received(self, frame)

    def connectionLost(self, reason):
        self.tls_failure = tls_failure(reason)
        super().connectionLost(reason)

    def onClose(self, wasClean, code, reason):
        failure = getattr(self, "tls_failure", None)
        self.client._lost(self, code, failure or reason)


class PushClient(_Requests, _Restoring):
    """A client that stays connected: it reconnects after a lost connection,
    with a jittered exponential backoff, authenticates again as before, joins
    its groups again and resumes from the last ``pos`` it got, so that the
    application sees every message once and in order, or is told of a gap.

    ::

        client = PushClient("ws://127.0.0.1:8080/ws", user="alice", groups=["lobby"])
        client.on("message", lambda msg: print(msg["data"]))
        client.on("gap", lambda gap: reload_state(gap["channels"]))
        await client.start()                    # a Deferred: ready, in its groups
        await client.send({"group": "lobby"}, {"text": "hi"})
        ...
        await client.stop()

    Every request method (``auth``, ``join``, ``leave``, ``send``, ``ping``,
    ``presence``, ``request``) returns a Deferred that fires with the server's
    answer (the ``ok`` frame; the message id for ``send``; the ``presence``
    frame for ``presence``) or fails with ``ServerError`` (an ``error``
    frame; ``group`` set when it answers a ``join``) or ``ConnectionClosed``
    (the connection was lost before the answer: the request may or may not
    have been served). A request made while the client is not ready waits
    until it is.

    Events (``client.on(event, callback)``; ``callback`` gets one argument):

    - ``message``: a ``msg`` frame (a dict: ``id``, ``to``, ``data``, and
      ``pos``, ``from`` when present);
    - ``gap``: ``{"channels": [...], "epoch_changed": bool, "since": pos}``
      after a resume that could not replay everything (``channels`` is
      ``None`` when the history could not be read; with Redis shards,
      ``unavailable`` lists those of them whose shard could not be read):
      reload those channels' state from the application;
    - ``resumed``: ``{"since", "epoch", "replayed", "gaps", "epoch_changed"}``
      (and ``unavailable`` when not empty) after each resume;
    - ``state``: ``{"state", "previous", ...}`` with ``code``, ``reason`` and
      ``delay`` (seconds) when the connection was lost; states are ``idle``,
      ``connecting``, ``open`` (welcomed), ``ready`` (authenticated, in its
      groups, resumed), ``waiting`` (to reconnect) and ``closed``;
    - ``joined``, ``left``: those frames.  Without ``session`` they are about
      this session (the server joined it to a group, ``reason: "server"``;
      or took it out: ``"server"``, ``"destroyed"``, ``"token expired"``),
      and update ``groups``; with ``session`` they are member events (a
      namespace with ``events = true``; its own join included), which do not;
    - ``welcome``, ``frame`` (every frame): the frames;
    - ``error``: an ``error`` frame that answered no request (a
      ``ServerError``), or a request of the reconnection that failed: a
      group that could not be joined again is dropped from ``groups`` and
      told as a ``ServerError`` whose ``group`` names it (or the exception
      its token function raised).

    It does not reconnect after close code 1008 (authentication refused or
    expired) or 4000 (kicked; unless ``reconnect_on_kick``). ``token`` may be
    a string or a callable returning one (or a Deferred or awaitable of one),
    called for each connection: a fresh token each time.  ``join``'s
    subscription ``token`` is the same, called for each join of the group.
    """

    def __init__(self, url: str, user: str | None = None, token: Any = None,
                 groups=(), *, reactor=None, tls=None, reconnect: bool = True,
                 reconnect_on_kick: bool = False, min_delay: float = 0.5,
                 max_delay: float = 30.0, jitter: float = 0.5,
                 ping_interval: float = 25.0, ping_timeout: float = 10.0,
                 resume: bool = True, random: Callable[[], float] | None = None):
        if reactor is None:
            from twisted.internet import reactor
        import random as _random
        self.url = url
        self.reactor = reactor
        self.tls = tls
        self.reconnect = reconnect
        self.reconnect_on_kick = reconnect_on_kick
        self.min_delay, self.max_delay, self.jitter = min_delay, max_delay, jitter
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.resume = resume
        self.random = random or _random.random
        self.state = "idle"
        self.session: str | None = None   # this connection's session id
        self.user: str | None = None      # the user the session is bound to
        self.epoch: str | None = None     # the server's history epoch (welcome)
        self.positions: list[int | None] = [None]  # the last pos received per shard ...
        self.pos_epoch: str | None = None  # ... and the epoch they belong to
        self._recent = Recent()           # ids of the last kept messages
        self.groups: set[str] = set(groups)
        self._join_options: dict[str, dict[str, Any]] = {}  # group -> token, data
        self.attempt = 0                  # reconnect attempts since the last ready
        self.protocol: _Connection | None = None
        self._credentials: dict[str, Any] | None = (
            {"token": token} if token is not None else
            {"user": user} if user is not None else None)
        self._listeners: dict[str, list[Callable[[Any], Any]]] = {}
        self._refs = itertools.count(1)
        self._pending: dict[int, tuple[Deferred, _Connection]] = {}
        self._queue: list[tuple[str, dict[str, Any], Deferred]] = []
        self._ready_waiters: list[Deferred] = []
        self._closed_waiters: list[Deferred] = []
        self._buffer: list[dict[str, Any]] | None = None
        self._retry = None
        self._connecting: Deferred | None = None
        self._ever_ready = False
        self._resuming = False
        self._welcomed = False

    @property
    def last_pos(self) -> int | list[int | None] | None:
        """The last ``pos`` received; with Redis shards, one per shard."""
        return self.positions[0] if len(self.positions) == 1 else list(self.positions)

    # -- events ----------------------------------------------------------------

    def on(self, event: str, callback: Callable[[Any], Any] | None = None):
        """Call ``callback(value)`` on ``event``; without ``callback``, a decorator."""
        if callback is None:
            return lambda f: self.on(event, f)
        self._listeners.setdefault(event, []).append(callback)
        return callback

    def off(self, event: str, callback: Callable[[Any], Any]) -> None:
        listeners = self._listeners.get(event, [])
        if callback in listeners:
            listeners.remove(callback)

    def _emit(self, event: str, value: Any) -> None:
        for callback in list(self._listeners.get(event, ())):
            try:
                callback(value)
            except Exception:
                _log.failure("a PushClient {event} callback failed", event=event)

    def _set_state(self, state: str, **detail: Any) -> None:
        previous, self.state = self.state, state
        self._emit("state", {"state": state, "previous": previous, **detail})

    # -- connecting ------------------------------------------------------------

    def start(self) -> Deferred:
        """Connect (if not connected); fires with the client once it is ready:
        welcomed, authenticated, in its groups and resumed. Fails with
        ``ConnectionClosed`` if the server refuses it for good (1008, 4000)
        or ``stop`` is called first."""
        if self.state == "ready":
            return succeed(self)
        d = Deferred()
        self._ready_waiters.append(d)
        if self.state in ("idle", "closed"):
            self.attempt = 0
            self._open()
        elif self.state == "waiting":
            self._retry.cancel()
            self._open()
        return d

    def when_ready(self) -> Deferred:
        """Fires with the client when it is next ready (at once if it is)."""
        if self.state == "ready":
            return succeed(self)
        d = Deferred()
        self._ready_waiters.append(d)
        return d

    def stop(self, code: int = 1000) -> Deferred:
        """Close for good (no reconnect); fires once the connection is closed.
        Requests still waiting fail with ``ConnectionClosed``."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        error = ConnectionClosed(code, "the client was stopped")
        conn, self.protocol = self.protocol, None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self.state != "closed":
            self._set_state("closed", code=code, reason="stopped")
        self._fail_pending(error)
        self._fail_waiting(error)
        done = Deferred()
        if conn is not None and conn.state != conn.STATE_CLOSED:
            self._closed_waiters.append(done)
            if conn.state == conn.STATE_OPEN:
                conn.sendClose(code)
            else:
                conn.dropConnection(abort=True)
        else:
            done.callback(None)
        return done

    def _open(self) -> None:
        self._set_state("connecting", attempt=self.attempt)
        parsed = urlparse(self.url)
        port = parsed.port or (443 if parsed.scheme == "wss" else 80)
        # Coming back: ?resume=1 has the server hold live messages until the
        # resume, so none comes before (or twice with) what the replay gives.
        self._resuming = self.resume and self._ever_ready
        url = self.url
        if self._resuming:
            url += ("&" if parsed.query else "?") + "resume=1"
        factory = WebSocketClientFactory(url)
        factory.protocol = type("Connection", (_Connection,), {"client": self})
        if self.ping_interval:
            factory.setProtocolOptions(autoPingInterval=self.ping_interval,
                                       autoPingTimeout=self.ping_timeout)
        kind = "tls" if parsed.scheme == "wss" and self.tls is None else "tcp"
        endpoint = clientFromString(self.reactor,
                                    f"{kind}:host={parsed.hostname}:port={port}")
        if parsed.scheme == "wss" and self.tls is not None:
            endpoint = wrapClientTLS(self.tls, endpoint)
        d = self._connecting = endpoint.connect(factory)

        def connected(conn):
            if self._connecting is d:
                self._connecting = None
                self.protocol = conn
            else:  # stopped meanwhile
                conn.dropConnection(abort=True)

        def failed(failure):
            if self._connecting is d:
                self._connecting = None
                self._emit("error", failure.value)
                self._schedule(1006, str(failure.value))
        d.addCallbacks(connected, failed)

    def _lost(self, conn: _Connection, code: int | None, reason: str | None) -> None:
        if conn is not self.protocol:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)
            return
        self.protocol = None
        code = 1006 if code is None else code
        self._fail_pending(ConnectionClosed(code, reason))
        kicked = code == KICKED and not self.reconnect_on_kick
        if not self.reconnect or code == POLICY or kicked:
            self._set_state("closed", code=code, reason=reason)
            self._fail_waiting(ConnectionClosed(code, reason))
            return
        self._schedule(code, reason)

    def _schedule(self, code: int, reason: str | None) -> None:
        """Reconnect after a jittered exponential backoff."""
        if code == TRY_LATER:  # "try again later": start further out
            self.attempt = max(self.attempt, 3)
        base = min(self.max_delay, self.min_delay * 2 ** self.attempt)
        delay = base * (1 + self.jitter * (2 * self.random() - 1))
        self.attempt += 1
        self._set_state("waiting", code=code, reason=reason, delay=delay, attempt=self.attempt)
        self._retry = self.reactor.callLater(delay, self._open)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for d, _ in pending.values():
            d.errback(error)

    def _fail_waiting(self, error: Exception) -> None:
        queue, self._queue = self._queue, []
        waiters, self._ready_waiters = self._ready_waiters, []
        for _, _, d in queue:
            d.errback(error)
        for d in waiters:
            d.errback(error)

    # -- frames ----------------------------------------------------------------

    def _opened(self, conn: _Connection) -> None:
        self._welcomed = False

    def _received(self, conn: _Connection, frame: dict[str, Any]) -> None:
        if conn is not self.protocol:
            return
        self._emit("frame", frame)
        op = frame.get("op")
        if op == "welcome":
            self.session, self.user = frame.get("session"), frame.get("user")
            self.epoch = frame.get("epoch")
            # Until a kept message arrives, "where we stand" is the start of
            # the first history seen.
            if self.pos_epoch is None and self.epoch is not None:
                self.pos_epoch, self.positions = self.epoch, fresh(self.epoch)
            self._emit("welcome", frame)
            if not self._welcomed:
                self._welcomed = True
                self._set_state("open", session=self.session)
                ensureDeferred(self._restore(conn))
        elif op == "msg":
            if self._buffer is not None:
                self._buffer.append(frame)  # resuming: sorted, then delivered
            else:
                self._deliver(frame)
        elif op in ("joined", "left"):
            # Without "session": the server changed this session's groups (a
            # group it joined is joined again after a reconnect; one it left
            # is not).  With it: a member event, which changes nothing here.
            if "session" not in frame and isinstance(frame.get("group"), str):
                if op == "joined":
                    self.groups.add(frame["group"])
                else:
                    self._forget(frame["group"])
            self._emit(op, frame)
        ref = frame.get("ref")
        waiter = self._pending.pop(ref, None) if isinstance(ref, int) else None
        if waiter is not None:
            if op == "error":
                waiter[0].errback(ServerError(frame))
            else:
                waiter[0].callback(frame)
        elif op == "error":
            self._emit("error", ServerError(frame))
