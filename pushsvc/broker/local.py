"""The broker for one process (``--workers 0``): everything stays in memory."""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred, succeed
from zope.interface import implementer

from .interface import IBroker


@implementer(IBroker)
class LocalBroker:
    """Hands each published message straight to the one local engine."""

    def __init__(self):
        self.receiver = None
        self.subscriptions: set[str] = set()

    def attach(self, receiver):
        self.receiver = receiver

    def subscribe(self, channel):
        self.subscriptions.add(channel)

    def unsubscribe(self, channel):
        self.subscriptions.discard(channel)

    def publish(self, channels, message):
        if not self.subscriptions.isdisjoint(channels):
            self.receiver.deliver(message)
        return succeed(None)

    def command(self, command):
        return maybeDeferred(self.receiver.perform, command).addCallback(lambda r: [r])

    def close(self):
        return succeed(None)
