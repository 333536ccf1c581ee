"""The broker for one process (``--workers 0``): everything stays in memory,
kept by the process's ``Keeper`` by the same rules as the hub of a pool."""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from ..history import History, Mailbox
from ..keeper import Keeper
from ..tally import MemberTally
from .interface import IBroker, Message

# The one engine, as the keeper's subscription table knows it.
ENGINE = "engine"


@implementer(IBroker)
class LocalBroker:
    """Hands each published message straight to the one local engine, after
    the keeper has mailed, numbered and routed it (``keeper``, timed by
    ``clock``; None: nothing kept)."""

    def __init__(self, keeper: Keeper | None = None, clock=None):
        self.receiver = None
        self.keeper = keeper or Keeper(History(0, 1, 1), Mailbox(0, 1, 1))
        self.clock = clock or Clock()  # nothing kept: the time does not matter
        self.tally = MemberTally()
        self.on_member = None  # every transition is answered by ``member``

    @property
    def epoch(self):
        return self.keeper.epoch

    @property
    def subscriptions(self) -> set[str]:
        return self.keeper.table.workers.get(ENGINE, set())

    def attach(self, receiver):
        self.receiver = receiver

    def subscribe(self, channel):
        self.keeper.table.subscribe(ENGINE, (channel,))

    def unsubscribe(self, channel):
        self.keeper.table.unsubscribe(ENGINE, (channel,))

    def publish(self, channels, message, store=False):
        keeper = self.keeper
        now = self.clock.seconds()
        if store:
            keeper.mail(channels, message.id, message.frame, now)
        kept = keeper.keeps(channels)
        if kept:
            frame = keeper.number(kept, message.id, message.frame, now)
            message = Message(message.id, message.to, frame)
        if keeper.table.any_subscribed(channels):  # the one engine wants it
            self.receiver.deliver(message)
        return succeed(None)

    def mail(self, user):
        return succeed(self.keeper.take_mail(user, self.clock.seconds()))

    def replay(self, channels, since, epoch):
        if not self.keeper.history.enabled:
            return succeed(([], sorted(set(channels))))
        return succeed(self.keeper.replay(channels, since, epoch, self.clock.seconds()))

    def command(self, command):
        return maybeDeferred(self.receiver.perform, command).addCallback(lambda r: [r])

    def member(self, group, user, session, joined, info=None):
        return succeed(self.tally.change(ENGINE, group, user, session, joined))

    def share_counts(self, report, learned, interval):
        pass  # one engine: there are no others to tell

    def health(self):
        return None  # one process: every engine is this one

    def timed(self, observe):
        pass  # no store to make round trips to

    closed = False

    def close(self):
        self.closed = True
        return succeed(None)
