"""Sessions and the maps between sessions and users, groups and tags.  No I/O.

A ``Session`` holds a connection object opaquely (``conn``); the registry never
calls it.  The registry keeps four indexes, each ``name -> set of sessions``:
``users``, ``groups``, ``tags`` and, for the ``all`` address, one set of every
session.  Each index entry is a broker channel (``user:NAME``, ``group:NAME``,
``tag:NAME``, ``all``): when an entry gains its first session the registry calls
``on_interest(channel, True)``, when it loses its last, ``on_interest(channel,
False)``.  That is how a worker subscribes to exactly what its sessions need.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

ALL = "all"
NONE: frozenset[str] = frozenset()  # the groups and tags of a session that has none yet


class Session:
    """One connected client: its id, user, groups and tags, and its connection.
    What the engine keeps about a session while it lives (reply gates, timers,
    replays) the engine's parts hold, each forgetting it when it closes."""

    __slots__ = ("id", "user", "groups", "tags", "conn")

    def __init__(self, session_id: str, conn: Any = None):
        self.id = session_id
        self.user: str | None = None
        # Its own sets from its first join and tag (SessionRegistry): most
        # sessions are never tagged, and an empty set costs 216 bytes.
        self.groups: set[str] | frozenset[str] = NONE
        self.tags: set[str] | frozenset[str] = NONE
        self.conn = conn

    def describe(self) -> dict[str, Any]:
        """The session as the HTTP API and the console show it."""
        return {"session": self.id, "user": self.user,
                "groups": sorted(self.groups), "tags": sorted(self.tags)}

    def __repr__(self) -> str:
        return f"<Session {self.id} user={self.user!r}>"


class _Index:
    """``name -> set of sessions`` for one kind, announcing channel interest."""

    __slots__ = ("kind", "members", "announce")

    def __init__(self, kind: str, announce: Callable[[str, bool], None]):
        self.kind = kind
        self.members: dict[str, set[Session]] = {}
        self.announce = announce

    def add(self, name: str, session: Session) -> None:
        members = self.members.get(name)
        if members is None:
            members = self.members[name] = set()
            self.announce(f"{self.kind}:{name}", True)
        members.add(session)

    def discard(self, name: str, session: Session) -> None:
        members = self.members.get(name)
        if members is None:
            return
        members.discard(session)
        if not members:
            del self.members[name]
            self.announce(f"{self.kind}:{name}", False)

    def get(self, name: str) -> set[Session]:
        return self.members.get(name, set())

    def link(self, name: str, session: Session, names: set[str]) -> bool:
        """Add ``name`` to the session's own set ``names`` and the session to
        this index; False if it was there already."""
        if name in names:
            return False
        names.add(name)
        self.add(name, session)
        return True

    def unlink(self, name: str, session: Session, names: set[str]) -> bool:
        """Undo ``link``; False if the session did not have ``name``."""
        if name not in names:
            return False
        names.discard(name)
        self.discard(name, session)
        return True


class SessionRegistry:
    """Every local session and the session<->user, group and tag maps."""

    def __init__(self, on_interest: Callable[[str, bool], None] | None = None):
        self.on_interest = on_interest or (lambda channel, wanted: None)
        self.sessions: dict[str, Session] = {}
        self.users = _Index("user", self._announce)
        self.groups = _Index("group", self._announce)
        self.tags = _Index("tag", self._announce)

    def _announce(self, channel: str, wanted: bool) -> None:
        self.on_interest(channel, wanted)

    def __len__(self) -> int:
        return len(self.sessions)

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def add(self, session: Session) -> None:
        if session.id in self.sessions:
            raise ValueError(f"session {session.id} is already registered")
        if not self.sessions:
            self._announce(ALL, True)
        self.sessions[session.id] = session

    def remove(self, session: Session) -> bool:
        """Take ``session`` out of every map.  False if it was not registered."""
        if self.sessions.get(session.id) is not session:
            return False
        for group in list(session.groups):
            self.leave(session, group)
        for tag in list(session.tags):
            self.untag(session, tag)
        self.set_user(session, None)
        del self.sessions[session.id]
        if not self.sessions:
            self._announce(ALL, False)
        return True

    def set_user(self, session: Session, user: str | None) -> None:
        if session.user == user:  # no unsubscribe/subscribe churn on a repeated auth
            return
        if session.user is not None:
            self.users.discard(session.user, session)
        session.user = user
        if user is not None:
            self.users.add(user, session)

    def join(self, session: Session, group: str) -> bool:
        """Add ``session`` to ``group``; False if it was already in it."""
        if session.groups is NONE:
            session.groups = set()
        return self.groups.link(group, session, session.groups)

    def leave(self, session: Session, group: str) -> bool:
        """Take ``session`` out of ``group``; False if it was not in it."""
        return self.groups.unlink(group, session, session.groups)

    def tag(self, session: Session, tag: str) -> bool:
        if session.tags is NONE:
            session.tags = set()
        return self.tags.link(tag, session, session.tags)

    def untag(self, session: Session, tag: str) -> bool:
        return self.tags.unlink(tag, session, session.tags)

    def user_sessions(self, user: str) -> set[Session]:
        return self.users.get(user)

    def group_members(self, group: str) -> set[Session]:
        return self.groups.get(group)

    def tagged(self, tag: str) -> set[Session]:
        return self.tags.get(tag)

    def everyone(self) -> Iterable[Session]:
        return self.sessions.values()

    def is_empty(self) -> bool:
        """True when no session and no map entry is left (used by tests)."""
        return not (self.sessions or self.users.members or self.groups.members
                    or self.tags.members)
