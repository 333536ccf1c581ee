"""The session engine of one process: client ops, publishing, delivery, commands.

The engine sits between the I/O edges and the broker.  The WebSocket edge hands
it connections (``open``/``close``) and text frames (``handle``); the HTTP edge
hands it pushes (``publish``) and commands (``run``); the broker hands it
messages (``deliver``) and commands (``perform``).  It never touches a socket:
a connection is any object with the ``IConnection`` methods.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Callable, NoReturn

from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from . import commands, metrics
from .app import API, Answer, App, Deliver, Refused, SessionInfo
from .broker.interface import Command, IReceiver, Message
from .ids import IdMaker
from .joins import Grant, Joins, presence_frame
from .namespaces import Namespaces
from .protocol import (BAD_REQUEST, CLOSE_KICKED, CLOSE_POLICY, CLOSE_TRY_AGAIN, FORBIDDEN,
                       RATE_LIMITED, TOO_MANY_GROUPS, UNAVAILABLE,
                       UNAUTHORIZED, Address, ProtocolError, Request, encode, error_frame,
                       message_frame, name, parse_address, parse_push, parse_request,
                       position_of, reply_frame)
from .routing import channels, recipients, session_channels, worker_channel
from .sessions import Session, SessionRegistry
from .tokens import Claims, KeyFileError, TokenError, TokenVerifier

_log = Logger()


class IConnection(Interface):
    """What the engine asks of a client connection (the WebSocket edge)."""

    def send_frame(frame):
        """Write one encoded server frame (bytes) to this client."""

    def send_prepared(prepared):
        """Write a frame prepared once for many clients by the engine's
        ``prepare``, at the end of the reactor turn with the turn's others."""

    def send_now(prepared):
        """Write a prepared frame now (after any frames of this turn)."""

    def close(code, reason):
        """Close the connection with a WebSocket close code and reason."""

    def check_alive(now):
        """Ping the client, or drop it if it has been silent too long."""


# What the engine counts (``stats`` shows them, all from zero).
# How many sessions one engine lists at most for ``sessions``.
SESSIONS_SHOWN = 1000

COUNTERS = ("published", "delivered", "sent_by_clients", "dropped_slow", "refused_full",
            # limits.COUNTERS, counted by the I/O edges (docs/security.md)
            "rate_limited", "dropped_flood", "dropped_large", "dropped_invalid",
            "refused_ip", "refused_origin", "slow_handshakes", "http_invalid",
            "http_bad_key", "http_forbidden", "http_too_large",
            # the backend's answers (pushsvc/proxy.py)
            "proxy_allow", "proxy_deny", "proxy_error")

# A session's frames that may wait while the application handles an earlier one.
MAX_WAITING = 100

INTERNAL = "internal"  # the error code of a hook that failed

# Live messages one session may hold until its resume is replayed (and at
# most max_buffered_bytes of them, as for a client that reads slowly).
MAX_HELD = 10_000

# The ops served before a successful auth in ``auth.mode = "required"``.
BEFORE_AUTH = ("auth", "ping")


class _Held(list):
    """The live messages held for a session until its replay is written:
    (id, position, prepared frame) each, and their ``bytes``."""

    bytes = 0


class Overloaded(Exception):
    """The process holds as many sessions as it may."""


