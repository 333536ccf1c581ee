"""Serving a Pusher connection's frames with the engine: subscriptions are
group joins, client events are messages to the group, the member list is
pushsvc's presence, and a user's first and last connection in a presence
channel are counted by the broker (``IBroker.member``), which tells one
process of each (``presence.Announcer`` announces it).  The rules are
``session.PusherSession``'s; this module does what they allow, through the
engine (which it shares with pushsvc's own clients).

Every answer goes through ``engine.reply``, so it keeps its order with the
others and waits for the broker subscriptions of the session: once a client
has ``pusher_internal:subscription_succeeded``, an event triggered on the
channel reaches it, on whichever worker or node it is triggered.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..joins import Grant
from ..protocol import ProtocolError
from ..wire.values import Command
from .dialect import event_message
from .events import webhook_event
from .names import PRESENCE, PusherError
from .presence import Announcer, members
from .protocol import (ClientFrame, error, parse_frame, pong, signin_success,
                       subscription_error, subscription_succeeded)
from .session import PusherSession, Subscription

_log = Logger()


class PusherServing:
    """The Pusher frames of every Pusher connection of one engine."""

    def __init__(self, engine, webhooks=None):
        self.engine = engine
        self.webhooks = webhooks  # a WebhookSender: member and client events
        self.announcer = Announcer(self._send, engine.ids.message_id,
                                   lambda: engine.settings.max_message_bytes, webhooks)
        # What the broker finds on its own (Redis: a dead node's members).
        engine.broker.on_member = self._changed

    def handle(self, conn, payload: bytes) -> None:
        """Serve one text frame of ``conn`` (a Pusher connection with its
        ``session`` and ``pusher`` state); every answer goes to it."""
        pusher: PusherSession = conn.pusher
        frame = None
        try:
            frame = parse_frame(payload, pusher.app.max_event_bytes,
                                pusher.app.max_channel_name)
            getattr(self, "do_" + frame.event.partition("-")[0].replace(":", "_"))(
                conn, pusher, frame)
        except PusherError as e:
            self.refuse(conn.session, frame, e.message, e.code)
        except ProtocolError as e:  # over a server limit
            self.refuse(conn.session, frame, e.message)

    def refuse(self, session, frame: ClientFrame | None, message: str,
               code: int | None = None) -> None:
        """``pusher:subscription_error`` for a subscription, else
        ``pusher:error`` with ``code`` (None, or 4301: neither closes)."""
        if frame is not None and frame.event == "pusher:subscribe":
            self.engine.reply(session, subscription_error(frame.channel, message))
        else:
            self.engine.reply(session, error(message, code))

    # -- the events ----------------------------------------------------------

    def do_pusher_ping(self, conn, pusher: PusherSession, frame: ClientFrame) -> None:
        self.engine.reply(conn.session, pong())

    def do_pusher_pong(self, conn, pusher: PusherSession, frame: ClientFrame) -> None:
        """The answer to our ``pusher:ping``: the edge noted the client's activity."""

    def do_pusher_subscribe(self, conn, pusher: PusherSession, frame: ClientFrame) -> None:
        engine, session = self.engine, conn.session
        sub = pusher.subscribe(frame)
        new = sub.group not in session.groups
        if new:
            if not engine.groups.may_join(session, sub.group):
                raise PusherError(None, f"a connection may be subscribed to at most "
                                        f"{engine.settings.max_groups_per_session} channels")
            if sub.user_id is not None:
                engine.registry.set_user(session, sub.user_id)
                engine.joins.admitted(session, sub.group, Grant(data=sub.user_info), 0.0)
            engine.registry.join(session, sub.group)
            engine.groups.announce("joined", session, sub.group)
        pusher.subscribed(sub)
        if sub.kind != PRESENCE:
            engine.reply(session, subscription_succeeded(sub.channel))
            return
        d = self._presence(sub.group)
        d.addCallback(self._listed, session, pusher, sub)
        d.addErrback(self._failed, session, sub.channel)
        if new:
            self._member(sub.group, sub.user_id, pusher.socket_id, True, sub.user_info)

    def _presence(self, group: str) -> Deferred:
        """The cluster-wide presence of ``group``."""
        return self.engine.run(Command("presence", {"group": group}))

    def _listed(self, result: dict[str, Any], session, pusher: PusherSession,
                sub: Subscription) -> None:
        engine = self.engine
        if engine.gone(session) or pusher.channels.get(sub.channel) != sub.group:
            return
        listed = members(result)
        listed.setdefault(sub.user_id, sub.user_info)
        engine.reply(session, subscription_succeeded(sub.channel, listed))

    def _member(self, group: str, user: str, socket_id: str, joined: bool,
                info: Any = None) -> None:
        """Count the connection ``socket_id`` in ``group`` (or out of it)
        where the broker orders every engine's (``IBroker.member``), and
        announce ``member_added`` (``member_removed``) when it was the
        user's first connection there (its last)."""
        def decided(changed: bool) -> None:
            if not changed:
                return
            if joined:
                self.announcer.added(group, user, info, socket_id)
            else:
                self.announcer.removed(group, user)

        def failed(failure) -> None:
            _log.warn("presence of {user} in {group} not counted now ({error}); "
                      "the broker counts it again when it can", user=user, group=group,
                      error=failure.getErrorMessage())
        d = self.engine.broker.member(group, user, socket_id, joined, info)
        d.addCallbacks(decided, failed).addErrback(
            lambda f: _log.failure("announcing {user} in {group} failed", f, user=user,
                                   group=group))

    def _changed(self, group: str, user: str, info: Any, joined: bool) -> None:
        """A transition the broker found (``IBroker.on_member``)."""
        self.announcer.changed(group, user, info, joined)

    def _failed(self, failure, session, channel: str) -> None:
        _log.failure("listing the members of {channel} failed (session {session})",
                     failure, channel=channel, session=session.id)
        if not self.engine.gone(session):
            self.engine.reply(session, subscription_error(
                channel, "internal error: the members could not be listed", 500,
                "InternalError"))

    def do_pusher_unsubscribe(self, conn, pusher: PusherSession,
                              frame: ClientFrame) -> None:
        group = pusher.unsubscribe(frame.channel)
        if group is None:
            return
        self.engine.groups.depart(conn.session, group)
        if frame.kind == PRESENCE and pusher.user is not None:
            self._member(group, pusher.user, pusher.socket_id, False)

    def gone(self, pusher: PusherSession) -> None:
        """A connection has closed (the engine has forgotten its session)."""
        if pusher.user is not None:
            for _, group in pusher.presence_channels():
                self._member(group, pusher.user, pusher.socket_id, False)

    def do_client(self, conn, pusher: PusherSession, frame: ClientFrame) -> None:
        session = conn.session
        group = pusher.client_event(frame)
        if group not in session.groups:  # the server took it out of the group
            raise PusherError(None, f"not subscribed to {frame.channel}")
        try:
            pusher.spend_client_event(frame, self.engine.clock.seconds())
        except PusherError:
            self.engine.counters["rate_limited"] += 1
            raise
        self._publish(group, frame.event, frame.data, pusher.socket_id,
                      {"session": session.id, "user": session.user})
        self._webhook(pusher.app, "client_event", frame.channel, event=frame.event,
                      data=frame.data, socket_id=pusher.socket_id,
                      user_id=pusher.user if frame.kind == PRESENCE else None)

    def do_pusher_signin(self, conn, pusher: PusherSession, frame: ClientFrame) -> None:
        engine, session = self.engine, conn.session
        user = pusher.signin(frame)
        engine.registry.set_user(session, user)
        conn.signed_in()
        engine.reply(session, signin_success(frame.user_data))

    # -- out -----------------------------------------------------------------

    def _webhook(self, app, name: str, channel: str, **fields) -> None:
        """Queue the webhook event ``name`` for the app's URLs that want it."""
        if self.webhooks is not None and app.webhooks:
            self.webhooks.emit(app, webhook_event(name, channel, **fields))

    def _publish(self, group: str, event: str, data: str, socket_id: str | None = None,
                 sender: dict[str, Any] | None = None) -> None:
        """Publish a Pusher event to ``group`` on every worker and node."""
        engine = self.engine
        self._send(event_message(engine.ids.message_id(), group, event, data,
                                 engine.settings.max_message_bytes, socket_id, sender))

    def _send(self, message) -> None:
        self.engine.send(message).addErrback(
            lambda f: _log.failure("publishing message {id} failed", f, id=message.id))
