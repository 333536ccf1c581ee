"""The hub's routing table: which worker subscribes to which channel.  No I/O."""

from __future__ import annotations

from typing import Hashable, Iterable


class SubscriptionTable:
    """``channel -> workers`` and ``worker -> channels``, kept in step."""

    def __init__(self):
        self.channels: dict[str, set[Hashable]] = {}
        self.workers: dict[Hashable, set[str]] = {}

    def subscribe(self, worker: Hashable, channels: Iterable[str]) -> None:
        mine = self.workers.setdefault(worker, set())
        for channel in channels:
            mine.add(channel)
            self.channels.setdefault(channel, set()).add(worker)

    def unsubscribe(self, worker: Hashable, channels: Iterable[str]) -> None:
        mine = self.workers.get(worker, set())
        for channel in channels:
            mine.discard(channel)
            subscribers = self.channels.get(channel)
            if subscribers is not None:
                subscribers.discard(worker)
                if not subscribers:
                    del self.channels[channel]

    def remove_worker(self, worker: Hashable) -> None:
        """Forget every subscription of a worker that is gone."""
        self.unsubscribe(worker, list(self.workers.pop(worker, ())))

    def targets(self, channels: Iterable[str], origin: Hashable = None) -> set[Hashable]:
        """The workers other than ``origin`` subscribed to any of ``channels``."""
        found: set[Hashable] = set()
        for channel in channels:
            found.update(self.channels.get(channel, ()))
        found.discard(origin)
        return found