@implementer(IReceiver)
class Engine:
    """Sessions, ops, delivery and commands for one process."""

    def __init__(self, settings, broker, ids: IdMaker, clock,
                 prepare: Callable[[bytes], Any] = lambda frame: frame,
                 backend: Callable[..., Any] | None = None):
        self.settings = settings
        self.broker = broker
        self.ids = ids
        self.clock = clock
        self.prepare = prepare
        self.registry = SessionRegistry(on_interest=self._interest)
        # Subscriptions the broker has not confirmed yet, by channel: replies
        # to a session wait for those of its channels (see ``reply``).
        self._pending: dict[str, Deferred] = {}
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        # The rest of what /metrics shows (pushsvc/metrics.py); the WebSocket
        # factory puts its set of open connections in ``connections``.
        self.meter = metrics.Meter()
        self.connections: set = set()
        self._keepalive = LoopingCall(self._check_alive)
        self._keepalive.clock = clock
        self._ops = {"ping": self._ping, "auth": self._auth, "join": self._join,
                     "leave": self._leave, "send": self._send, "resume": self._replay,
                     "presence": self._presence}
        # Sessions being replayed what they missed: the live messages for them
        # wait here meanwhile, (id, prepared frame) each.
        self._replaying: dict[Session, _Held] = {}
        self.app: App | None = None
        self.api = API(self)
        # The frames of sessions whose earlier request (or connect) is in the
        # application's hands: they are served in order once it is done.
        self._waiting: dict[Session, deque[bytes]] = {}
        # Client tokens: None when no key is configured (pushsvc/tokens.py).
        self.tokens: TokenVerifier | None = TokenVerifier.from_settings(settings)
        # backend(url, settings, count, observe) makes a BackendProxy (pushsvc/proxy.py).
        self._backend = backend
        self.joins = Joins(Namespaces.from_settings(settings), clock, lambda: self.tokens,
                           self._hook, self._call, self._expired)
        self.send_proxy = None
        self._use_backend(settings)

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        if hasattr(self.broker, "on_round_trip"):  # a RedisBroker times its calls
            self.broker.on_round_trip = self.meter.round_trip("redis")
        self.broker.attach(self)
        self._interest(worker_channel(self.ids.owner), True)
        self._keepalive.start(self.settings.ping_interval, now=False).addErrback(
            lambda f: _log.failure("the keepalive loop stopped", f))

    def stop(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()
        for proxy in (self.joins.proxy, self.send_proxy):
            if proxy is not None:
                proxy.close()

    def configure(self, settings) -> None:
        """Use ``settings`` from now on (a reload): limits, policy, timeouts,
        token keys (the public key file is read again)."""
        required = self.settings.auth_mode == "required"
        self._use_backend(settings, self.settings)
        self.settings = settings
        self.joins.namespaces = Namespaces.from_settings(settings)
        self._keepalive.interval = settings.ping_interval
        try:
            self.tokens = TokenVerifier.from_settings(settings)
        except KeyFileError as e:  # it was readable when the settings were checked
            _log.error("reload: the token keys stay as they were: {error}", error=str(e))
        if required != (settings.auth_mode == "required"):
            self._time_anonymous()

    def _use_backend(self, settings, old=None) -> None:
        """Ask the backend at ``proxy.join_url`` and ``proxy.send_url``, anew
        when a reload changed the [proxy] settings."""
        keys = ("proxy_join_url", "proxy_send_url", "proxy_timeout", "proxy_max_in_flight",
                "proxy_on_error", "proxy_secret")
        if old is not None and all(getattr(old, k) == getattr(settings, k) for k in keys):
            return
        for proxy in (self.joins.proxy, self.send_proxy):
            if proxy is not None:
                proxy.close()
        self.joins.proxy = self.send_proxy = None
        if self._backend is None:
            return

        def count(result: str) -> None:
            self.counters[f"proxy_{result}"] += 1

        def make(url: str):
            return url and self._backend(url, settings, count, self.meter.round_trip("proxy"))
        self.joins.proxy = make(settings.proxy_join_url) or None
        self.send_proxy = make(settings.proxy_send_url) or None

    def _time_anonymous(self) -> None:
        """After ``auth.mode`` changed to or from "required": start or stop the
        auth timeout of the sessions that have not authenticated."""
        required = self.settings.auth_mode == "required"
        for session in self.registry.everyone():
            if session.user is not None:
                continue
            if session.timer is not None:
                session.timer.cancel()
                session.timer = None
            if required:
                session.timer = self.clock.callLater(self.settings.auth_timeout,
                                                     self._time_up, session)

    def _interest(self, channel: str, wanted: bool) -> None:
        if not wanted:
            self.broker.unsubscribe(channel)
            return
        d = self.broker.subscribe(channel)
        if d is None:
            return
        if not d.called:
            self._pending[channel] = d
        d.addBoth(self._subscribed, channel, d)

    def _subscribed(self, result, channel: str, d: Deferred) -> None:
        if self._pending.get(channel) is d:
            del self._pending[channel]
        if isinstance(result, Failure):
            _log.failure("subscribing to {channel} failed", result, channel=channel)

    def _check_alive(self) -> None:
        now = self.clock.seconds()
        for session in list(self.registry.everyone()):
            try:
                session.conn.check_alive(now)
            except Exception:  # one connection must not stop the loop for all
                _log.failure("liveness check of session {session} failed",
                             session=session.id, user=session.user)

    # -- sessions ---------------------------------------------------------

    def open(self, conn) -> Session:
        """Register a new connection; raises Overloaded past max_connections."""
        if len(self.registry) >= self.settings.max_connections:
            self.counters["refused_full"] += 1
            raise Overloaded()
        session = Session(self.ids.session_id(), conn)
        self.registry.add(session)
        if self.settings.auth_mode == "required":
            session.timer = self.clock.callLater(self.settings.auth_timeout,
                                                 self._time_up, session)
        if self._hook("on_connect") is not None:
            # After the welcome the caller sends; its frames wait meanwhile.
            self._waiting[session] = deque()
            self.clock.callLater(0, self._connect, session)
        return session

    def close(self, session: Session) -> None:
        """Forget a session: it leaves every group, tag and user map."""
        hook = self._hook("on_disconnect")
        info = None if hook is None else SessionInfo.of(session)
        if self.registry.get(session.id) is session:
            for group in session.groups:
                self._announce("left", session, group)
        self.joins.gone(session)
        self.registry.remove(session)
        self._waiting.pop(session, None)
        self._replaying.pop(session, None)
        if session.timer is not None:
            if session.timer.active():
                session.timer.cancel()
            session.timer = None
        if info is not None:
            # _hook_failed has logged a failure; nobody is left to answer.
            self._call("on_disconnect", hook, info).addErrback(lambda _: None)

    def _connect(self, session: Session) -> None:
        if self._gone(session):
            return
        hook = self._hook("on_connect")
        if hook is None:  # the app changed meanwhile
            self._resume(None, session)
            return
        d = self._call("on_connect", hook, SessionInfo.of(session))
        d.addErrback(self._request_failed, session, None).addCallback(self._resume, session)

    def _gone(self, session: Session) -> bool:
        return self.registry.get(session.id) is not session

    # -- application hooks ------------------------------------------------

    def set_app(self, app: App | None) -> None:
        """Use ``app``'s hooks (None: none) for every event from now on.

        Sessions keep their state; a hook already running finishes with the
        code it started with.
        """
        self.app = app

    def _hook(self, hook_name: str) -> Callable[..., Any] | None:
        return None if self.app is None else getattr(self.app, hook_name)

    def _call(self, hook_name: str, hook: Callable[..., Any], info: SessionInfo,
              *args: Any, result: Callable[[Any], Any] | None = None) -> Deferred:
        """Call ``hook``; a Deferred with its outcome, read by ``result``.

        A ``Refused`` fails it with the matching ProtocolError; any other
        failure (of the hook or of ``result``) is logged and fails it with
        an ``internal`` one.
        """
        d = maybeDeferred(hook, info, self.api, *args)
        if result is not None:
            d.addCallback(result)
        return d.addErrback(self._hook_failed, hook_name, info)

    @staticmethod
    def _hook_failed(failure: Failure, hook_name: str, info: SessionInfo) -> NoReturn:
        if failure.check(Refused):
            raise ProtocolError(UNAUTHORIZED if hook_name == "on_auth" else FORBIDDEN,
                                failure.value.message)
        _log.failure("application hook {hook} failed for session {session} (user {user})",
                     failure, hook=hook_name, session=info.id, user=info.user)
        raise ProtocolError(INTERNAL, "internal error in the application")

    def answer(self, session: Session, data: Any) -> str:
        """Write ``data`` to ``session`` alone as a ``msg`` from the server, in
        order with the replies to its requests; the message id."""
        message = self.message(Address(session=(session.id,)), data)
        self.reply(session, message.frame)
        return message.id

    def welcome(self, session: Session, ref: Any = None) -> bytes:
        epoch = self.broker.epoch if self.settings.ttl > 0 else None
        if epoch is None:
            return reply_frame("welcome", ref, session=session.id, user=session.user)
        return reply_frame("welcome", ref, session=session.id, user=session.user, epoch=epoch)

    def reply(self, session: Session, frame: bytes) -> None:
        """Send a frame to one session, after every subscription its channels
        still wait for, and after the frames sent to it before.

        So once a client has its ``ok`` to ``auth`` or ``join``, the broker
        routes that user's or group's messages to this process: a push sent
        after the ``ok`` reaches it.
        """
        waits = [self._pending[c] for c in session_channels(session) if c in self._pending]
        own = self._pending.get(worker_channel(self.ids.owner))  # session-addressed
        if own is not None:
            waits.append(own)
        if session.gate is not None:
            waits.append(session.gate)
        if not waits:
            session.conn.send_frame(frame)
            return
        gate = session.gate = DeferredList(waits, consumeErrors=True)
        gate.addCallback(self._release, session, gate, frame)

    @staticmethod
    def _release(_, session: Session, gate: Deferred, frame: bytes) -> None:
        if session.gate is gate:
            session.gate = None
        session.conn.send_frame(frame)

    @staticmethod
    def _after_replies(session: Session, action, *args) -> None:
        """Do ``action(*args)`` once the replies held for ``session`` are sent."""
        if session.gate is None:
            action(*args)
            return

        def then(result):
            action(*args)
            return result
        session.gate.addCallback(then)

    # -- client ops -------------------------------------------------------

    def handle(self, session: Session, text: bytes) -> None:
        """Serve one client text frame; every reply goes to ``session.conn``.

        While the application handles a request of the session, its next
        frames wait (up to MAX_WAITING), so they are served in order.
        """
        waiting = self._waiting.get(session)
        if waiting is None:
            d = self._serve(session, text)
            if d is not None:
                self._waiting[session] = deque()
                d.addCallback(self._resume, session)
        elif len(waiting) < MAX_WAITING:
            waiting.append(text)
        else:
            self._too_many(session, text)

    def _serve(self, session: Session, text: bytes) -> Deferred | None:
        """Serve one frame; a Deferred while the application still has it."""
        request = None
        try:
            request = parse_request(text, self.settings.max_targets)
            if (session.user is None and request.op not in BEFORE_AUTH
                    and self.settings.auth_mode == "required"):
                # Refused, but not closed: that is the auth timeout's to do.
                self.reply(session, error_frame(ProtocolError(
                    UNAUTHORIZED, "authenticate first: send auth with a token"), request.ref))
                return None
            d = self._ops[request.op](session, request)
        except ProtocolError as e:
            self._refuse(session, e, e.ref if request is None else request.ref)
            return None
        if d is None:
            return None
        done: list[Any] = []
        d.addErrback(self._request_failed, session, request.ref).addCallback(done.append)
        return None if done else d

    def _resume(self, _, session: Session) -> None:
        """Serve the frames that waited, until one is in the application's hands."""
        waiting = self._waiting.pop(session, None)  # None: the session has closed
        while waiting:
            d = self._serve(session, waiting.popleft())
            if d is not None:
                self._waiting[session] = waiting
                d.addCallback(self._resume, session)
                return

    def _too_many(self, session: Session, text: bytes) -> None:
        try:
            ref = parse_request(text, self.settings.max_targets).ref
        except ProtocolError as e:
            ref = e.ref
        self.reply(session, error_frame(ProtocolError(
            RATE_LIMITED, f"more than {MAX_WAITING} requests wait for the application"), ref))

    def _refuse(self, session: Session, error: ProtocolError, ref: Any) -> None:
        """Answer a request with ``error``; ``unauthorized`` also closes."""
        self.reply(session, error_frame(error, ref))
        if error.code == UNAUTHORIZED:
            self._after_replies(session, session.conn.close, CLOSE_POLICY, error.message)

    def _request_failed(self, failure: Failure, session: Session, ref: Any) -> None:
        """Answer a request that failed after its op returned (in or after a hook)."""
        error = failure.value
        if not failure.check(ProtocolError):
            _log.failure("serving a request of session {session} (user {user}) failed",
                         failure, session=session.id, user=session.user)
            error = ProtocolError(INTERNAL, "internal error; the request was not done")
        self._refuse(session, error, ref)

    def _ok(self, session: Session, request: Request, **fields: Any) -> None:
        if request.ref is not None:
            self.reply(session, reply_frame("ok", request.ref, **fields))

    def _ping(self, session: Session, request: Request) -> None:
        self.reply(session, reply_frame("pong", request.ref))

    def authenticate_url(self, session: Session, token: str) -> None:
        """A token given on the /ws URL (``?token=``): served as if the client
        had sent ``{"op":"auth","token":...}`` (without a ref) first."""
        self.handle(session, encode({"op": "auth", "token": token}))

    def _auth(self, session: Session, request: Request) -> Deferred | None:
        """``auth``: a token is checked first (when the server has keys), then
        the application's ``on_auth`` (given the token's user) decides."""
        claims = None
        user = request.user
        if request.token is not None:
            if self.tokens is not None:
                try:
                    claims = self.tokens.verify(request.token, self.clock.seconds())
                except TokenError as e:
                    raise ProtocolError(UNAUTHORIZED, str(e))
                user = claims.user
        elif self.settings.auth_mode != "none":
            raise ProtocolError(UNAUTHORIZED, "this server needs a token: send auth "
                                              "with 'token', not 'user'")
        hook = self._hook("on_auth")
        if hook is None:
            return self._bind(session, request, user, claims)

        def chosen(outcome: Any) -> str | None:
            if outcome is None or outcome is True:
                return user
            if outcome is False:
                raise Refused()
            if isinstance(outcome, str):
                return name(outcome, "user")
            raise TypeError(f"on_auth returned {outcome!r}; expected None, True, False "
                            "or a user name")
        return self._call("on_auth", hook, SessionInfo.of(session), user,
                          request.token, result=chosen).addCallback(
            lambda chosen_user: self._bind(session, request, chosen_user, claims))

    def _bind(self, session: Session, request: Request, user: str | None,
              claims: Claims | None = None) -> Deferred | None:
        """Bind ``session`` to ``user`` (None: a token nobody verified), join
        and tag it as a verified token's ``claims`` say, then hand it what the
        mailbox kept for the user."""
        if self._gone(session):  # it closed while the application decided
            return
        if user is None:
            raise ProtocolError(UNAUTHORIZED,
                                "token authentication is not configured on this server")
        if session.user is not None and session.user != user:
            raise ProtocolError(FORBIDDEN, "this session is already bound to another user")
        if claims is not None:
            joining = sum(1 for g in claims.groups if g not in session.groups and "*" not in g)
            if len(session.groups) + joining > self.settings.max_groups_per_session:
                raise ProtocolError(TOO_MANY_GROUPS, "the token's groups would put the "
                                    "session in more than "
                                    f"{self.settings.max_groups_per_session} groups")
        anonymous = session.user is None
        self.registry.set_user(session, user)
        if claims is not None:
            # Server-side joins: the token's names, not its patterns (those
            # only let the session join what they match, see joins.py).
            self.joins.claims[session] = claims.groups
            self.joins.payloads[session] = claims.payload
            for group in claims.groups:
                if "*" not in group and self.registry.join(session, group):
                    self._announce("joined", session, group)
            for tag in claims.tags:
                self.registry.tag(session, tag)
        if anonymous or claims is not None:
            self._expire_at(session, None if claims is None else claims.expires)
        self.reply(session, self.welcome(session))
        d = self.broker.mail(user).addErrback(self._mail_failed, user, session)
        return d.addCallback(self._mailed, session, request)

    def _expire_at(self, session: Session, expires: float | None) -> None:
        """End ``session`` at ``expires`` (its token's ``exp``, plus the
        leeway), instead of at its auth timeout or at an earlier token's
        expiry; None: never."""
        timer = session.timer
        if timer is not None and timer.active():
            timer.cancel()
        session.timer = None
        if expires is not None:
            leeway = self.tokens.leeway if self.tokens is not None else 0.0
            delay = max(0.0, expires + leeway - self.clock.seconds())
            session.timer = self.clock.callLater(delay, self._time_up, session)

    def _time_up(self, session: Session) -> None:
        """The auth timeout (no user yet) or the token's expiry (no fresh token
        came): ``unauthorized``, then close with 1008."""
        session.timer = None
        if self._gone(session):
            return
        if session.user is None:
            if self.settings.auth_mode != "required":
                return
            message = f"not authenticated within {self.settings.auth_timeout:g} seconds"
        else:
            message = "token expired"
        _log.debug("closing session {session} (user {user}): {why}", session=session.id,
                   user=session.user, why=message)
        self._refuse(session, ProtocolError(UNAUTHORIZED, message), None)

    @staticmethod
    def _mail_failed(failure: Failure, user: str, session: Session) -> list:
        _log.failure("reading the mailbox of user {user} failed (session {session})",
                     failure, user=user, session=session.id)
        return []

    def _mailed(self, messages: list, session: Session, request: Request) -> None:
        """Write the kept messages, then ``ok`` the ``auth``.  A later
        ``resume`` skips them."""
        for msg_id, frame in messages:
            self.reply(session, frame)
        if messages:
            session.mailed = (session.mailed or set()) | {msg_id for msg_id, _ in messages}
        self._ok(session, request)

    def _may_join(self, session: Session, group: str) -> bool:
        """False when joining ``group`` would pass max_groups_per_session."""
        return (group in session.groups
                or len(session.groups) < self.settings.max_groups_per_session)

    def _check_room(self, session: Session, group: str) -> None:
        if not self._may_join(session, group):
            raise ProtocolError(TOO_MANY_GROUPS, "a session may be in at most "
                                f"{self.settings.max_groups_per_session} groups")

    def _join(self, session: Session, request: Request) -> Deferred | None:
        """``join``: as the group's namespace allows (``Joins.decide``), and
        while it has room (``max_members``); ``ok`` once joined.  A join of a
        group the session is in renews its subscription token."""
        group = request.group
        if group in session.groups and request.token is None:
            self._ok(session, request)
            return None
        self._check_room(session, group)
        d = self.joins.decide(session, group, request.token, request.data,
                              lambda: SessionInfo.of(session))
        cap = self.joins.namespaces.of(group).max_members
        if cap and group not in session.groups:
            d.addCallback(self._below_cap, group, cap)
        return d.addCallback(self._admit, session, request)

    def _below_cap(self, grant: Grant, group: str, cap: int) -> Deferred:
        """``grant`` while ``group`` has fewer than ``cap`` members on every
        worker and node (counted now: joins at the same moment may pass it)."""
        def counted(result: dict[str, Any]) -> Grant:
            if result.get("sessions", 0) >= cap:
                raise ProtocolError(FORBIDDEN, f"group '{group}' is full ({cap} members)")
            return grant
        return self.run(Command("presence", {"group": group})).addCallback(counted)

    def _admit(self, grant: Grant, session: Session, request: Request) -> None:
        if self._gone(session):  # it closed while the backend or hook decided
            return
        group = request.group
        if group not in session.groups:
            self._check_room(session, group)  # it may have joined others meanwhile
            self.joins.admitted(session, group, grant, self._leeway())
            self.registry.join(session, group)
            self._announce("joined", session, group)
        else:
            self.joins.admitted(session, group, grant, self._leeway())
        self._ok(session, request)

    def _leeway(self) -> float:
        return self.tokens.leeway if self.tokens is not None else 0.0

    def _depart(self, session: Session, group: str) -> bool:
        """Take ``session`` out of ``group``, telling the other members when
        the namespace says so; False if it was not in it."""
        if group not in session.groups:
            return False
        self._announce("left", session, group)
        self.joins.left(session, group)
        return self.registry.leave(session, group)

    def _announce(self, op: str, session: Session, group: str) -> None:
        """Publish a ``joined``/``left`` event to ``group``'s members, on every
        worker and node, when its namespace has events on; not kept."""
        frame = self.joins.event(op, session, group)
        if frame is not None:
            to = Address(group=(group,))
            self.broker.publish((f"group:{group}",), Message(self.ids.message_id(), to, frame))

    def _expired(self, session: Session, group: str) -> None:
        """A subscription token ran out: out of the group, and told why."""
        if not self._gone(session) and self._depart(session, group):
            self._tell(session, "left", group, "token expired")

    def _leave(self, session: Session, request: Request) -> None:
        self._depart(session, request.group)
        self._ok(session, request)

    def _presence(self, session: Session, request: Request) -> Deferred:
        """``presence``: the group's members on every worker and node, for a
        member, where the namespace allows it."""
        group = request.group
        if not self.joins.namespaces.of(group).presence:
            raise ProtocolError(FORBIDDEN, f"presence is off for group '{group}'")
        if group not in session.groups:
            raise ProtocolError(FORBIDDEN, f"not a member of group '{group}'")
        d = self.run(Command("presence", {"group": group}))
        return d.addCallback(lambda result: self.reply(
            session, presence_frame(result, group, request.ref)))

    def _send(self, session: Session, request: Request) -> Deferred | None:
        ask = self.joins.namespaces.check_send(session, request.to)
        self.counters["sent_by_clients"] += 1
        if ask and self.send_proxy is not None:
            d = self.joins.ask_send(self.send_proxy, session, request.to.to_json(),
                                    request.data)
            return d.addCallback(lambda data: self._hand_to_app(session, request, data))
        return self._hand_to_app(session, request, request.data)

    def _hand_to_app(self, session: Session, request: Request, data: Any) -> Deferred | None:
        """A client's send that the rules allow: to ``on_message``, then out."""
        if self._gone(session):
            return None
        hook = self._hook("on_message")
        if hook is None:
            self._pass_on(session, request, request.to, data)
            return None

        def outcome(result: Any) -> Answer | tuple[Address, Any]:
            if result is None or result is True:
                return request.to, data
            if result is False:
                raise Refused()
            if isinstance(result, Answer):
                return result
            if isinstance(result, Deliver):
                to = (request.to if result.to is None
                      else parse_address(result.to, self.settings.max_targets))
                return to, result.data
            raise TypeError(f"on_message returned {result!r}; expected None, True, "
                            "False, Deliver or Answer")
        return self._call("on_message", hook, SessionInfo.of(session), request.to.to_json(),
                          data, result=outcome).addCallback(
            self._sent, session, request)

    def _sent(self, outcome: Answer | tuple[Address, Any], session: Session,
              request: Request) -> Deferred | None:
        if not isinstance(outcome, Answer):
            return self._pass_on(session, request, *outcome)
        if outcome.silent:
            self._ok(session, request)
        else:
            self._ok(session, request, id=self.answer(session, outcome.data))
        return None

    def _pass_on(self, session: Session, request: Request, to: Address, data: Any
                 ) -> Deferred:
        """Publish what a client sent; ``ok`` it with the message id."""
        sender = {"session": session.id, "user": session.user}
        return self.publish(to, data, sender).addCallback(
            lambda msg_id: self._ok(session, request, id=msg_id))

    # -- messages ---------------------------------------------------------

    def message(self, to: Address, data: Any,
                sender: dict[str, Any] | None = None) -> Message:
        """A new message with its id and its frame, encoded once.

        Raises ``too_large`` when ``data`` is over ``max_message_bytes``.
        """
        msg_id = self.ids.message_id()
        to_text = to.to_text()
        frame = message_frame(msg_id, to, data, sender, self.settings.max_message_bytes,
                              to_text)
        return Message(msg_id, to, frame, to_text)

    def send(self, message: Message, store: bool = False) -> Deferred:
        """Give ``message`` to the broker; a Deferred firing with its id.

        ``store``: keep it too for each addressed user who is offline, until
        they connect (the mailbox).
        """
        return self._hand_over(message, store).addCallback(lambda _: message.id)

    def send_all(self, messages: list[tuple[Message, bool]]) -> Deferred:
        """``send`` for several (message, store) pairs at once; a Deferred
        firing with their ids, in order."""
        d = gatherResults([self._hand_over(message, store) for message, store in messages])
        return d.addCallback(lambda _: [message.id for message, _ in messages])

    def _hand_over(self, message: Message, store: bool) -> Deferred:
        self.counters["published"] += 1
        self.meter.messages_in[metrics.address_kind(message.to)] += 1
        return self.broker.publish(channels(message.to), message,
                                   store and bool(message.to.user))

    def publish(self, to: Address, data: Any, sender: dict[str, Any] | None = None,
                store: bool = False) -> Deferred:
        """Build and send a message; a Deferred firing with its id."""
        return self.send(self.message(to, data, sender), store)

    def deliver(self, message: Message, alone: bool = False) -> None:
        """Write ``message`` to each local session it is for, encoded once.

        ``alone``: no other message is delivered in this reactor turn, so each
        connection writes it at once instead of at the end of the turn.
        """
        targets = recipients(self.registry, message.to)
        if not targets:
            return
        prepared = self.prepare(message.frame)
        if self._replaying:
            targets = self._hold(targets, message, prepared)
        if alone:
            for session in targets:
                session.conn.send_now(prepared)
        else:
            for session in targets:
                session.conn.send_prepared(prepared)
        self.counters["delivered"] += len(targets)
        self.meter.messages_out[metrics.address_kind(message.to)] += len(targets)

    # -- resume ------------------------------------------------------------

    def _replay(self, session: Session, request: Request) -> Deferred:
        """``resume``: the kept messages of the session's channels after
        ``since``, then ``ok`` with their count and the channels with a gap.

        Live messages for the session wait until the replay is written; one
        that is also in the replay is written once, in its replay place.
        """
        if session.resumed:  # one replay per connection: each costs the keeper a scan
            raise ProtocolError(BAD_REQUEST, "this session has resumed already")
        session.resumed = True
        # Held since it connected (?resume=1), or from now on; the session's
        # next frames wait meanwhile.
        self._replaying.setdefault(session, _Held())
        d = self.broker.replay(session_channels(session), request.since, request.epoch)
        return d.addBoth(self._replayed, session, request)

    def hold(self, session: Session) -> None:
        """Hold the live messages for ``session`` until its ``resume`` (a
        client that connects with ``?resume=1``): so none of them comes
        before, or twice with, what the replay gives."""
        self._replaying.setdefault(session, _Held())

    def _replayed(self, result, session: Session, request: Request) -> None:
        if session not in self._replaying:  # closed meanwhile
            return
        if isinstance(result, Failure):
            _log.failure("reading the history for session {session} (user {user}) failed",
                         result, session=session.id, user=session.user)
            self._end_replay(session, set(), self._since(request))
            session.resumed = False  # it may try again
            raise ProtocolError(UNAVAILABLE, "the history cannot be read now")
        messages, gaps = result
        if session.mailed:
            messages = [(i, frame) for i, frame in messages if i not in session.mailed]
        for _, frame in messages:
            self.reply(session, frame)
        self._after_replies(session, self._end_replay, session,
                            {msg_id for msg_id, _ in messages}, self._since(request))
        self._ok(session, request, replayed=len(messages), gaps=gaps)

    def _since(self, request: Request) -> int | None:
        """The position the client had, when it counts in this history's epoch."""
        return request.since if request.epoch == self.broker.epoch else None

    def _end_replay(self, session: Session, replayed: set[str], since: int | None) -> None:
        """Write the live messages held for the session, but those the replay
        had and those the client had before (at or below ``since``, when
        ``since`` is of this epoch)."""
        for msg_id, position, prepared in self._replaying.pop(session, ()):
            if msg_id not in replayed and (since is None or position is None
                                           or position > since):
                session.conn.send_prepared(prepared)

    def _hold(self, targets, message: Message, prepared) -> list[Session]:
        """The targets not being replayed to; the others hold the message."""
        live = []
        for session in targets:
            held = self._replaying.get(session)
            if held is None:
                live.append(session)
            elif (len(held) < MAX_HELD
                  and held.bytes + len(message.frame) <= self.settings.max_buffered_bytes):
                held.append((message.id, position_of(message.frame), prepared))
                held.bytes += len(message.frame)
            else:  # it would rather reconnect than wait this long
                del self._replaying[session]
                session.conn.close(CLOSE_TRY_AGAIN, "too many messages during the resume")
        return live

    # -- server-side commands -----------------------------------------------

    def run(self, command: Command) -> Deferred:
        """Run ``command`` on every engine (through the broker); the merged result."""
        return self.run_each(command).addCallback(commands.merge)

    def run_each(self, command: Command) -> Deferred:
        """Run ``command`` on every engine; the list of their results."""
        return self.broker.command(command)

    def perform(self, command: Command) -> dict[str, Any] | Deferred:
        """Run a command here; its result once the subscriptions it made stand."""
        result = getattr(self, f"_cmd_{command.name}")(**command.args)
        if not self._pending:
            return result
        d = DeferredList(list(self._pending.values()), consumeErrors=True)
        return d.addCallback(lambda _: result)

    def _targets(self, user: str | None = None, session: str | None = None) -> list[Session]:
        if user is not None:
            return list(self.registry.user_sessions(user))
        found = self.registry.get(session)
        return [found] if found is not None else []

    def _tell(self, session: Session, op: str, group: str, reason: str) -> None:
        self.reply(session, encode({"op": op, "group": group, "reason": reason}))

    def _cmd_join(self, group: str, **target: str) -> dict[str, Any]:
        joined = refused = 0
        for session in self._targets(**target):
            if group in session.groups:
                continue
            if not self._may_join(session, group):
                refused += 1
                continue
            self.registry.join(session, group)
            self._tell(session, "joined", group, "server")
            self._announce("joined", session, group)
            joined += 1
        return {"sessions": joined, "refused": refused}

    def _cmd_leave(self, group: str, **target: str) -> dict[str, Any]:
        left = 0
        for session in self._targets(**target):
            if self._depart(session, group):
                self._tell(session, "left", group, "server")
                left += 1
        return {"sessions": left}

    def _cmd_destroy(self, group: str) -> dict[str, Any]:
        members = list(self.registry.group_members(group))
        for session in members:  # every member goes: no one is told of the others
            self.joins.left(session, group)
            self.registry.leave(session, group)
            self._tell(session, "left", group, "destroyed")
        return {"sessions": len(members)}

    def _cmd_tag(self, tag: str, **target: str) -> dict[str, Any]:
        return {"sessions": sum(self.registry.tag(s, tag) for s in self._targets(**target))}

    def _cmd_untag(self, tag: str, **target: str) -> dict[str, Any]:
        return {"sessions": sum(self.registry.untag(s, tag) for s in self._targets(**target))}

    def _cmd_group(self, group: str) -> dict[str, Any]:
        return {"members": [self._member(s, group) for s in self.registry.group_members(group)]}

    def _member(self, session: Session, group: str) -> dict[str, Any]:
        data = self.joins.data(session, group)
        member = {"session": session.id, "user": session.user}
        return member if data is None else {**member, "data": data}

    def _cmd_presence(self, group: str) -> dict[str, Any]:
        return self.joins.presence(self.registry.group_members(group), group)

    def _cmd_user(self, user: str) -> dict[str, Any]:
        return {"sessions": [s.describe() for s in self.registry.user_sessions(user)]}

    def _cmd_sessions(self, user: str | None = None, limit: int = SESSIONS_SHOWN
                      ) -> dict[str, Any]:
        """Up to ``limit`` sessions (of ``user``, or of everyone) and how many there are."""
        found = (self.registry.user_sessions(user) if user is not None
                 else self.registry.sessions.values())
        return {"sessions": [s.describe() for s, _ in zip(found, range(limit))],
                "total": len(found)}

    def _cmd_publish(self, to: Any, data: Any) -> Deferred:
        """Publish one message from here (the console's ``push``): ``{"id": ...}``."""
        address, data = parse_push({"to": to, "data": data}, self.settings.max_targets)
        return self.publish(address, data).addCallback(lambda msg_id: {"id": msg_id})

    def _cmd_groups(self) -> dict[str, Any]:
        return {"groups": {g: len(m) for g, m in self.registry.groups.members.items()}}

    def _cmd_kick(self, reason: str = "kicked by the server", **target: str) -> dict[str, Any]:
        sessions = self._targets(**target)
        for session in sessions:
            session.conn.close(CLOSE_KICKED, reason)
        return {"sessions": len(sessions)}

    def _cmd_stats(self) -> dict[str, Any]:
        return {"worker": self.ids.owner,
                "sessions": len(self.registry),
                "users": len(self.registry.users.members),
                "groups": len(self.registry.groups.members),
                **{k: v for k, v in self.counters.items()}}

    def _cmd_metrics(self) -> dict[str, Any]:
        """This engine's raw figures for ``GET /metrics`` (``metrics.engine_values``)."""
        return metrics.engine_values(self)
