"""Presence channels of Pusher connections.  No I/O: what is sent goes
through the callables given.

The member list (``members``: the ``hash`` of
``pusher_internal:subscription_succeeded``, user id -> user_info) is
pushsvc's presence of the channel's group: the cluster-wide ``presence``
command (``joins.Joins.presence``, merged over every worker and node), which
keeps the ``user_info`` each subscription attached (the member's join data).

``member_added`` (a user's first connection in the channel) and
``member_removed`` (its last) are decided by the broker, where every
join and leave of the group is seen in order (``IBroker.member``;
``tally.MemberTally`` in one process and in the hub of a pool, scripts in
Redis), so each transition is announced once, by one process.  The process
that is told (``Announcer``) publishes the event to the group (Pusher
clients get it as ``pusher_internal:member_added``/``member_removed``,
pushsvc's own clients as a ``msg`` frame with that ``event``) and queues
its webhook.  A departure no connection made (a worker or node that died
holding a user's last connection) is announced by the one that finds it:
the master of a pool, or the engine whose Redis heartbeat swept it.
"""

from __future__ import annotations

from typing import Any, Callable

from ..protocol import decode_json
from ..wire.values import Message
from .dialect import event_message
from .events import webhook_event
from .protocol import member_added_data, member_removed_data

MEMBER_ADDED = "pusher_internal:member_added"
MEMBER_REMOVED = "pusher_internal:member_removed"


def members(result: dict[str, Any]) -> dict[str, Any]:
    """User id -> user_info (None when it had none), from a ``presence`` result."""
    return {user: decode_json(entry["data"]) if "data" in entry else None
            for user, entry in sorted(result.get("users", {}).items())}


class Announcer:
    """Announces the member transitions of one process: ``publish(message)``
    sends a message to every worker and node, ``message_id()`` names it,
    ``max_bytes()`` is ``limits.max_message_bytes``; ``webhooks`` (a
    ``WebhookSender``, or None) queues the webhooks and knows the apps."""

    def __init__(self, publish: Callable[[Message], Any], message_id: Callable[[], str],
                 max_bytes: Callable[[], int], webhooks=None):
        self.publish = publish
        self.message_id = message_id
        self.max_bytes = max_bytes
        self.webhooks = webhooks

    def added(self, group: str, user: str, info: Any = None,
              socket_id: str | None = None) -> None:
        """``user``'s first connection is in ``group`` (not sent back to
        ``socket_id``, the connection that joined)."""
        self._announce(group, user, MEMBER_ADDED, member_added_data(user, info), socket_id)

    def removed(self, group: str, user: str) -> None:
        """``user``'s last connection has left ``group``."""
        self._announce(group, user, MEMBER_REMOVED, member_removed_data(user))

    def changed(self, group: str, user: str, info: Any, joined: bool) -> None:
        """A transition the broker found on its own (``IBroker.on_member``)."""
        if joined:
            self.added(group, user, info)
        else:
            self.removed(group, user)

    def _announce(self, group: str, user: str, event: str, data: str,
                  socket_id: str | None = None) -> None:
        """The webhook, then the message (``ProtocolError`` when it is over
        ``max_bytes``: the caller logs it)."""
        found = self.webhooks.apps().locate(group) if self.webhooks is not None else None
        if found is not None and found[0].webhooks:
            name = "member_added" if event == MEMBER_ADDED else "member_removed"
            self.webhooks.emit(found[0], webhook_event(name, found[1], user_id=user))
        self.publish(event_message(self.message_id(), group, event, data,
                                   self.max_bytes(), socket_id))
