"""Presence channels of Pusher connections, from pushsvc's own presence.
No I/O.

A presence channel's members are its group's users: the cluster-wide
``presence`` command (``joins.Joins.presence``, merged over every worker and
node) counts each user's sessions and keeps the ``user_info`` its
subscription attached (the member's join data).  So:

- ``members``: the ``hash`` of ``pusher_internal:subscription_succeeded``
  (user id -> user_info), from the command's result;
- a user's first connection in the channel announces ``member_added``
  (``sessions_of(result, user) <= 1`` once it has joined), its last one
  ``member_removed`` (0 once it has left).

The count is read after the join and after the leave: two connections of
one user joining (or leaving) within the same instant on two workers may
each see the other, and then neither announces.
"""

from __future__ import annotations

from typing import Any

from ..protocol import decode_json

MEMBER_ADDED = "pusher_internal:member_added"
MEMBER_REMOVED = "pusher_internal:member_removed"


def members(result: dict[str, Any]) -> dict[str, Any]:
    """User id -> user_info (None when it had none), from a ``presence`` result."""
    return {user: decode_json(entry["data"]) if "data" in entry else None
            for user, entry in sorted(result.get("users", {}).items())}


def sessions_of(result: dict[str, Any], user: str) -> int:
    """How many sessions ``user`` has in the group, by a ``presence`` result."""
    return result.get("users", {}).get(user, {}).get("sessions", 0)

