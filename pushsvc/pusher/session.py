"""One Pusher connection's state and the rules its frames are checked by.
No I/O: the edge (websocket.py) joins groups and writes what this decides.

A ``PusherSession`` knows its app, its socket id, the channels it is
subscribed to (channel -> group) and the user it is bound to: the first of a
``pusher:signin`` and a presence subscription's ``channel_data`` binds it
(that user is the pushsvc session's user, so a push to ``{"user": ID}`` and
``terminate_connections`` reach it, and presence counts it); a later one
naming another user is refused.  Each check raises ``PusherError(None, ...)``
with the reason, which the edge sends as ``pusher:error`` (or, for a
subscription, as ``pusher:subscription_error`` on the channel).

- ``subscribe``: public channels as they are; ``private-`` and ``presence-``
  with the app's signature over ``socket_id:channel[:channel_data]``;
  ``#server-to-user-ID`` only once signed in as ID.
- ``client_event``: only when the app allows client events, on a private or
  presence channel the connection is subscribed to; ``spend_client_event``:
  at most the app's ``max_client_events_per_second`` (a burst of that many,
  then that many a second; ``rates.EventRate``), else ``PusherError`` 4301,
  which the edge sends as ``pusher:error`` with that code, without closing.
- ``signin``: the app's signature over ``socket_id::user::user_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .apps import PusherApp
from .names import (CLIENT_EVENT_RATE_LIMIT, PRESENCE, PRIVATE, SERVER_TO_USER, PusherError,
                    user_of_channel)
from .protocol import ClientFrame
from .rates import EventRate
from .signatures import check_channel_auth, check_user_auth


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription the rules allow: join ``group``; for a presence
    channel, as ``user_id`` with ``user_info``."""
    channel: str
    kind: str
    group: str
    user_id: str | None = None
    user_info: Any = None


class PusherSession:
    """The state of one Pusher connection (see the module docstring)."""

    __slots__ = ("app", "socket_id", "prefix", "max_group", "channels", "user", "signed_in",
                 "event_rate")

    def __init__(self, app: PusherApp, socket_id: str, separator: str = ":",
                 max_group: int = 200):
        self.app = app
        self.socket_id = socket_id
        self.prefix = app.namespace + separator   # of the app's groups (apps.Apps.group_of)
        self.max_group = max_group
        self.channels: dict[str, str] = {}   # subscribed channel -> its group
        self.user: str | None = None          # the bound user id
        self.signed_in = False
        self.event_rate: EventRate | None = None  # made at the first client event

    def group_of(self, channel: str) -> str:
        """The group of the app's ``channel``."""
        return self.prefix + channel

    def channel_of(self, group: str) -> str | None:
        """The app's channel that ``group`` is, or None."""
        return group[len(self.prefix):] if group.startswith(self.prefix) else None

    def _bind(self, user_id: str) -> None:
        if self.user is not None and self.user != user_id:
            raise PusherError(None, f"this connection is user {self.user!r}; it cannot "
                                    f"also be {user_id!r}")

    def subscribe(self, frame: ClientFrame) -> Subscription:
        """Check a ``pusher:subscribe``; what to join.  The caller binds the
        user of a presence subscription (``bound``) once it has joined."""
        channel, kind = frame.channel, frame.kind
        group = self.group_of(channel)
        if len(group) > self.max_group:
            raise PusherError(None, f"channel name too long for this server: at most "
                                    f"{self.max_group - len(group) + len(channel)} characters")
        if kind in (PRIVATE, PRESENCE):
            check_channel_auth(self.app, self.socket_id, channel, frame.auth,
                               frame.channel_data)
        if kind == SERVER_TO_USER:
            if not self.signed_in or user_of_channel(channel) != self.user:
                raise PusherError(None, f"subscribing to {channel} needs a pusher:signin "
                                        "as that user first")
        if kind == PRESENCE:
            self._bind(frame.user_id)
            return Subscription(channel, kind, group, frame.user_id, frame.user_info)
        return Subscription(channel, kind, group)

    def subscribed(self, subscription: Subscription) -> None:
        """The edge has joined the subscription's group."""
        self.channels[subscription.channel] = subscription.group
        if subscription.user_id is not None:
            self.user = subscription.user_id

    def unsubscribe(self, channel: str) -> str | None:
        """Forget ``channel``; its group, or None when not subscribed."""
        return self.channels.pop(channel, None)

    def presence_channels(self) -> list[tuple[str, str]]:
        """(channel, group) of each presence subscription."""
        return [(c, g) for c, g in self.channels.items() if c.startswith("presence-")]

    def client_event(self, frame: ClientFrame) -> str:
        """Check a ``client-*`` event; the group to publish it to."""
        if not self.app.client_events:
            raise PusherError(None, f"client events are not enabled for app {self.app.id}")
        group = self.channels.get(frame.channel)
        if group is None:
            raise PusherError(None, f"client event on {frame.channel}, which this "
                                    "connection is not subscribed to")
        return group

    def spend_client_event(self, frame: ClientFrame, now: float) -> None:
        """Count a client event the rules allow; PusherError 4301 (it is
        dropped) when it is over the app's rate."""
        limit = self.app.max_client_events_per_second
        rate = self.event_rate
        if rate is None:
            if limit <= 0:
                return
            rate = self.event_rate = EventRate()
        if not rate.admit(limit, now):
            raise PusherError(CLIENT_EVENT_RATE_LIMIT,
                              f"client event rejected due to rate limit: at most {limit} "
                              f"client events a second ({frame.event[:50]} on "
                              f"{frame.channel} was not sent)")

    def signin(self, frame: ClientFrame) -> str:
        """Check a ``pusher:signin``; the user id, now bound."""
        check_user_auth(self.app, self.socket_id, frame.auth, frame.user_data)
        self._bind(frame.user_id)
        self.user = frame.user_id
        self.signed_in = True
        return frame.user_id
