"""The broker of a pool worker: the master's AMP hub, over the worker's fds 3 and 4.

A worker sends its publishes to the hub, which numbers and keeps them (the
history) and forwards them to every worker subscribed to one of their
channels, this one included.  Commands go to the hub, which runs them on every
worker (this one included) and returns each worker's result.

Publishes leave in batches: the messages of one reactor turn go to the hub as
one ``PublishBatch`` (an AMP box per message cost more than delivering it).
Every other command to the hub sends the pending batch first, so the hub sees
publishes, subscriptions and commands in the order the engine made them.
"""

from __future__ import annotations

import json
import struct

from twisted.internet.defer import maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from ..wire.batch_pipe import BatchPipe
from ..wire.hub_commands import (CountConnections, Member, PublishBatch, Replay,
                                 RunCommand, Subscribe, TakeMail, Unsubscribe)
from ..wire.records import Outbox, pack_publish, unpack_messages
from ..wire.worker_commands import DeliverBatch, Perform, refused
from ..protocol import Address, ProtocolError, encode
from .counts import CountExchange
from .interface import Command, IBroker, Message

_log = Logger()

ADDRESSES_KEPT = 4096  # decoded addresses a worker keeps (WorkerProtocol._address)


class WorkerProtocol(BatchPipe):
    """The worker's end of the AMP pipe: the hub hands it messages and commands.

    ``broker`` is the worker's ``AmpBroker``, or its ``RedisBroker`` on a
    Redis node (which gets messages from the hub only while Redis is away).
    """

    batches = {DeliverBatch.commandName: "deliver"}

    def __init__(self, broker, on_lost=None):
        super().__init__()
        self.broker = broker
        self.on_lost = on_lost
        self._addresses: dict[bytes, Address] = {}

    @DeliverBatch.responder
    def deliver(self, batch):
        # An exception out of a responder makes AMP drop the pipe, and the
        # worker would take that for the master going away: contain it.
        # A Redis node's broker gets messages here only as relays from the
        # node's other workers while Redis is away: it sees them first.
        deliver = (getattr(self.broker, "deliver_relayed", None)
                   or self.broker.receiver.deliver)
        try:
            records = list(unpack_messages(batch))
        except (ValueError, struct.error):
            _log.failure("a DeliverBatch from the hub is malformed")
            return {}
        alone = len(records) == 1
        for msg_id, to, frame in records:
            try:
                deliver(Message(msg_id, self._address(to), frame), alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=msg_id)
        return {}

    def _address(self, to: bytes) -> Address:
        """The address of a message from the hub (checked where it entered);
        the addresses seen last are kept, as broadcasts repeat theirs."""
        address = self._addresses.get(to)
        if address is None:
            if len(self._addresses) >= ADDRESSES_KEPT:
                self._addresses.clear()
            address = self._addresses[to] = Address.from_json(json.loads(to))
        return address

    @Perform.responder
    def perform(self, name, args):
        d = maybeDeferred(self.broker.receiver.perform, Command(name, args))
        return d.addCallbacks(lambda result: {"result": result}, _refuse)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.on_lost is not None and not self.broker.closed:
            self.on_lost(reason)


def _messages(records: bytes) -> list[tuple[str, bytes]]:
    """(id, frame) of each message record the hub answered."""
    return [(msg_id, frame) for msg_id, _, frame in unpack_messages(records)]


def _refuse(failure):
    """A ProtocolError goes back to the hub as Refused (AMP carries only the
    errors a command declares)."""
    failure.trap(ProtocolError)
    raise refused(failure.value)


@implementer(IBroker)
class AmpBroker:
    """IBroker over AMP to the master's hub.

    ``clock`` (default: the global reactor) schedules the flush of each batch;
    ``epoch`` is the hub's history's.
    """

    def __init__(self, clock=None, epoch: str | None = None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.epoch = epoch  # the hub's history's
        self.receiver = None
        self.hub: WorkerProtocol | None = None
        self.subscriptions: set[str] = set()
        self.clock = clock
        self.outbox = Outbox(clock, self._send)
        self.closed = False
        self.on_member = None  # the hub announces a dead worker's departures
        self.counts: CountExchange | None = None  # share_counts, once connected

    def attach(self, receiver):
        self.receiver = receiver

    def connect(self, hub: WorkerProtocol) -> None:
        """Use ``hub`` (a connected WorkerProtocol) from now on."""
        self.hub = hub
        if self.counts is not None:
            self.counts.start()

    def subscribe(self, channel):
        self.subscriptions.add(channel)
        self.outbox.flush()
        return self.hub.callRemote(Subscribe, channels=[channel])

    def unsubscribe(self, channel):
        self.subscriptions.discard(channel)
        self.outbox.flush()
        self.hub.callRemote(Unsubscribe, channels=[channel])

    def publish(self, channels, message, store=False):
        # Local sessions get it back from the hub too, with its history position.
        to = message.to_text or encode(message.to.to_json())
        self.outbox.add(self.hub, pack_publish(channels, message.id, to, message.frame, store))
        return succeed(None)

    @staticmethod
    def _send(hub: BatchPipe, batch: bytes) -> None:
        hub.send_batch(PublishBatch, batch)

    def mail(self, user):
        d = self.hub.callRemote(TakeMail, user=user)
        return d.addCallback(lambda answer: _messages(answer["messages"]))

    def replay(self, channels, since, epoch):
        self.outbox.flush()
        d = self.hub.callRemote(Replay, channels=list(channels), since=since, epoch=epoch or "")
        return d.addCallback(lambda answer: (_messages(answer["messages"]), answer["gaps"]))

    def command(self, command):
        self.outbox.flush()
        d = self.hub.callRemote(RunCommand, name=command.name, args=command.args)
        return d.addCallback(lambda answer: answer["results"])

    def member(self, group, user, session, joined, info=None):
        self.outbox.flush()  # after the messages published before it
        d = self.hub.callRemote(Member, group=group, user=user, session=session,
                                joined=joined)
        return d.addCallback(lambda answer: answer["changed"])

    def share_counts(self, report, learned, interval):
        """Through the hub (``CountConnections``), from the time it is connected."""
        def send(counts):
            d = self.hub.callRemote(CountConnections, counts=counts)
            return d.addCallback(lambda answer: answer["others"])
        self.counts = CountExchange(self.clock, send, report, learned, interval)
        if self.hub is not None:
            self.counts.start()

    def health(self):
        return None  # the hub is the master: a worker without it stops

    def timed(self, observe):
        pass  # its round trips go to the hub, which is not timed

    def close(self):
        self.closed = True
        if self.counts is not None:
            self.counts.stop()
        if self.hub is not None and self.hub.transport is not None:
            self.outbox.flush()
            self.hub.transport.loseConnection()
        return succeed(None)
