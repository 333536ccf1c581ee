"""AMP commands a worker sends to the master's hub (Twisted's trial/_dist
calls these the manager's commands).  Fire-and-forget commands
(``requiresAnswer = False``) carry the message traffic; AMP keeps them in
order on the pipe."""

from __future__ import annotations

from twisted.protocols import amp

from .amp_args import BigBytes, Json


class Hello(amp.Command):
    """A worker is up: its index and the owner name in its session ids."""
    arguments = [(b"index", amp.Integer()), (b"owner", amp.Unicode())]
    response: list = []


class Subscribe(amp.Command):
    """Answered once the hub routes ``channels`` to the worker."""
    arguments = [(b"channels", amp.ListOf(amp.Unicode()))]
    response: list = []


class Unsubscribe(amp.Command):
    arguments = [(b"channels", amp.ListOf(amp.Unicode()))]
    requiresAnswer = False


class Member(amp.Command):
    """A session of ``user`` joined (or left) ``group``: whether that made
    the user's first session in it (or took its last), as the hub's
    ``tally.MemberTally`` counts every worker's (``IBroker.member``)."""
    arguments = [(b"group", amp.Unicode()), (b"user", amp.Unicode()),
                 (b"session", amp.Unicode()), (b"joined", amp.Boolean())]
    response = [(b"changed", amp.Boolean())]


class CountConnections(amp.Command):
    """The worker's counts (Pusher connections by app id,
    ``broker/counts.py``); the answer is the sum of the other workers' last
    reports."""
    arguments = [(b"counts", Json())]
    response = [(b"others", Json())]


class PublishBatch(amp.Command):
    """Messages for every worker subscribed to one of their channels (the
    origin too, unless ``RELAY``): publish records (``pack_publish``), in
    the order they were published."""
    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class Replay(amp.Command):
    """The hub's kept messages of ``channels`` after position ``since``
    (``history.History.replay``): message records, oldest first, and the
    channels with a gap.  Answered after every DeliverBatch queued before it."""
    arguments = [(b"channels", amp.ListOf(amp.Unicode())), (b"since", amp.Integer()),
                 (b"epoch", amp.Unicode())]
    response = [(b"messages", BigBytes()), (b"gaps", amp.ListOf(amp.Unicode()))]


class TakeMail(amp.Command):
    """What the mailbox kept for ``user``: message records, oldest first."""
    arguments = [(b"user", amp.Unicode())]
    response = [(b"messages", BigBytes())]


class RunCommand(amp.Command):
    """Run a server-side command on every worker; the list of their results."""
    arguments = [(b"name", amp.Unicode()), (b"args", Json())]
    response = [(b"results", Json())]


class GatherMetrics(amp.Command):
    """The machine's metric values (pushsvc/metrics.py): every ready worker's,
    summed by the master, with the master's own added (``GET /metrics``)."""
    arguments: list = []
    response = [(b"values", Json())]
