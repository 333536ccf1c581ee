"""The keeper of one machine: who subscribes to which channel, and the one
numbering of its messages (the history) and the mailbox.  No I/O.

Every message of a machine goes through one keeper: the hub of a pool
(pool/hub.py), or the one process of ``--workers 0`` (broker/local.py).  For
each, in the same step: a stored push is kept for each of its users nobody
subscribes to (``mail``), a message on a channel that keeps history is
numbered and kept (``number``: its frame gains ``pos``), and it goes to every
subscriber of one of its channels (``targets``).  Deciding all three at one
moment is what makes a stored push reach a user either live or by the
mailbox, never neither.  Across machines Redis is the keeper
(broker/redis_scripts.py), by the same rules.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable

from zope.interface import implementer

from .history import History, Mailbox, kept_channels
from .reloadable import IReloadable


class SubscriptionTable:
    """``channel -> subscribers`` and ``subscriber -> channels``, kept in step.

    ``watcher(channel, True)`` is called when a channel gets its first
    subscriber, ``watcher(channel, False)`` when it loses its last (Pusher's
    channel_occupied and channel_vacated: pusher/webhook_sender.py).
    """

    def __init__(self):
        self.channels: dict[str, set[Hashable]] = {}
        self.workers: dict[Hashable, set[str]] = {}
        self.watcher: Callable[[str, bool], None] | None = None

    def subscribe(self, worker: Hashable, channels: Iterable[str]) -> None:
        mine = self.workers.setdefault(worker, set())
        for channel in channels:
            mine.add(channel)
            subscribers = self.channels.get(channel)
            if subscribers is None:
                subscribers = self.channels[channel] = set()
                if self.watcher is not None:
                    self.watcher(channel, True)
            subscribers.add(worker)

    def unsubscribe(self, worker: Hashable, channels: Iterable[str]) -> None:
        mine = self.workers.get(worker, set())
        for channel in channels:
            mine.discard(channel)
            subscribers = self.channels.get(channel)
            if subscribers is not None:
                subscribers.discard(worker)
                if not subscribers:
                    del self.channels[channel]
                    if self.watcher is not None:
                        self.watcher(channel, False)

    def remove_worker(self, worker: Hashable) -> None:
        """Forget every subscription of a subscriber that is gone."""
        self.unsubscribe(worker, list(self.workers.pop(worker, ())))

    def any_subscribed(self, channels: Iterable[str]) -> bool:
        """Whether any of ``channels`` has a subscriber (no set built)."""
        subscribed = self.channels
        return any(channel in subscribed for channel in channels)

    def targets(self, channels: Iterable[str], origin: Hashable = None) -> set[Hashable]:
        """The subscribers other than ``origin`` of any of ``channels``."""
        found: set[Hashable] = set()
        for channel in channels:
            found.update(self.channels.get(channel, ()))
        found.discard(origin)
        return found


@implementer(IReloadable)
class Keeper:
    """The subscriptions, history and mailbox of one machine (``settings``)."""

    def __init__(self, history: History, mailbox: Mailbox):
        self.history = history
        self.mailbox = mailbox
        self.table = SubscriptionTable()

    @classmethod
    def from_settings(cls, settings) -> "Keeper":
        return cls(History.from_settings(settings), Mailbox.from_settings(settings))

    @property
    def epoch(self) -> str | None:
        """The history's epoch, None when it keeps nothing."""
        return self.history.epoch if self.history.enabled else None

    def configure(self, settings) -> None:
        """Use ``settings``' history and mailbox limits from now on (a reload)."""
        self.history.configure(settings)
        self.mailbox.configure(settings)

    def keeps(self, channels: Iterable[str]) -> tuple[str, ...]:
        """Those of ``channels`` that keep history (none when it is off)."""
        return kept_channels(channels) if self.history.enabled else ()

    def number(self, kept: tuple[str, ...], msg_id, frame: bytes, now: float) -> bytes:
        """Number and keep a message of the channels ``kept`` (``keeps``); the
        frame as clients get it (with ``pos``)."""
        return self.history.record(kept, msg_id, frame, now)

    def mail(self, channels: Iterable[str], msg_id: str, frame: bytes, now: float) -> None:
        """Keep a stored push for each of its users nobody subscribes to."""
        for channel in channels:
            if channel.startswith("user:") and channel not in self.table.channels:
                self.mailbox.put(channel[5:], msg_id, frame, now)

    def targets(self, channels: Iterable[str], origin: Hashable = None) -> set[Hashable]:
        return self.table.targets(channels, origin)

    def replay(self, channels, since: int, epoch: str | None, now: float):
        return self.history.replay(channels, since, epoch, now)

    def take_mail(self, user: str, now: float) -> list[tuple[str, bytes]]:
        return self.mailbox.take(user, now)
