"""The engine of one process: sessions, the serving of client frames in
order, replies, and messages in and out.  The concerns it hands requests to
live beside it: ``auth`` (who a session is), ``groups`` (membership,
presence, member events), ``sending`` (a client's ``send``), ``resume``
(replays), ``perform`` (server-side commands), ``hooks`` (the application).

A session's life: ``open`` registers it (refused past ``max_connections``;
its auth timeout starts; ``on_connect`` runs before its frames are served);
``handle`` serves its frames in order, each reply through ``reply``;
``close`` makes every part forget it (registry and memberships, joins,
reply gates, waiting frames, replays and mail, auth timers) and runs
``on_disconnect``.  The parts keep what they know of a session in their own
tables, keyed by the session, and forget it there (``joins.gone``,
``replays.closed``, ``auth.closed``).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import commands, metrics
from ..counters import new_counters
from ..app import App, SessionInfo
from ..broker.interface import IReceiver
from ..frames import error_frame, message_frame, reply_frame, welcome_frame
from ..ids import IdMaker
from ..joins import Joins
from ..namespaces import Namespaces
from ..proxy import Backends
from ..protocol import CLOSE_POLICY, UNAUTHORIZED, Address, ProtocolError, Request
from ..reloadable import IReloadable
from ..routing import channels, recipients, session_channels, worker_channel
from ..sessions import Session, SessionRegistry
from ..tokens import KeyFileError, TokenVerifier
from ..wire.values import Command, Message
from .auth import Auth
from .connection import Overloaded
from .groups import Groups
from .hooks import Hooks
from .perform import Performer
from .resume import Replays
from .sending import Sending
from .serving import Serving

_log = Logger()



@implementer(IReceiver, IReloadable)
class Engine:
    """Sessions, ops, delivery and commands for one process.

    ``prepare`` encodes a frame once for many connections (the WebSocket
    edge's); ``backend(url, settings, count, observe)`` makes each
    ``BackendProxy`` the [proxy] settings ask for (None: none, ``proxy.Backends``).
    """

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
        # A session's replies waiting for those subscriptions, or for its
        # earlier replies that wait (see ``reply``).
        self.gates: dict[Session, Deferred] = {}
        self.counters: Counter[str] = new_counters()  # the edges add to it too
        # The rest of what /metrics shows (pushsvc/metrics.py); the WebSocket
        # factory puts its set of open connections in ``connections``.
        self.meter = metrics.Meter()
        self.connections: set = set()
        self._keepalive = LoopingCall(self._check_alive)
        self._keepalive.clock = clock
        # The frames of sessions whose earlier request (or connect) is in the
        # application's hands: they are served in order once it is done.
        self.waiting: dict[Session, deque[bytes]] = {}
        # Client tokens: None when no key is configured (pushsvc/tokens.py).
        self.tokens: TokenVerifier | None = TokenVerifier.from_settings(settings)
        self.hooks = Hooks(self)
        self.auth = Auth(self)
        self.groups = Groups(self)
        self.sending = Sending(self)
        self.replays = Replays(self)
        self.performer = Performer(self)
        # The backend that decides joins and sends (the [proxy] settings).
        self.backends = Backends(backend, self._count_backend,
                                 lambda: self.meter.round_trip("proxy"))
        self.backends.configure(settings)
        self.joins = Joins(Namespaces.from_settings(settings), clock, lambda: self.tokens,
                           self.hooks.get, self.hooks.call, self.groups.expired,
                           self.backends)
        self.serving = Serving(self, {
            "ping": self._ping, "auth": self.auth.auth, "join": self.groups.join,
            "leave": self.groups.leave, "send": self.sending.send,
            "resume": self.replays.resume, "presence": self.groups.presence})

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        self.broker.timed(self.meter.observer("redis"))  # only Redis has round trips
        self.broker.attach(self)
        self._interest(worker_channel(self.ids.owner), True)
        self._keepalive.start(self.settings.ping_interval, now=False).addErrback(
            lambda f: _log.failure("the keepalive loop stopped", f))

    def stop(self) -> None:
        if self._keepalive.running:
            self._keepalive.stop()
        self.backends.close()

    def configure(self, settings) -> None:
        """Use ``settings`` from now on (a reload): limits, policy, namespaces,
        the backend, timeouts, token keys (the public key file is read again)."""
        required = self.settings.auth_mode == "required"
        self.backends.configure(settings)
        self.settings = settings
        self.joins.namespaces = Namespaces.from_settings(settings)
        self._keepalive.interval = settings.ping_interval
        try:
            self.tokens = TokenVerifier.from_settings(settings)
        except KeyFileError as e:  # it was readable when the settings were checked
            _log.error("reload: the token keys stay as they were: {error}", error=str(e))
        if required != (settings.auth_mode == "required"):
            self.auth.mode_changed()

    def set_app(self, app: App | None) -> None:
        """Use ``app``'s hooks (None: none) for every event from now on.

        Sessions keep their state; a hook already running finishes with the
        code it started with.
        """
        self.hooks.app = app

    def _count_backend(self, result: str) -> None:
        self.counters[f"proxy_{result}"] += 1

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

    def leeway(self) -> float:
        """Seconds of slack past a token's ``exp`` (``auth.leeway``)."""
        return self.tokens.leeway if self.tokens is not None else 0.0

    # -- sessions ---------------------------------------------------------

    def open(self, conn) -> Session:
        """Register a new connection; raises Overloaded past max_connections."""
        if len(self.registry) >= self.settings.max_connections:
            self.counters["refused_full"] += 1
            raise Overloaded()
        session = Session(self.ids.session_id(), conn)
        self.registry.add(session)
        self.auth.opened(session)
        if self.hooks.get("on_connect") is not None:
            # After the welcome the caller sends; its frames wait meanwhile.
            self.waiting[session] = deque()
            self.clock.callLater(0, self._connect, session)
        return session

    def close(self, session: Session) -> None:
        """Forget a session: it leaves every group, tag and user map."""
        hook = self.hooks.get("on_disconnect")
        info = None if hook is None else SessionInfo.of(session)
        farewells = [] if self.gone(session) else self.groups.farewells(session)
        self.joins.gone(session)
        self.registry.remove(session)
        self.groups.publish_all(farewells)
        self.waiting.pop(session, None)
        self.gates.pop(session, None)
        self.replays.closed(session)
        self.auth.closed(session)
        if info is not None:
            # Hooks.call has logged a failure; nobody is left to answer.
            self.hooks.call("on_disconnect", hook, info).addErrback(lambda _: None)

    def _connect(self, session: Session) -> None:
        if self.gone(session):
            return
        hook = self.hooks.get("on_connect")
        if hook is None:  # the app changed meanwhile
            self.serving.serve_waiting(None, session)
            return
        d = self.hooks.call("on_connect", hook, SessionInfo.of(session))
        d.addErrback(self.serving.request_failed, session, None)
        d.addCallback(self.serving.serve_waiting, session)

    def gone(self, session: Session) -> bool:
        """Whether ``session`` has closed (it is not the registered one)."""
        return self.registry.get(session.id) is not session

    def authenticate_url(self, session: Session, token: str) -> None:
        """A token given on the /ws URL (``?token=``), served as an ``auth``."""
        self.auth.from_url(session, token)

    def hold(self, session: Session) -> None:
        """Hold live messages for ``session`` until its ``resume`` (``?resume=1``)."""
        self.replays.hold(session)

    # -- replies ------------------------------------------------------------

    def answer(self, session: Session, data: Any) -> str:
        """Write ``data`` to ``session`` alone as a ``msg`` from the server, in
        order with the replies to its requests; the message id."""
        message = self.message(Address(session=(session.id,)), data)
        self.reply(session, message.frame)
        return message.id

    def welcome(self, session: Session, ref: Any = None) -> bytes:
        epoch = self.broker.epoch if self.settings.ttl > 0 else None
        return welcome_frame(session.id, session.user, epoch, ref)

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
        gate = self.gates.get(session)
        if gate is not None:
            waits.append(gate)
        if not waits:
            session.conn.send_frame(frame)
            return
        gate = self.gates[session] = DeferredList(waits, consumeErrors=True)
        gate.addCallback(self._release, session, gate, frame)

    def _release(self, _, session: Session, gate: Deferred, frame: bytes) -> None:
        if self.gates.get(session) is gate:
            del self.gates[session]
        session.conn.send_frame(frame)

    def after_replies(self, session: Session, action, *args) -> None:
        """Do ``action(*args)`` once the replies held for ``session`` are sent."""
        gate = self.gates.get(session)
        if gate is None:
            action(*args)
            return

        def then(result):
            action(*args)
            return result
        gate.addCallback(then)

    def ok(self, session: Session, request: Request, **fields: Any) -> None:
        """``ok`` with ``fields``, when the request carried a ``ref``."""
        if request.ref is not None:
            self.reply(session, reply_frame("ok", request.ref, **fields))

    def _ping(self, session: Session, request: Request) -> None:
        self.reply(session, reply_frame("pong", request.ref))

    def refuse(self, session: Session, error: ProtocolError, ref: Any) -> None:
        """Answer a request with ``error``; ``unauthorized`` also closes."""
        self.reply(session, error_frame(error, ref))
        if error.code == UNAUTHORIZED:
            self.after_replies(session, session.conn.close, CLOSE_POLICY, error.message)

    # -- client frames ----------------------------------------------------

    def handle(self, session: Session, text: bytes) -> None:
        """Serve one client text frame, in order with the session's others
        (``serving.Serving``); every reply goes to ``session.conn``."""
        self.serving.handle(session, text)

    # -- messages ---------------------------------------------------------

    def message(self, to: Address, data: Any, sender: dict[str, Any] | None = None,
                event: str | None = None) -> Message:
        """A new message with its id and its frame, encoded once; ``event``
        names it for Pusher clients (docs/pusher.md).

        Raises ``too_large`` when ``data`` is over ``max_message_bytes``.
        """
        msg_id = self.ids.message_id()
        to_text = to.to_text()
        frame = message_frame(msg_id, to, data, sender, self.settings.max_message_bytes,
                              to_text, event)
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
                store: bool = False, event: str | None = None) -> Deferred:
        """Build and send a message; a Deferred firing with its id."""
        return self.send(self.message(to, data, sender, event), store)

    def deliver(self, message: Message, alone: bool = False,
                exclude: Address | None = None) -> None:
        """Write ``message`` to each local session it is for, encoded once.

        ``alone``: no other message is delivered in this reactor turn, so each
        connection writes it at once instead of at the end of the turn.
        ``exclude``: the sessions this address selects had it already.
        """
        targets = recipients(self.registry, message.to)
        if exclude is not None and targets:
            targets = set(targets).difference(recipients(self.registry, exclude))
        if not targets:
            return
        prepared = self.prepare(message.frame)
        if self.replays.held:
            targets = self.replays.live(targets, message, prepared)
        if alone:
            for session in targets:
                session.conn.send_now(prepared)
        else:
            for session in targets:
                session.conn.send_prepared(prepared)
        self.counters["delivered"] += len(targets)
        self.meter.messages_out[metrics.address_kind(message.to)] += len(targets)

    # -- server-side commands -----------------------------------------------

    def run(self, command: Command) -> Deferred:
        """Run ``command`` on every engine (through the broker); the merged result."""
        return self.run_each(command).addCallback(commands.merge)

    def run_each(self, command: Command) -> Deferred:
        """Run ``command`` on every engine; the list of their results."""
        return self.broker.command(command)

    def perform(self, command: Command) -> dict[str, Any] | Deferred:
        """Run a command here; its result once the subscriptions it made stand."""
        result = self.performer.perform(command)
        if not self._pending:
            return result
        d = DeferredList(list(self._pending.values()), consumeErrors=True)
        return d.addCallback(lambda _: result)
