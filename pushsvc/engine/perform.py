"""Server-side commands run on one engine's sessions (``IReceiver.perform``):
the HTTP API's, the console's and the application API's, each engine's part
of the answer (``commands.merge`` folds the parts)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from .. import metrics
from ..wire.values import Command
from ..protocol import CLOSE_KICKED, parse_push
from ..sessions import Session

# How many sessions one engine lists at most for ``sessions``.
SESSIONS_SHOWN = 1000


class Performer:
    """Runs a ``Command`` on the sessions of one engine."""

    def __init__(self, engine):
        self.engine = engine
        self.registry = engine.registry

    def perform(self, command: Command) -> dict[str, Any] | Deferred:
        return getattr(self, f"do_{command.name}")(**command.args)

    def _targets(self, user: str | None = None, session: str | None = None) -> list[Session]:
        if user is not None:
            return list(self.registry.user_sessions(user))
        found = self.registry.get(session)
        return [found] if found is not None else []

    def do_join(self, group: str, **target: str) -> dict[str, Any]:
        groups = self.engine.groups
        joined = refused = 0
        for session in self._targets(**target):
            if group in session.groups:
                continue
            if not groups.may_join(session, group):
                refused += 1
                continue
            self.registry.join(session, group)
            groups.tell(session, "joined", group, "server")
            groups.announce("joined", session, group)
            joined += 1
        return {"sessions": joined, "refused": refused}

    def do_leave(self, group: str, **target: str) -> dict[str, Any]:
        groups = self.engine.groups
        left = 0
        for session in self._targets(**target):
            if groups.depart(session, group):
                groups.tell(session, "left", group, "server")
                left += 1
        return {"sessions": left}

    def do_destroy(self, group: str) -> dict[str, Any]:
        members = list(self.registry.group_members(group))
        for session in members:  # every member goes: no one is told of the others
            self.engine.joins.left(session, group)
            self.registry.leave(session, group)
            self.engine.groups.tell(session, "left", group, "destroyed")
        return {"sessions": len(members)}

    def do_tag(self, tag: str, **target: str) -> dict[str, Any]:
        return {"sessions": sum(self.registry.tag(s, tag) for s in self._targets(**target))}

    def do_untag(self, tag: str, **target: str) -> dict[str, Any]:
        return {"sessions": sum(self.registry.untag(s, tag) for s in self._targets(**target))}

    def do_group(self, group: str) -> dict[str, Any]:
        return {"members": [self._member(s, group) for s in self.registry.group_members(group)]}

    def _member(self, session: Session, group: str) -> dict[str, Any]:
        data = self.engine.joins.data(session, group)
        member = {"session": session.id, "user": session.user}
        return member if data is None else {**member, "data": data}

    def do_presence(self, group: str) -> dict[str, Any]:
        return self.engine.joins.presence(self.registry.group_members(group), group)

    def do_user(self, user: str) -> dict[str, Any]:
        return {"sessions": [s.describe() for s in self.registry.user_sessions(user)]}

    def do_sessions(self, user: str | None = None, limit: int = SESSIONS_SHOWN
                    ) -> dict[str, Any]:
        """Up to ``limit`` sessions (of ``user``, or of everyone) and how many there are."""
        found = (self.registry.user_sessions(user) if user is not None
                 else self.registry.sessions.values())
        return {"sessions": [s.describe() for s, _ in zip(found, range(limit))],
                "total": len(found)}

    def do_publish(self, to: Any, data: Any) -> Deferred:
        """Publish one message from here (the console's ``push``): ``{"id": ...}``."""
        engine = self.engine
        address, data = parse_push({"to": to, "data": data}, engine.settings.max_targets)
        return engine.publish(address, data).addCallback(lambda msg_id: {"id": msg_id})

    def do_groups(self) -> dict[str, Any]:
        return {"groups": {g: len(m) for g, m in self.registry.groups.members.items()}}

    def do_kick(self, reason: str = "kicked by the server", **target: str) -> dict[str, Any]:
        sessions = self._targets(**target)
        for session in sessions:
            session.conn.close(CLOSE_KICKED, reason)
        return {"sessions": len(sessions)}

    def do_stats(self) -> dict[str, Any]:
        engine = self.engine
        return {"worker": engine.ids.owner,
                "sessions": len(self.registry),
                "users": len(self.registry.users.members),
                "groups": len(self.registry.groups.members),
                **{k: v for k, v in engine.counters.items()}}

    def do_metrics(self) -> dict[str, Any]:
        """This engine's raw figures for ``GET /metrics`` (``metrics.engine_values``)."""
        return metrics.engine_values(self.engine)
