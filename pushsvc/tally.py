"""Who is a member of a group, counted where joins are ordered.  No I/O.

Pusher's ``member_added`` and ``member_removed`` announce a user's first
connection in a presence channel and its last.  Counting the user's
sessions after each join and leave (the cluster-wide ``presence``
command) cannot tell them apart when two connections of one user join or
leave at the same instant on two workers: each may count the other.  So
each transition is decided at one place that sees every join and leave of
the group in order, one at a time:

- ``--workers 0``: the process's own ``MemberTally`` (``broker/local.py``);
- a pool: the master's hub (``pool/hub.py``), which gets each worker's
  joins and leaves in the order the worker made them (its AMP pipe) and
  forgets a worker that ended at once (``drop``: the users whose last
  session it held have left);
- Redis: the presence scripts (``broker/redis_presence_lua.py``), which
  keep the same rule inside Redis, a dead engine's entries going with the
  liveness of its heartbeat.

An entry is one session of one user in one group, held by one engine (the
``holder``).  Entries are sets, not counts: a join or leave said twice
changes nothing the second time, so no transition is ever announced twice.
"""

from __future__ import annotations

from typing import Hashable


class MemberTally:
    """``(group, user) -> sessions``, and each holder's entries."""

    def __init__(self):
        self.members: dict[tuple[str, str], set[tuple[Hashable, str]]] = {}
        self.held: dict[Hashable, set[tuple[str, str, str]]] = {}

    def change(self, holder: Hashable, group: str, user: str, session: str,
               joined: bool) -> bool:
        """``session`` of ``user``, held by ``holder``, joined ``group`` (or
        left it): True when that made the user's first session in the group
        (or took its last)."""
        return (self.join if joined else self.leave)(holder, group, user, session)

    def join(self, holder: Hashable, group: str, user: str, session: str) -> bool:
        """True when ``session`` is the user's first in ``group``."""
        entry = (holder, session)
        sessions = self.members.setdefault((group, user), set())
        if entry in sessions:
            return False
        sessions.add(entry)
        self.held.setdefault(holder, set()).add((group, user, session))
        return len(sessions) == 1

    def leave(self, holder: Hashable, group: str, user: str, session: str) -> bool:
        """True when ``session`` was the user's last in ``group``."""
        sessions = self.members.get((group, user))
        if sessions is None or (holder, session) not in sessions:
            return False
        sessions.discard((holder, session))
        held = self.held[holder]
        held.discard((group, user, session))
        if not held:
            del self.held[holder]
        if sessions:
            return False
        del self.members[group, user]
        return True

    def drop(self, holder: Hashable) -> list[tuple[str, str]]:
        """Forget every entry of a holder that has ended; the (group, user)
        whose last session it held, in order."""
        gone = []
        for group, user, session in sorted(self.held.get(holder, ())):
            if self.leave(holder, group, user, session):
                gone.append((group, user))
        return gone

    def count(self, group: str, user: str) -> int:
        """How many sessions ``user`` has in ``group`` (by every holder)."""
        return len(self.members.get((group, user), ()))
