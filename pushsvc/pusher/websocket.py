"""The Pusher WebSocket endpoint ``/app/{key}?protocol=7`` (docs/pusher.md).

A Pusher connection is one of pushsvc's own connections (the class the
factory builds, ``websocket.PushServerProtocol``: its flow watch, message
rate, fragments, per-address count, shutdown and drain) speaking another
dialect: it has an engine session like every client, whose groups are the
channels it is subscribed to, and only its frames differ:

- what the client sends is served by ``serving.PusherServing``, never by
  the engine's own ops;
- what the engine delivers is a ``msg`` frame prepared once for every
  recipient; a Pusher connection writes that message's Pusher frame instead,
  made once per message and channel (``dialect.Translation``), and writes
  nothing for a message whose ``socket_id`` is its own;
- of the engine's other frames it writes ``error`` as ``pusher:error`` and
  drops the rest (``welcome``, ``ok``, ``joined``...);
- the engine's close codes become Pusher's (``CLOSE_CODES``), so that
  pusher-js reconnects, backs off or gives up as each asks;
- liveness is ``pusher:ping`` after ``ping_interval`` of silence, and a close
  with 4201 after ``ping_timeout``.

``PusherEdge`` is what the ``/app`` resource upgrades with: it builds these
connections for the process's WebSocket factory, admits them (app key,
protocol version, the app's switch, its ``allowed_origins`` and connection
cap, counted across the cluster: ``capacity.py``) and gives them socket
ids.  The origins are checked once the WebSocket is open, as Reverb does: a
page from another origin gets ``pusher:error`` 4009 and the close with it,
so pusher-js gives up instead of retrying a refused handshake forever (the
process-wide ``http.allowed_origins`` has refused it before the upgrade,
with 403, as at ``/ws``).
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.logger import Logger

from ..protocol import (CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_KICKED, CLOSE_POLICY,
                        CLOSE_RESTART, CLOSE_TRY_AGAIN)
from ..websocket import OPEN, prepare_frame
from .apps import Apps, PusherApp
from .capacity import Capacity
from .dialect import (Translation, channel_for, groups_of, native_message, pusher_error,
                      pusher_frame)
from .names import (ACTIVITY_TIMEOUT, APP_DISABLED, APP_NOT_FOUND, OVER_CAPACITY,
                    PONG_NOT_RECEIVED, RECONNECT, UNAUTHORIZED, PusherError,
                    new_socket_id, parse_connect)
from .protocol import connection_established, error, ping
from .serving import PusherServing
from .session import PusherSession
from .webhook_sender import WebhookSender

_log = Logger()

# The engine's close codes, as Pusher's: pusher-js reconnects at once after
# 4200, backs off after 4100, gives up after 4009 -- and would insist on TLS
# after pushsvc's 4000 (a kick).
CLOSE_CODES = {
    CLOSE_GOING_AWAY: RECONNECT, CLOSE_RESTART: RECONNECT, CLOSE_INTERNAL: RECONNECT,
    CLOSE_TRY_AGAIN: OVER_CAPACITY, CLOSE_POLICY: UNAUTHORIZED, CLOSE_KICKED: UNAUTHORIZED,
}
_PUSHER_HEAD = b'{"event":'


def payload_of(prepared) -> bytes:
    """The text a prepared (unmasked) frame carries, without its header."""
    frame = prepared.payloadHybi
    length = frame[1] & 0x7F
    return frame[2 if length < 126 else 4 if length == 126 else 10:]


class PusherProtocol:
    """What a Pusher connection changes of the factory's connection class
    (``PusherEdge`` makes the class with both)."""

    edge: "PusherEdge" = None
    pusher: PusherSession | None = None
    deadline = None  # the DelayedCall closing it unless it signs in in time

    def onOpen(self):
        path, params = self.http_request_path, self.http_request_params or {}
        self.http_request_params = None  # ?token= and ?resume= are pushsvc's own
        try:
            app = self.edge.admit(path, params, self.websocket_origin or None)
        except PusherError as e:
            self.refuse(e)
            return
        super().onOpen()
        if self.session is not None:
            self.edge.opened(self, app)

    def refuse(self, e: PusherError) -> None:
        """``pusher:error`` with the close code, then the close with it."""
        self.sendMessage(error(e.message, e.code))
        self.close(e.code, e.message)
        self._leave_engine()

    def onMessage(self, payload, isBinary):
        if self.session is None or self.pusher is None or self.state != OPEN:
            return
        if not self._within_rate(payload, isBinary):
            return
        if isBinary:
            self.send_frame(error("binary frames are not supported; send JSON text"))
            return
        try:
            self.pusher.app = self.edge.current(self.pusher.app)
        except PusherError as e:
            self.refuse(e)
            return
        try:
            self.edge.serving.handle(self, payload)
        except Exception:
            _log.failure("error serving a Pusher frame from session {session} (user {user})",
                         session=self.session.id, user=self.session.user)
            self.send_frame(error("internal error; the request was not done"))

    def _leave_engine(self):
        session, pusher = self.session, self.pusher
        super()._leave_engine()
        if session is not None and pusher is not None:
            self.signed_in()
            self.edge.closed(pusher)

    def signed_in(self) -> None:
        """No sign-in deadline any more (``PusherEdge.opened``)."""
        deadline, self.deadline = self.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def close(self, code: int, reason: str) -> None:
        super().close(CLOSE_CODES.get(code, code), reason)

    def check_alive(self, now: float) -> None:
        settings = self.factory.settings
        idle = now - self.last_seen
        if idle >= settings.ping_timeout:
            self.close(PONG_NOT_RECEIVED, "pong reply not received")
            self._leave_engine()
        elif idle >= settings.ping_interval and self.state == OPEN:
            self.send_frame(ping())

    # -- what the engine writes ---------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        """A reply: Pusher's frames as they are, the engine's translated."""
        if not frame.startswith(_PUSHER_HEAD):
            frame = self.edge.translate_reply(frame, self)
            if frame is None:
                return
        super().send_prepared(prepare_frame(frame))

    def _translated(self, prepared):
        """The prepared Pusher frame of a delivered message (its frame
        ``prepared``), or None (not a ``msg``; this connection's own event).
        The edge's ``Translation`` makes it once for all its recipients."""
        translation = self.edge.translation
        if prepared is not translation.key:
            translation.use(prepared, payload_of(prepared))
        session = self.session
        return translation.frame_for(self.pusher, session.groups if session else ())

    def send_prepared(self, prepared) -> None:
        """A delivered message: its Pusher frame, made once for all."""
        translated = self._translated(prepared)
        if translated is not None:
            super().send_prepared(translated)

    def send_now(self, prepared) -> None:
        """A delivered message alone in its turn: written at once, unless
        frames wait (``PushServerProtocol.send_now``)."""
        translated = self._translated(prepared)
        if translated is None:
            return
        if self._out is not None or self._paused:
            super().send_prepared(translated)
        else:
            super().send_now(translated)


class PusherEdge:
    """The Pusher endpoint of one process, for ``factory`` (the WebSocket
    factory of pushsvc's own connections): what ``/app`` upgrades with.

    ``apps()`` gives the configured apps (re-read after a reload);
    ``webhooks`` sends the process's Pusher webhooks.  Socket
    ids are ``"<worker>.<counter>"`` with 30 random bits drawn at start for
    ``worker`` (``names.new_socket_id``).  ``capacity`` counts each app's
    connections against its ``max_connections``, the other engines' as the
    broker exchanges them every ``limits.count_interval`` (``capacity.py``).
    """

    def __init__(self, engine, factory, apps: Callable[[], Apps]):
        self.engine = engine
        self.factory = factory
        self.apps = apps
        self.webhooks = WebhookSender(factory.reactor, apps, engine.counters, engine.clock)
        self.serving = PusherServing(engine, self.webhooks)
        self.worker = int.from_bytes(os.urandom(4), "big") & 0x3FFFFFFF
        self.count = 0
        self.capacity = Capacity(lambda: any(app.max_connections for app in apps()))
        engine.broker.share_counts(self.capacity.report, self.capacity.learned,
                                   engine.settings.count_interval)
        self.translation = Translation(prepare_frame)
        self.protocol = type("PusherServerProtocol", (PusherProtocol, factory.protocol), {})

    # The per-address slot of the connection being upgraded (http/upgrade.py).
    next_slot = property(lambda self: self.factory.next_slot,
                         lambda self, slot: setattr(self.factory, "next_slot", slot))

    def buildProtocol(self, addr):
        conn = self.protocol()
        conn.factory = self.factory
        conn.edge = self
        return conn

    # -- connections ------------------------------------------------------------

    def admit(self, path: str, params: dict[str, list[str]],
              origin: str | None = None) -> PusherApp:
        """The app of a new connection (its handshake's ``Origin``, None for
        none); PusherError with the close code."""
        key = parse_connect(path, params)
        app = self.apps().by_key(key)
        if app is None:
            raise PusherError(APP_NOT_FOUND, f"no app with the key {key[:128]!r}")
        if not app.enabled:
            raise PusherError(APP_DISABLED, f"app {app.id} is disabled")
        if not app.allowed_origins.allows(origin):
            self.factory.counters["refused_origin"] += 1
            raise PusherError(UNAUTHORIZED, f"Origin not allowed: {origin[:200]!r} is not "
                                            f"in the allowed_origins of app {app.id}")
        if not self.capacity.admits(app.id, app.max_connections):
            self.factory.counters["refused_full"] += 1
            raise PusherError(OVER_CAPACITY, f"app {app.id} has its {app.max_connections} "
                                             "connections; try again later")
        return app

    def current(self, app: PusherApp) -> PusherApp:
        """``app`` as the settings have it now (after a reload: its secret,
        switches and limits); PusherError 4001 or 4003 when a reload removed
        or disabled it."""
        now = self.apps().by_id(app.id)
        if now is None or now.key != app.key:
            raise PusherError(APP_NOT_FOUND, f"app {app.id} is no longer configured")
        if not now.enabled:
            raise PusherError(APP_DISABLED, f"app {app.id} is disabled")
        return now

    def opened(self, conn, app: PusherApp) -> None:
        """``conn`` has its engine session: its socket id, then the first frame."""
        engine, session = self.engine, conn.session
        self.count += 1
        self.capacity.opened(app.id)
        settings = engine.settings
        conn.pusher = PusherSession(app, new_socket_id(self.count, self.worker),
                                    settings.namespace_separator)
        engine.auth.closed(session)  # no pushsvc auth timeout: Pusher's rules apply
        if app.user_authentication:
            conn.deadline = engine.clock.callLater(settings.auth_timeout, self._no_signin,
                                                   conn, session)
        timeout = max(1, min(ACTIVITY_TIMEOUT, int(settings.ping_interval)))
        engine.reply(session, connection_established(conn.pusher.socket_id, timeout))

    def _no_signin(self, conn, session) -> None:
        conn.deadline = None
        if not self.engine.gone(session) and not conn.pusher.signed_in:
            conn.send_frame(error("user authentication is required: send pusher:signin",
                                  UNAUTHORIZED))
            conn.close(UNAUTHORIZED, "not signed in in time")

    def closed(self, pusher: PusherSession) -> None:
        """A connection's session has left the engine."""
        self.capacity.closed(pusher.app.id)
        self.serving.gone(pusher)

    # -- frames -----------------------------------------------------------------

    def translate_reply(self, frame: bytes, conn) -> bytes | None:
        """A frame the engine sends to ``conn`` alone, in Pusher's dialect."""
        message = native_message(frame)
        if message is None:
            return pusher_error(frame)
        if message.get("socket_id") == conn.pusher.socket_id:
            return None
        session = conn.session
        return pusher_frame(message, channel_for(groups_of(message["to"]), conn.pusher,
                                                 session.groups if session else ()))
