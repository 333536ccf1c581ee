"""Python clients for pushsvc (docs/clients.md).

``PushClient`` is the one for applications: it stays connected (reconnects
with a jittered backoff, authenticates and joins its groups again, resumes
from the last ``pos``), from Twisted code or, through Twisted's asyncio
reactor, from asyncio code (examples/listen.py, examples/listen_asyncio.py).

``connect`` and ``PushClientProtocol`` are one plain connection that keeps
every frame, used by the tests:

    client = await connect("ws://127.0.0.1:8080/ws")
    await client.request("auth", user="u1")
    await client.request("join", group="lobby")
    ...                                   # someone pushes to group lobby
    await client.barrier()                # everything sent before is now here
    print(client.messages)

``request`` sends an op with a fresh ``ref`` and fires with the reply (``ok``,
``pong`` or ``welcome``); an ``error`` reply fails it with ``ServerError``.
``barrier`` is a ping: the server answers in order, so once the pong is back,
every frame the server wrote before it has arrived.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
from typing import Any, Callable
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.logger import Logger

_log = Logger()


class ServerError(Exception):
    """The server answered a request with an ``error`` frame.  ``group`` names
    the group when it answers a ``join`` of PushClient's (None otherwise)."""

    def __init__(self, frame: dict[str, Any], group: str | None = None):
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.code = frame.get("code")
        self.frame = frame
        self.group = group


class ConnectionClosed(Exception):
    """The connection closed before the awaited reply or frame arrived."""

    def __init__(self, code: int | None, reason: str | None):
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


class PushClientProtocol(WebSocketClientProtocol):
    """One client connection; collects every frame the server sends."""

    def __init__(self):
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.session: str | None = None
        self.user: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.welcomed: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self._refs = itertools.count(1)
        self._pending: dict[Any, Deferred] = {}
        self._watchers: list[tuple[Callable[[], bool], Deferred]] = []

    def onMessage(self, payload, isBinary):
        frame = json.loads(payload)
        self.frames.append(frame)
        op = frame.get("op")
        if op == "welcome":
            self.session, self.user = frame["session"], frame["user"]
            if not self.welcomed.called:
                self.welcomed.callback(self)
        elif op == "msg":
            self.messages.append(frame)
        waiter = self._pending.pop(frame.get("ref"), None) if "ref" in frame else None
        if waiter is not None:
            if op == "error":
                waiter.errback(ServerError(frame))
            else:
                waiter.callback(frame)
        self._check_watchers()

    def onClose(self, wasClean, code, reason):
        self.close_code, self.close_reason = code, reason
        error = ConnectionClosed(code, reason)
        pending, self._pending = self._pending, {}
        watchers, self._watchers = self._watchers, []
        for d in list(pending.values()) + [d for _, d in watchers]:
            d.errback(error)
        if not self.welcomed.called:
            self.welcomed.errback(error)
        self.closed.callback((code, reason))

    def send_json(self, frame: Any) -> None:
        """Send any JSON value as a text frame (tests send bad frames this way)."""
        self.sendMessage(json.dumps(frame).encode("utf-8"))

    def request(self, op: str, **fields: Any) -> Deferred:
        """Send ``op`` with a new ref; fires with the reply frame."""
        ref = next(self._refs)
        d = self._pending[ref] = Deferred()
        self.send_json({"op": op, "ref": ref, **fields})
        return d

    def barrier(self) -> Deferred:
        """Fires once every frame the server sent before now has arrived."""
        return self.request("ping")

    def wait_until(self, condition: Callable[[], bool]) -> Deferred:
        """Fires when ``condition()`` is true after some frame arrives (or now)."""
        d = Deferred()
        if condition():
            d.callback(None)
        else:
            self._watchers.append((condition, d))
        return d

    def wait_for_messages(self, count: int) -> Deferred:
        """Fires with ``messages`` once at least ``count`` have arrived."""
        return self.wait_until(lambda: len(self.messages) >= count).addCallback(
            lambda _: self.messages)

    def _check_watchers(self) -> None:
        still = []
        for condition, d in self._watchers:
            if condition():
                d.callback(None)
            else:
                still.append((condition, d))
        self._watchers = still

    def disconnect(self, code: int = 1000) -> Deferred:
        """Close cleanly; fires when the connection is closed."""
        self.sendClose(code)
        return self.closed


def connect(url: str, reactor=None,
            protocol: type[PushClientProtocol] = PushClientProtocol,
            tls=None) -> Deferred:
    """Open a client to ``url`` (ws://host:port/ws or wss://...); fires after
    the welcome.

    ``tls``: for wss://, the client TLS options to use instead of trusting
    the system's CA certificates, e.g.
    ``optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(pem))``.
    """
    if reactor is None:
        from twisted.internet import reactor
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "wss" else 80)
    factory = WebSocketClientFactory(url)
    factory.protocol = protocol
    kind = "tls" if parsed.scheme == "wss" and tls is None else "tcp"
    endpoint = clientFromString(reactor, f"{kind}:host={parsed.hostname}:port={port}")
    if parsed.scheme == "wss" and tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    return endpoint.connect(factory).addCallback(lambda proto: proto.welcomed)


