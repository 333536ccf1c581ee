"""Who may join which group, and what members know of each other.

``Joins`` decides a client's ``join`` by the rules of the group's namespace
(``namespaces.JOIN_RULES``): the connection token's ``groups`` claim, a
subscription token, the backend proxy or the application's ``on_join`` hook.
It keeps what a join left behind for each session: the expiry of its
subscription tokens and the data the backend or the hook attached to the
member.  The engine does the joining; this module only decides and
remembers, and builds the presence answers and the member events.

Checks happen at join time only: nothing here runs per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed

from .app import Allow, Refused
from .frames import reply_frame
from .namespaces import Namespaces, granted
from .protocol import FORBIDDEN, ProtocolError, decode_json, encode
from .sessions import Session
from .tokens import TokenError

# Users one presence answer lists at most (the counts cover everyone).
PRESENCE_SHOWN = 1000


@dataclass(frozen=True, slots=True)
class Grant:
    """A join allowed: until when (a subscription token's ``exp``; None:
    for as long as the session stays) and the data attached to the member."""
    expires: float | None = None
    data: Any = None


class _Member:
    """What one session's join of one group left: its expiry timer and data."""

    __slots__ = ("timer", "data")

    def __init__(self):
        self.timer = None
        self.data = None


class Joins:
    """The join decisions and the member state of one engine.

    ``tokens()`` gives the current ``TokenVerifier`` (None: no keys),
    ``hook(name)`` the application's hook (None: none), ``call`` runs a hook
    as the engine does (``Hooks.call``), ``expired(session, group)`` is
    called when a subscription token runs out, and ``backends.join`` is the
    backend asked in ``proxy`` namespaces (None: none; ``proxy.Backends``).
    """

    def __init__(self, namespaces: Namespaces, clock, tokens: Callable[[], Any],
                 hook: Callable[[str], Any], call: Callable[..., Deferred],
                 expired: Callable[[Session, str], None], backends=None):
        self.namespaces = namespaces
        self.clock = clock
        self.tokens = tokens
        self.hook = hook
        self.call = call
        self.expired = expired
        self.backends = backends
        self.claims: dict[Session, tuple[str, ...]] = {}   # a token's groups claim
        self.payloads: dict[Session, dict[str, Any]] = {}  # the token's claims, for the proxy
        self._members: dict[Session, dict[str, _Member]] = {}

    # -- deciding ------------------------------------------------------------

    def decide(self, session: Session, group: str, token: str | None, data: Any,
               info: Callable[[], Any]) -> Deferred:
        """A Deferred firing with the ``Grant`` for ``session`` to join
        ``group``, or failing with ``forbidden`` and the reason.  ``info``
        makes the hook's view of the session."""
        namespace = self.namespaces.of(group)
        if namespace.join == "server":
            raise ProtocolError(FORBIDDEN, f"only the server joins sessions to group "
                                           f"'{group}' (namespace '{namespace.name}')")
        if token is not None:
            return succeed(Grant(self._subscription(session, group, token)))
        if namespace.join == "open" or granted(self.claims.get(session, ()), group):
            return succeed(Grant())
        proxy = None if self.backends is None else self.backends.join
        if namespace.join == "proxy" and proxy is not None:
            return proxy.ask({
                "event": "join", "session": session.id, "user": session.user,
                "group": group, "namespace": namespace.name,
                "claims": self.payloads.get(session), "data": data,
            }).addCallback(_verdict, group)
        if namespace.join == "hook":
            hook = self.hook("on_join")
            if hook is None:
                raise ProtocolError(FORBIDDEN, f"no application decides who joins group "
                                               f"'{group}' (it has no on_join hook)")
            return self.call("on_join", hook, info(), group, data, result=_hook_answer)
        raise ProtocolError(FORBIDDEN, f"joining group '{group}' needs a subscription "
                                       "token or a token whose 'groups' claim names it")

    def _subscription(self, session: Session, group: str, token: str) -> float | None:
        verifier = self.tokens()
        if verifier is None:
            raise ProtocolError(FORBIDDEN, "subscription tokens are not configured on "
                                           "this server")
        try:
            return verifier.verify_subscription(token, session.user, group,
                                                self.clock.seconds())
        except TokenError as e:
            raise ProtocolError(FORBIDDEN, str(e))

    def ask_send(self, session: Session, to: dict[str, Any], data: Any) -> Deferred:
        """The backend's (``backends.send``) answer to a client's send to a
        ``proxy`` group: a Deferred firing with the data to send (the backend
        may replace it), or failing with ``forbidden``."""
        document = {"event": "send", "session": session.id, "user": session.user,
                    "to": to, "claims": self.payloads.get(session), "data": data}

        def decided(verdict):
            if not verdict.allow:
                raise ProtocolError(FORBIDDEN, verdict.reason or "refused by the backend")
            return data if verdict.data is None else verdict.data
        return self.backends.send.ask(document).addCallback(decided)

    # -- members -------------------------------------------------------------

    def admitted(self, session: Session, group: str, grant: Grant, leeway: float) -> None:
        """Remember what ``grant`` says of ``session`` in ``group``: its data,
        and its expiry (a later grant replaces an earlier one's)."""
        member = self._members.setdefault(session, {}).setdefault(group, _Member())
        if grant.data is not None:
            member.data = grant.data
        if member.timer is not None and member.timer.active():
            member.timer.cancel()
        member.timer = None
        if grant.expires is not None:
            delay = max(0.0, grant.expires + leeway - self.clock.seconds())
            member.timer = self.clock.callLater(delay, self.expired, session, group)

    def data(self, session: Session, group: str) -> Any:
        """The data attached to ``session`` as a member of ``group``, or None."""
        member = self._members.get(session, {}).get(group)
        return None if member is None else member.data

    def left(self, session: Session, group: str) -> None:
        """``session`` is no longer in ``group``: forget its member state."""
        members = self._members.get(session)
        member = None if members is None else members.pop(group, None)
        if member is not None and member.timer is not None and member.timer.active():
            member.timer.cancel()
        if members is not None and not members:
            del self._members[session]

    def gone(self, session: Session) -> None:
        """``session`` has closed: forget everything about it."""
        for group in list(self._members.get(session, ())):
            self.left(session, group)
        self.claims.pop(session, None)
        self.payloads.pop(session, None)

    def is_empty(self) -> bool:
        return not (self._members or self.claims or self.payloads)

    # -- what members see ----------------------------------------------------

    def presence(self, members, group: str) -> dict[str, Any]:
        """One engine's part of a group's presence (``commands.merge`` adds
        the parts up): sessions, anonymous ones, and each user's session
        count and data (as JSON text, so that merging never mixes two)."""
        users: dict[str, dict[str, Any]] = {}
        anonymous = 0
        for session in members:
            if session.user is None:
                anonymous += 1
                continue
            entry = users.get(session.user)
            if entry is None:
                if len(users) >= PRESENCE_SHOWN:
                    continue
                entry = users[session.user] = {"sessions": 0}
            entry["sessions"] += 1
            data = self.data(session, group)
            if data is not None:
                entry["data"] = encode(data).decode("utf-8", "surrogatepass")
        return {"sessions": len(members), "anonymous": anonymous, "users": users}

    def event(self, op: str, session: Session, group: str) -> bytes | None:
        """The ``joined``/``left`` frame for the other members of ``group``,
        or None when its namespace sends no events."""
        if not self.namespaces.of(group).events:
            return None
        fields: dict[str, Any] = {"group": group, "session": session.id,
                                  "user": session.user}
        data = self.data(session, group)
        if data is not None:
            fields["data"] = data
        return reply_frame(op, None, **fields)


def presence_frame(result: dict[str, Any], group: str, ref: Any) -> bytes:
    """The ``presence`` reply from the merged parts of every engine."""
    users = {}
    for user, entry in sorted(result.get("users", {}).items())[:PRESENCE_SHOWN]:
        shown: dict[str, Any] = {"sessions": entry["sessions"]}
        if "data" in entry:
            shown["data"] = decode_json(entry["data"])
        users[user] = shown
    fields: dict[str, Any] = {"group": group, "sessions": result.get("sessions", 0),
                              "anonymous": result.get("anonymous", 0), "users": users}
    if len(result.get("users", {})) > len(users):
        fields["more"] = True
    return reply_frame("presence", ref, **fields)


def _verdict(verdict, group: str) -> Grant:
    if not verdict.allow:
        raise ProtocolError(FORBIDDEN, verdict.reason or
                            f"the backend refused to let you join group '{group}'")
    return Grant(data=verdict.data)


def _hook_answer(outcome: Any) -> Grant:
    if outcome is None or outcome is True:
        return Grant()
    if outcome is False:
        raise Refused()
    if isinstance(outcome, Allow):
        return Grant(data=outcome.data)
    raise TypeError(f"on_join returned {outcome!r}; expected None, True, False or Allow")
