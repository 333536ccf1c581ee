"""The broker for one process (``--workers 0``): everything stays in memory."""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred, succeed
from zope.interface import implementer

from ..history import History, Mailbox, kept_channels
from .interface import IBroker, Message


@implementer(IBroker)
class LocalBroker:
    """Hands each published message straight to the one local engine, and
    keeps the history and the mailbox (``history``, ``mailbox``, timed by
    ``clock``; None: none kept)."""

    def __init__(self, history: History | None = None, clock=None,
                 mailbox: Mailbox | None = None):
        self.receiver = None
        self.subscriptions: set[str] = set()
        self.history = history
        self.mailbox = mailbox
        self.clock = clock

    @property
    def epoch(self):
        return self.history.epoch if self.history is not None else None

    def attach(self, receiver):
        self.receiver = receiver

    def subscribe(self, channel):
        self.subscriptions.add(channel)

    def unsubscribe(self, channel):
        self.subscriptions.discard(channel)

    def publish(self, channels, message, store=False):
        if store and self.mailbox is not None:
            now = self.clock.seconds()
            for channel in channels:
                if channel.startswith("user:") and channel not in self.subscriptions:
                    self.mailbox.put(channel[5:], message.id, message.frame, now)
        if self.history is not None:
            frame = self.history.record(kept_channels(channels), message.id, message.frame,
                                        self.clock.seconds())
            message = Message(message.id, message.to, frame)
        if not self.subscriptions.isdisjoint(channels):
            self.receiver.deliver(message)
        return succeed(None)

    def mail(self, user):
        if self.mailbox is None:
            return succeed([])
        return succeed(self.mailbox.take(user, self.clock.seconds()))

    def replay(self, channels, since, epoch):
        if self.history is None:
            return succeed(([], sorted(set(channels))))
        return succeed(self.history.replay(channels, since, epoch, self.clock.seconds()))

    def command(self, command):
        return maybeDeferred(self.receiver.perform, command).addCallback(lambda r: [r])

    def health(self):
        return None  # one process: every engine is this one

    def timed(self, observe):
        pass  # no store to make round trips to

    def close(self):
        return succeed(None)