# -- a client that stays connected ---------------------------------------------

def _fresh(d: Deferred) -> Deferred:
    """A Deferred with ``d``'s result that is not ``called`` before it has one
    (``d`` may be waiting on another Deferred, and say ``called`` meanwhile)."""
    result = Deferred()
    d.chainDeferred(result)
    return result


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


def tls_failure(reason) -> str | None:
    """Why a wss:// connection ended in its TLS handshake, in words; None
    when it did not (an untrusted certificate would otherwise be a bare 1006)."""
    from OpenSSL.SSL import Error
    if not reason.check(Error):
        return None
    details = [part for args in reason.value.args for entry in args
               for part in (entry[-1] if isinstance(entry, tuple) else entry,) if part]
    why = ", ".join(dict.fromkeys(str(d) for d in details)) or "handshake failed"
    hint = ("; trust the server's CA with SSL_CERT_FILE=ca.pem or the tls= option"
            if "certificate verify failed" in why else "")
    return f"TLS: {why}{hint}"


class PushClient:
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
      ``None`` when the history could not be read): reload those channels'
      state from the application;
    - ``resumed``: ``{"since", "epoch", "replayed", "gaps", "epoch_changed"}``
      after each resume;
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
        self.last_pos: int | None = None  # the pos of the last message received ...
        self.pos_epoch: str | None = None  # ... and the epoch it belongs to
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
                self.pos_epoch = self.epoch
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

    def _deliver(self, frame: dict[str, Any]) -> None:
        pos = frame.get("pos")
        if isinstance(pos, int):
            if (self.pos_epoch == self.epoch and self.last_pos is not None
                    and pos <= self.last_pos):
                return  # had it already
            self.last_pos, self.pos_epoch = pos, self.epoch
        self._emit("message", frame)

    def _flush_buffer(self) -> None:
        """Deliver the messages held while resuming: one of each (one may
        arrive live after a join and again in the replay), the kept ones in
        ``pos`` order, then the others."""
        held, self._buffer = self._buffer, None
        seen: set[Any] = set()
        kept, unkept = [], []
        for frame in held or ():
            if frame.get("id") in seen:
                continue
            seen.add(frame.get("id"))
            (kept if isinstance(frame.get("pos"), int) else unkept).append(frame)
        kept.sort(key=lambda f: f["pos"])
        for frame in kept + unkept:
            self._deliver(frame)

    # -- requests --------------------------------------------------------------

    def _send(self, conn: _Connection, op: str, fields: dict[str, Any],
              d: Deferred | None = None) -> Deferred:
        d = Deferred() if d is None else d
        if conn is not self.protocol or conn.state != conn.STATE_OPEN:
            d.errback(ConnectionClosed(None, "not connected"))
            return d
        ref = next(self._refs)
        self._pending[ref] = (d, conn)
        conn.sendMessage(json.dumps({"op": op, "ref": ref, **fields}).encode("utf-8"))
        return d

    def request(self, op: str, **fields: Any) -> Deferred:
        """Send any op with a fresh ``ref`` once the client is ready; fires
        with the answer frame."""
        d = Deferred()
        if self.state == "ready":
            return self._send(self.protocol, op, fields, d)
        if self.state == "closed":
            d.errback(ConnectionClosed(None, "the client is closed: call start() first"))
            return d
        self._queue.append((op, fields, d))
        if self.state == "idle":
            self.start().addErrback(lambda _: None)
        return d

    def auth(self, user: str | None = None, token: Any = None) -> Deferred:
        """Bind the session to a user (``user=`` or ``token=``); remembered for
        reconnects. Fires with the ``ok`` frame."""
        credentials = {"token": token} if token is not None else {"user": user}

        def remember(ok):
            self._credentials = credentials
            return ok
        d = _fresh(self._credential_fields(credentials).addCallback(
            lambda fields: self.request("auth", **fields)))
        return d.addCallback(remember)

    def join(self, group: str, token: Any = None, data: Any = None) -> Deferred:
        """Join ``group``; it is joined again after each reconnect, with the
        same ``token`` and ``data`` (a later join of the group replaces the
        ones it gives).  ``token``: a subscription token for the group, or a
        callable returning one (or a Deferred or awaitable of one), called
        for each join: a fresh token on each reconnect.  ``data``: any JSON,
        for the backend or the application's ``on_join``.  Fires with the
        ``ok``; a refusal fails with ``ServerError`` (``group`` set)."""
        options = {key: value for key, value in (("token", token), ("data", data))
                   if value is not None}
        d = _fresh(self._join_fields(group, options).addCallback(
            lambda fields: self.request("join", **fields)))
        return d.addCallbacks(self._joined, self._join_failed,
                              callbackArgs=(group, options), errbackArgs=(group,))

    def _joined(self, ok, group: str, options: dict[str, Any]):
        self.groups.add(group)
        if options:
            self._join_options[group] = {**self._join_options.get(group, {}), **options}
        return ok

    @staticmethod
    def _join_failed(failure, group: str):
        if failure.check(ServerError) and failure.value.group is None:
            failure.value.group = group
        return failure

    def leave(self, group: str) -> Deferred:
        """Leave ``group`` (and stop joining it after reconnects)."""
        def left(ok):
            self._forget(group)
            return ok
        return self.request("leave", group=group).addCallback(left)

    def _forget(self, group: str) -> None:
        self.groups.discard(group)
        self._join_options.pop(group, None)

    def presence(self, group: str) -> Deferred:
        """Who is in ``group`` (a member's question, where its namespace has
        presence on); fires with the ``presence`` frame: ``{"op", "ref",
        "group", "sessions", "anonymous", "users": {user: {"sessions",
        "data"?}}, "more"?}``."""
        return self.request("presence", group=group)

    def send(self, to: dict[str, Any], data: Any = None) -> Deferred:
        """Send ``data`` to an address; fires with the message id."""
        return self.request("send", to=to, data=data).addCallback(lambda ok: ok.get("id"))

    def ping(self) -> Deferred:
        """A ``ping`` op; fires with the ``pong`` (every frame the server sent
        before it has arrived by then)."""
        return self.request("ping")

    # -- (re)storing a connection ------------------------------------------------

    def _token(self, token: Any) -> Deferred:
        """A Deferred of ``token``: a string as it is; a callable's answer (a
        string, or a Deferred or awaitable of one)."""
        if not callable(token):
            return succeed(token)
        try:
            result = token()
        except Exception:
            return fail()
        if isinstance(result, Deferred):
            return result
        if inspect.isawaitable(result):
            # Under Twisted's asyncio reactor an awaitable is asyncio's (it
            # awaits asyncio futures): run it as a task of that loop.
            loop = getattr(self.reactor, "_asyncioEventloop", None)
            if loop is not None:
                return Deferred.fromFuture(asyncio.ensure_future(result, loop=loop))
            return ensureDeferred(result)
        return succeed(result)

    def _credential_fields(self, credentials: dict[str, Any]) -> Deferred:
        if "token" in credentials:
            return self._token(credentials["token"]).addCallback(lambda t: {"token": t})
        return succeed(dict(credentials))

    def _join_fields(self, group: str, options: dict[str, Any]) -> Deferred:
        """The fields of a ``join`` of ``group`` with ``options`` (token, data)."""
        fields = {"group": group}
        if "data" in options:
            fields["data"] = options["data"]
        if "token" not in options:
            return succeed(fields)

        def with_token(token):
            fields["token"] = token
            return fields
        return self._token(options["token"]).addCallback(with_token)

    def _rejoin(self, conn: _Connection, group: str) -> Deferred:
        d = self._join_fields(group, self._join_options.get(group, {}))
        return d.addCallback(lambda fields: self._send(conn, "join", fields))

    async def _restore(self, conn: _Connection) -> None:
        resuming = self._resuming
        self._buffer = [] if resuming else None
        try:
            if self._credentials is not None:
                fields = await self._credential_fields(self._credentials)
                await self._send(conn, "auth", fields)
            groups = sorted(self.groups)
            results = await DeferredList([self._rejoin(conn, g) for g in groups],
                                         consumeErrors=True)
            for group, (ok, result) in zip(groups, results):
                if not ok:
                    if result.check(ConnectionClosed):
                        result.raiseException()
                    # Refused now (or its token function failed): no longer
                    # one of ours, and said so.
                    self._forget(group)
                    if result.check(ServerError):
                        result.value.group = group
                    self._emit("error", result.value)
            if resuming:
                await self._resume(conn)
        except ConnectionClosed:
            return  # _lost takes it from here
        except Exception as e:
            # An auth refused: the server closes with 1008 next.
            if conn is self.protocol:
                self._flush_buffer()
                self._emit("error", e)
            return
        if conn is not self.protocol:
            return
        self.attempt = 0
        self._ever_ready = True
        self._set_state("ready", session=self.session)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)
        queue, self._queue = self._queue, []
        for op, fields, d in queue:
            self._send(conn, op, fields, d)

    async def _resume(self, conn: _Connection) -> None:
        # With no kept message yet: from the start of the first history seen
        # (a server without history, ttl = 0, answers with every channel a gap).
        since = self.last_pos if self.last_pos is not None else 0
        epoch = self.pos_epoch if self.pos_epoch is not None else (self.epoch or "")
        changed = epoch != self.epoch
        try:
            ok = await self._send(conn, "resume", {"since": since, "epoch": epoch})
        except ServerError as e:  # "unavailable": the history cannot be read now
            self._flush_buffer()
            self._emit("error", e)
            self._emit("gap", {"channels": None, "epoch_changed": changed, "since": since,
                               "error": e})
            return
        if changed:  # positions in the old history mean nothing now
            self.pos_epoch, self.last_pos = self.epoch, None
        self._flush_buffer()
        info = {"since": since, "epoch": epoch, "replayed": ok.get("replayed", 0),
                "gaps": ok.get("gaps", []), "epoch_changed": changed}
        self._emit("resumed", info)
        if info["gaps"]:
            self._emit("gap", {"channels": info["gaps"], "epoch_changed": changed,
                               "since": since})
