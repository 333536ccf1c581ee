"""The broker contract between a session engine and whatever connects engines."""

from __future__ import annotations

from zope.interface import Attribute, Interface

from ..wire.values import Command, Message

__all__ = ["Command", "IBroker", "IReceiver", "Message"]


class IReceiver(Interface):
    """What a broker hands messages and commands to: a session engine."""

    def deliver(message, alone=False, exclude=None):
        """Write ``message`` to every local session its address selects but
        those ``exclude`` (an Address) selects (a sharded broker's second
        copy); ``alone`` when no other message is delivered in this reactor turn."""

    def perform(command):
        """Run ``command`` on the local sessions; return a JSON-able dict."""


class IBroker(Interface):
    """Carries messages to every engine that has subscribed to their channels."""

    subscriptions = Attribute("The set of channels this engine subscribes to.")
    closed = Attribute("Whether ``close`` has been called (the engine is stopping).")

    def attach(receiver):
        """Hand future messages and commands to ``receiver`` (an IReceiver)."""

    def subscribe(channel):
        """Ask for messages on ``channel``; called when its first local session appears.

        Returns None when the subscription stands at once, or a Deferred that
        fires when messages published on ``channel`` from now on will arrive.
        """

    def unsubscribe(channel):
        """Stop messages on ``channel``; called when its last local session leaves."""

    def publish(channels, message, store=False):
        """Send ``message`` once to each engine subscribed to any of ``channels``.

        ``store``: also keep it, in the mailbox, for each ``user:`` channel
        among ``channels`` that no engine subscribes to (a user with no
        session anywhere), decided at the same moment as its routing.
        Returns a Deferred that fires when the broker has taken the message.
        """

    def command(command):
        """Run ``command`` on every engine; a Deferred firing with their results."""

    def member(group, user, session, joined, info=None):
        """Count ``session`` of ``user`` in ``group`` (``joined``) or out of
        it, where every engine's joins and leaves are seen in order
        (``tally.MemberTally``); a Deferred firing True when that made the
        user's first session in the group (or took its last): once for each
        such transition, on one engine.  ``info`` (the member's data) comes
        back with a transition found later (``on_member``)."""

    on_member = Attribute("Called with (group, user, info, joined) for a transition "
                          "this engine is to announce that no call to ``member`` "
                          "answered: a dead engine's last sessions (Redis, swept at "
                          "the heartbeat), this engine's counted again after an outage; "
                          "None: not announced.")

    def share_counts(report, learned, interval):
        """Every ``interval`` seconds, tell the other engines this engine's
        counts ``report()`` (a dict name -> count; None: nothing to share
        now) and hand the sum of the other live engines' last reports to
        ``learned(totals)`` (``broker/counts.py``; Pusher's connections per
        app).  One engine alone has no others: nothing is exchanged."""

    epoch = Attribute("The epoch of the history behind this broker (str), or None "
                      "when it keeps no history.")

    def mail(user):
        """A Deferred firing with the messages kept for ``user``, oldest first,
        as ``(id, frame)``; they are not kept any more."""

    def replay(channels, since, epoch):
        """The kept messages of ``channels`` after position ``since``: a
        Deferred firing with ``(messages, gaps)``, messages as ``(id, frame)``
        oldest first, gaps the channels that lost one (``history.History.replay``);
        or a ``cursor.Replayed`` (Redis shards: ``since`` is then one position
        per part of ``epoch``, and some channels may be unavailable)."""

    def health():
        """None while messages reach every engine, else why not (the Redis
        broker while Redis is away); ``/healthz`` answers 503 with it.
        A broker that cannot lose its engines always answers None."""

    def timed(observe):
        """Call ``observe(seconds)`` with the duration of each round trip to
        the broker's store (the Redis broker: its script calls and
        heartbeat); brokers without one never call it."""

    def close():
        """Let go of connections; a Deferred that fires when done."""
