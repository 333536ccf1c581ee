"""pushsvc messages and Pusher frames: the one message format both kinds of
client are served from.  No I/O.

A Pusher event travels through the engine, the pool and Redis as an ordinary
pushsvc message to the channel's group, whose ``msg`` frame carries two
optional fields (``frames.message_frame``)::

    {"op":"msg","id":..,"to":{"group":"pusher.1001:chat"},"event":"new-order",
     "socket_id":"123.456","from":{..},"data":"{\\"id\\":1}"}

- ``event``: the Pusher event name (``event_message``); a pushsvc push without
  one reaches Pusher clients as ``DEFAULT_EVENT``;
- ``socket_id``: the Pusher connection the event is not delivered to (a
  trigger's ``socket_id``, the sender of a client event, the member whose
  ``member_added`` it is).

pushsvc's own clients get the frame as it is.  A Pusher connection gets
``{"event":E,"channel":C,"data":D}`` (``pusher_frame``), where C is the
channel of the first group of the address the connection is in (none for a
message that reached it by its user, a tag or ``all``: pusher-js hands such
an event to ``pusher.bind``), and ``user_id`` is added to a client event on a
presence channel.  ``Translation`` builds those bytes once per message and
channel, whatever the number of Pusher recipients.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ..frames import message_frame
from ..protocol import Address
from ..wire.values import Message
from .names import PRESENCE, channel_kind
from .protocol import channel_event, error

DEFAULT_EVENT = "message"
_MSG_HEAD = b'{"op":"msg",'
_ERROR_HEAD = b'{"op":"error",'


def event_message(msg_id: str, group: str, event: str, data: Any, max_data: int,
                  socket_id: str | None = None,
                  sender: dict[str, Any] | None = None) -> Message:
    """The message of a Pusher event on the channel whose group is ``group``
    (``too_large`` over ``max_data``, as ``Engine.message``)."""
    to = Address(group=(group,))
    to_text = to.to_text()
    frame = message_frame(msg_id, to, data, sender, max_data, to_text, event, socket_id)
    return Message(msg_id, to, frame, to_text)


def native_message(frame: bytes) -> dict[str, Any] | None:
    """A ``msg`` frame decoded, or None for any other frame (``joined``,
    ``ok``...: Pusher clients get none of those)."""
    if not frame.startswith(_MSG_HEAD):
        return None
    return json.loads(frame)


def pusher_frame(message: dict[str, Any], channel: str | None) -> bytes:
    """The Pusher frame of a decoded ``msg`` frame, on ``channel``."""
    event = message.get("event") or DEFAULT_EVENT
    user_id = None
    if channel is not None and event.startswith("client-") and channel_kind(channel) == PRESENCE:
        user_id = (message.get("from") or {}).get("user")
    return channel_event(event, channel, message.get("data"), user_id)


def pusher_error(frame: bytes) -> bytes | None:
    """``pusher:error`` for a pushsvc ``error`` frame (a rate limit, an
    internal error), else None."""
    if not frame.startswith(_ERROR_HEAD):
        return None
    return error(json.loads(frame).get("message", "error"))


def groups_of(to: dict[str, Any]) -> tuple[str, ...]:
    """The groups of a decoded address (one name or a list)."""
    groups = to.get("group", ())
    return (groups,) if isinstance(groups, str) else tuple(groups)


def channel_for(groups: tuple[str, ...], pusher, member_of) -> str | None:
    """The channel a message to ``groups`` reaches a Pusher connection on:
    the first of them it is in (``member_of``: its session's groups) that is
    a channel of its app (``pusher.channel_of``); None when it is in none
    (the message reached it by its user, a tag or ``all``)."""
    for group in groups:
        if group in member_of:
            channel = pusher.channel_of(group)
            if channel is not None:
                return channel
    return None


class Translation:
    """A message's Pusher frames, made once per channel and kept while the
    same message is delivered (``key``: the object the engine hands every
    recipient of one message).  ``prepare`` frames bytes for writing.

    A message to one group and nothing else reaches only members of it, so
    its frame is looked up by the app (``pusher.prefix``) alone.
    """

    __slots__ = ("key", "message", "groups", "only", "skip", "frames", "by_app", "prepare")

    def __init__(self, prepare: Callable[[bytes], Any]):
        self.prepare = prepare
        self.use(None, b"")

    def use(self, key: Any, payload: bytes) -> None:
        """The deliveries of the message ``key``, whose frame is ``payload``, begin."""
        self.key = key
        message = self.message = native_message(payload)
        self.frames: dict[str | None, Any] = {}
        self.by_app: dict[str, Any] = {}
        to = message["to"] if message is not None else {}
        self.groups = groups_of(to)
        self.only = self.groups[0] if len(to) == 1 and len(self.groups) == 1 else None
        self.skip = message.get("socket_id") if message is not None else None

    def frame_for(self, pusher, member_of) -> Any:
        """The prepared frame for the Pusher connection whose state is
        ``pusher`` and whose session's groups are ``member_of``; None for
        none (not a ``msg``, or the connection's own event)."""
        if self.message is None or self.skip == pusher.socket_id:
            return None
        if self.only is None:
            return self.frame(channel_for(self.groups, pusher, member_of))
        prepared = self.by_app.get(pusher.prefix)
        if prepared is None:
            prepared = self.by_app[pusher.prefix] = self.frame(pusher.channel_of(self.only))
        return prepared

    def frame(self, channel: str | None) -> Any:
        """The prepared Pusher frame of the current message on ``channel``."""
        prepared = self.frames.get(channel)
        if prepared is None:
            prepared = self.frames[channel] = self.prepare(pusher_frame(self.message, channel))
        return prepared
