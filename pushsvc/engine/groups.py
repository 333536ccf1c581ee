"""Group membership as the engine does it: the ``join``, ``leave`` and
``presence`` ops, leaving (by request, by the server, by an expired
subscription token, by closing) and the member events it publishes.  Who may
join is ``joins.Joins``' to decide."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from ..app import SessionInfo
from ..wire.values import Command, Message
from ..joins import Grant, presence_frame
from ..protocol import FORBIDDEN, TOO_MANY_GROUPS, Address, ProtocolError, Request, encode
from ..sessions import Session


class Groups:
    """The membership ops of one engine."""

    def __init__(self, engine):
        self.engine = engine

    def may_join(self, session: Session, group: str) -> bool:
        """False when joining ``group`` would pass max_groups_per_session."""
        return (group in session.groups
                or len(session.groups) < self.engine.settings.max_groups_per_session)

    def check_room(self, session: Session, group: str) -> None:
        if not self.may_join(session, group):
            raise ProtocolError(TOO_MANY_GROUPS, "a session may be in at most "
                                f"{self.engine.settings.max_groups_per_session} groups")

    def join(self, session: Session, request: Request) -> Deferred | None:
        """``join``: as the group's namespace allows (``Joins.decide``), and
        while it has room (``max_members``); ``ok`` once joined.  A join of a
        group the session is in renews its subscription token."""
        engine = self.engine
        group = request.group
        if group in session.groups and request.token is None:
            engine.ok(session, request)
            return None
        self.check_room(session, group)
        d = engine.joins.decide(session, group, request.token, request.data,
                                lambda: SessionInfo.of(session))
        cap = engine.joins.namespaces.of(group).max_members
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
        return self.engine.run(Command("presence", {"group": group})).addCallback(counted)

    def _admit(self, grant: Grant, session: Session, request: Request) -> None:
        engine = self.engine
        if engine.gone(session):  # it closed while the backend or hook decided
            return
        group = request.group
        new = group not in session.groups
        if new:
            self.check_room(session, group)  # it may have joined others meanwhile
        engine.joins.admitted(session, group, grant, engine.leeway())
        if new:
            engine.registry.join(session, group)
            self.announce("joined", session, group)
        engine.ok(session, request)

    def leave(self, session: Session, request: Request) -> None:
        self.depart(session, request.group)
        self.engine.ok(session, request)

    def presence(self, session: Session, request: Request) -> Deferred:
        """``presence``: the group's members on every worker and node, for a
        member, where the namespace allows it."""
        engine = self.engine
        group = request.group
        if not engine.joins.namespaces.of(group).presence:
            raise ProtocolError(FORBIDDEN, f"presence is off for group '{group}'")
        if group not in session.groups:
            raise ProtocolError(FORBIDDEN, f"not a member of group '{group}'")
        d = engine.run(Command("presence", {"group": group}))
        return d.addCallback(lambda result: engine.reply(
            session, presence_frame(result, group, request.ref)))

    def depart(self, session: Session, group: str) -> bool:
        """Take ``session`` out of ``group``, telling the other members when
        the namespace says so (not the session: it has left, on whichever
        worker it is); False if it was not in it."""
        if group not in session.groups:
            return False
        frame = self.engine.joins.event("left", session, group)  # with the member's data
        self.engine.joins.left(session, group)
        self.engine.registry.leave(session, group)
        self._publish(group, frame)
        return True

    def farewells(self, session: Session) -> list[tuple[str, bytes | None]]:
        """The ``left`` events of a closing session, to ``publish_all`` once
        it has gone."""
        return [(group, self.engine.joins.event("left", session, group))
                for group in session.groups]

    def publish_all(self, events: list[tuple[str, bytes | None]]) -> None:
        for group, frame in events:
            self._publish(group, frame)

    def announce(self, op: str, session: Session, group: str) -> None:
        """Publish a ``joined``/``left`` event to ``group``'s members, on every
        worker and node, when its namespace has events on; not kept."""
        self._publish(group, self.engine.joins.event(op, session, group))

    def _publish(self, group: str, frame: bytes | None) -> None:
        if frame is not None:
            engine = self.engine
            message = Message(engine.ids.message_id(), Address(group=(group,)), frame)
            engine.broker.publish((f"group:{group}",), message)

    def expired(self, session: Session, group: str) -> None:
        """A subscription token ran out: out of the group, and told why."""
        if not self.engine.gone(session) and self.depart(session, group):
            self.tell(session, "left", group, "token expired")

    def tell(self, session: Session, op: str, group: str, reason: str) -> None:
        """A ``joined``/``left`` notice about the session itself."""
        self.engine.reply(session, encode({"op": op, "group": group, "reason": reason}))
