"""How one reactor turn's publishes become calls of the publish script (no I/O).

A ``RedisBroker`` publishes the messages of one turn as few calls of
``PUBLISH_SCRIPT`` as keeps the publish order for every session: ``_Out``
is one message on its way, ``_calls`` splits them into calls.
"""

from __future__ import annotations

from typing import Any, Callable

from ..protocol import encode
from ..wire.records import pack_publish
from .interface import Message

__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "_Out", "_calls"]

BATCH_MESSAGES = 1000  # messages in one call of the publish script at most
BATCH_BYTES = 1024 * 1024  # ... and bytes (one message may be bigger alone)


# No session is reached through two channels of one of these kinds (a session
# has one user and one owner), so their order in a script call never matters.
_EXCLUSIVE = ("user:", "worker:")


def _kind(channel: str) -> str | None:
    return next((kind for kind in _EXCLUSIVE if channel.startswith(kind)), None)


def _calls(entries, measure: Callable[[Any], int] = len) -> list[dict[str, list]]:
    """Split publish records ``(channels, record)`` into calls of the publish
    script, ``{channel: records}`` each, that keep the publish order for every
    session (``measure(record)``: its bytes).

    A subscriber receives a call's payloads channel by channel, in the order
    each channel first appears, and delivers each message from the first copy
    it gets.  So a record may join a call only if each of its channels is new
    to the call or is the channel that appeared last, or if its one channel
    is followed only by channels of its own exclusive kind (``user:`` after
    ``user:``); else a new call starts.  Broadcasts, unicasts to users and to sessions make one call
    per batch; a mix of groups and other channels may make more.  A call holds
    at most BATCH_MESSAGES records and BATCH_BYTES bytes (or one record).
    """
    calls: list[dict[str, list]] = []
    call: dict[str, list] = {}
    position: dict[str, int] = {}  # where each channel of the call first appeared
    last_kind = None
    run = 0                      # where the trailing run of one exclusive kind starts
    count = size = 0
    for channels, record in entries:
        # The last channel, or (one channel alone) any channel of the trailing run.
        since = run if len(channels) == 1 else len(position) - 1
        fits = call and count < BATCH_MESSAGES and size < BATCH_BYTES and all(
            position.get(channel, since) >= since for channel in channels)
        if call and not fits:
            calls.append(call)
            call, position, last_kind, run, count, size = {}, {}, None, 0, 0, 0
        for channel in channels:
            if channel not in call:
                kind = _kind(channel)
                if kind is None or kind != last_kind:
                    run = len(position)
                last_kind = kind
                position[channel] = len(position)
                call[channel] = []
            call[channel].append(record)
        count += 1
        size += measure(record)
    if call:
        calls.append(call)
    return calls


class _Out:
    """A published message on its way to Redis: its channels, those that keep
    history, its publish record, the users to keep it for (``store``), and
    the message itself when local sessions want it too."""

    __slots__ = ("number", "channels", "message", "record", "kept", "users", "local")

    def __init__(self, number: int, channels: tuple[str, ...], message: Message):
        self.number = number          # publish order
        self.channels = channels
        self.message = message
        to = message.to_text or encode(message.to.to_json())
        self.record = pack_publish(channels, message.id, to, message.frame)
        self.kept: tuple[str, ...] = ()
        self.users: tuple[str, ...] = ()
        self.local: Message | None = None

    def size(self) -> int:
        return len(self.record)

    def order(self) -> int:
        return self.number
