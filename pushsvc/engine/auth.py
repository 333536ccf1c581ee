"""Who a session is: the ``auth`` op, connection tokens, their expiry, the
auth timeout of ``auth.mode = "required"``, and the mailbox handed over at
auth."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..app import Refused, SessionInfo
from ..protocol import (FORBIDDEN, TOO_MANY_GROUPS, UNAUTHORIZED, ProtocolError, Request,
                        encode, name)
from ..sessions import Session
from ..tokens import Claims, TokenError

_log = Logger()


class Auth:
    """The ``auth`` op and the timers that end sessions: a session's auth
    timeout, then its token's expiry (``timers``)."""

    def __init__(self, engine):
        self.engine = engine
        self.timers: dict[Session, IDelayedCall] = {}

    def opened(self, session: Session) -> None:
        """A new session: in "required" mode, its auth timeout starts."""
        engine = self.engine
        if engine.settings.auth_mode == "required":
            self.timers[session] = engine.clock.callLater(engine.settings.auth_timeout,
                                                          self.time_up, session)

    def closed(self, session: Session) -> None:
        """``session`` has closed: its timer stops."""
        self._stop_timer(session)

    def _stop_timer(self, session: Session) -> None:
        timer = self.timers.pop(session, None)
        if timer is not None and timer.active():
            timer.cancel()

    def from_url(self, session: Session, token: str) -> None:
        """A token given on the /ws URL (``?token=``): served as if the client
        had sent ``{"op":"auth","token":...}`` (without a ref) first."""
        self.engine.handle(session, encode({"op": "auth", "token": token}))

    def auth(self, session: Session, request: Request) -> Deferred | None:
        """``auth``: a token is checked first (when the server has keys), then
        the application's ``on_auth`` (given the token's user) decides."""
        engine = self.engine
        claims = None
        user = request.user
        if request.token is not None:
            if engine.tokens is not None:
                try:
                    claims = engine.tokens.verify(request.token, engine.clock.seconds())
                except TokenError as e:
                    raise ProtocolError(UNAUTHORIZED, str(e))
                user = claims.user
        elif engine.settings.auth_mode != "none":
            raise ProtocolError(UNAUTHORIZED, "this server needs a token: send auth "
                                              "with 'token', not 'user'")
        hook = engine.hooks.get("on_auth")
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
        return engine.hooks.call("on_auth", hook, SessionInfo.of(session), user,
                                 request.token, result=chosen).addCallback(
            lambda chosen_user: self._bind(session, request, chosen_user, claims))

    def _bind(self, session: Session, request: Request, user: str | None,
              claims: Claims | None = None) -> Deferred | None:
        """Bind ``session`` to ``user`` (None: a token nobody verified), join
        and tag it as a verified token's ``claims`` say, then hand it what the
        mailbox kept for the user."""
        engine = self.engine
        if engine.gone(session):  # it closed while the application decided
            return None
        if user is None:
            raise ProtocolError(UNAUTHORIZED,
                                "token authentication is not configured on this server")
        if session.user is not None and session.user != user:
            raise ProtocolError(FORBIDDEN, "this session is already bound to another user")
        if claims is not None:
            joining = sum(1 for g in claims.groups if g not in session.groups and "*" not in g)
            limit = engine.settings.max_groups_per_session
            if len(session.groups) + joining > limit:
                raise ProtocolError(TOO_MANY_GROUPS, "the token's groups would put the "
                                    f"session in more than {limit} groups")
        anonymous = session.user is None
        engine.registry.set_user(session, user)
        if claims is not None:
            # Server-side joins: the token's names, not its patterns (those
            # only let the session join what they match, see joins.py).
            engine.joins.claims[session] = claims.groups
            engine.joins.payloads[session] = claims.payload
            for group in claims.groups:
                if "*" not in group and engine.registry.join(session, group):
                    engine.groups.announce("joined", session, group)
            for tag in claims.tags:
                engine.registry.tag(session, tag)
        if anonymous or claims is not None:
            self._expire_at(session, None if claims is None else claims.expires)
        engine.reply(session, engine.welcome(session))
        d = engine.broker.mail(user).addErrback(_mail_failed, user, session)
        return d.addCallback(self._mailed, session, request)

    def _expire_at(self, session: Session, expires: float | None) -> None:
        """End ``session`` at ``expires`` (its token's ``exp``, plus the
        leeway), instead of at its auth timeout or at an earlier token's
        expiry; None: never."""
        engine = self.engine
        self._stop_timer(session)
        if expires is not None:
            delay = max(0.0, expires + engine.leeway() - engine.clock.seconds())
            self.timers[session] = engine.clock.callLater(delay, self.time_up, session)

    def time_up(self, session: Session) -> None:
        """The auth timeout (no user yet) or the token's expiry (no fresh token
        came): ``unauthorized``, then close with 1008."""
        engine = self.engine
        self.timers.pop(session, None)
        if engine.gone(session):
            return
        if session.user is None:
            if engine.settings.auth_mode != "required":
                return
            message = f"not authenticated within {engine.settings.auth_timeout:g} seconds"
        else:
            message = "token expired"
        _log.debug("closing session {session} (user {user}): {why}", session=session.id,
                   user=session.user, why=message)
        engine.refuse(session, ProtocolError(UNAUTHORIZED, message), None)

    def mode_changed(self) -> None:
        """After ``auth.mode`` changed to or from "required": start or stop the
        auth timeout of the sessions that have not authenticated."""
        engine = self.engine
        required = engine.settings.auth_mode == "required"
        for session in engine.registry.everyone():
            if session.user is not None:
                continue
            self._stop_timer(session)
            if required:
                self.timers[session] = engine.clock.callLater(engine.settings.auth_timeout,
                                                              self.time_up, session)

    def _mailed(self, messages: list, session: Session, request: Request) -> None:
        """Write the kept messages, then ``ok`` the ``auth``.  A later
        ``resume`` skips them."""
        for msg_id, frame in messages:
            self.engine.reply(session, frame)
        if messages and not self.engine.gone(session):  # a closed one is forgotten
            self.engine.replays.mailed.setdefault(session, set()).update(
                msg_id for msg_id, _ in messages)
        self.engine.ok(session, request)


def _mail_failed(failure: Failure, user: str, session: Session) -> list:
    _log.failure("reading the mailbox of user {user} failed (session {session})",
                 failure, user=user, session=session.id)
    return []
