"""The broker of a pool worker: the master's AMP hub, over the worker's fds 3 and 4.

A worker delivers its own publishes to its local sessions at once and sends
them to the hub, which forwards them only to the *other* workers subscribed to
one of their channels.  Commands go to the hub, which runs them on every worker
(this one included) and returns each worker's result.

Publishes leave in batches: the messages of one reactor turn go to the hub as
one ``PublishBatch`` (an AMP box per message cost more than delivering it).
Every other command to the hub sends the pending batch first, so the hub sees
publishes, subscriptions and commands in the order the engine made them.
"""

from __future__ import annotations

import json
import sys

from twisted.internet.defer import maybeDeferred, succeed
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from ..pool.wire import (DeliverBatch, Outbox, Perform, PublishBatch, RunCommand, Subscribe,
                         Unsubscribe, pack_publish, refused, unpack_messages)
from ..protocol import ProtocolError, parse_address
from .interface import Command, IBroker, Message

_log = Logger()


class WorkerProtocol(amp.AMP):
    """The worker's end of the AMP pipe: the hub hands it messages and commands."""

    def __init__(self, broker: "AmpBroker", on_lost=None):
        super().__init__()
        self.broker = broker
        self.on_lost = on_lost

    @DeliverBatch.responder
    def deliver(self, batch):
        # An exception out of a responder makes AMP drop the pipe, and the
        # worker would take that for the master going away: contain it.
        deliver = self.broker.receiver.deliver
        try:
            records = list(unpack_messages(batch))
        except ValueError:
            _log.failure("a DeliverBatch from the hub is malformed")
            return {}
        alone = len(records) == 1
        for msg_id, to, frame in records:
            try:
                deliver(Message(msg_id, parse_address(json.loads(to), sys.maxsize), frame),
                        alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=msg_id)
        return {}

    @Perform.responder
    def perform(self, name, args):
        d = maybeDeferred(self.broker.receiver.perform, Command(name, args))
        return d.addCallbacks(lambda result: {"result": result}, _refuse)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.on_lost is not None and not self.broker.closed:
            self.on_lost(reason)


def _refuse(failure):
    """A ProtocolError goes back to the hub as Refused (AMP carries only the
    errors a command declares)."""
    failure.trap(ProtocolError)
    raise refused(failure.value)


@implementer(IBroker)
class AmpBroker:
    """IBroker over AMP to the master's hub.

    ``clock`` (default: the global reactor) schedules the flush of each batch.
    """

    def __init__(self, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.receiver = None
        self.hub: amp.AMP | None = None
        self.subscriptions: set[str] = set()
        self.clock = clock
        self.outbox = Outbox(clock, self._send)
        self._local: list[Message] = []  # this turn's publishes for local sessions
        self.closed = False

    def attach(self, receiver):
        self.receiver = receiver

    def connect(self, hub: amp.AMP) -> None:
        """Use ``hub`` (a connected WorkerProtocol) from now on."""
        self.hub = hub

    def subscribe(self, channel):
        self.subscriptions.add(channel)
        self.outbox.flush()
        return self.hub.callRemote(Subscribe, channels=[channel])

    def unsubscribe(self, channel):
        self.subscriptions.discard(channel)
        self.outbox.flush()
        self.hub.callRemote(Unsubscribe, channels=[channel])

    def publish(self, channels, message):
        to = json.dumps(message.to.to_json(), separators=(",", ":")).encode("utf-8")
        self.outbox.add(self.hub, pack_publish(channels, message.id, to, message.frame))
        if not self.subscriptions.isdisjoint(channels):
            if not self._local:
                self.clock.callLater(0, self._deliver_local)
            self._local.append(message)
        return succeed(None)

    @staticmethod
    def _send(hub: amp.AMP, batch: bytes) -> None:
        hub.callRemote(PublishBatch, batch=batch)

    def _deliver_local(self) -> None:
        """Deliver this turn's publishes to local sessions.

        Scheduled after the outbox's flush, so the batch is handed to the hub
        first: the pipe is written at the next poll, before the local sockets
        are (their flush comes a turn later), and the other workers write their
        copies of a broadcast at the same time as this one.  (Never from a
        flush forced by subscribe or unsubscribe, which may run in the middle
        of a change to the session maps.)
        """
        local, self._local = self._local, []
        alone = len(local) == 1
        for message in local:
            try:
                self.receiver.deliver(message, alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=message.id)

    def command(self, command):
        self.outbox.flush()
        d = self.hub.callRemote(RunCommand, name=command.name, args=command.args)
        return d.addCallback(lambda answer: answer["results"])

    def close(self):
        self.closed = True
        if self.hub is not None and self.hub.transport is not None:
            self.outbox.flush()
            self.hub.transport.loseConnection()
        return succeed(None)
