"""The broker of a pool worker: the master's AMP hub, over the worker's fds 3 and 4.

A worker delivers its own publishes to its local sessions at once and sends
them to the hub, which forwards them only to the *other* workers subscribed to
one of their channels.  Commands go to the hub, which runs them on every worker
(this one included) and returns each worker's result.
"""

from __future__ import annotations

import json
import sys

from twisted.internet.defer import maybeDeferred, succeed
from twisted.protocols import amp
from zope.interface import implementer

from ..pool.wire import Deliver, Perform, Publish, RunCommand, Subscribe, Unsubscribe
from ..protocol import parse_address
from .interface import Command, IBroker, Message


class WorkerProtocol(amp.AMP):
    """The worker's end of the AMP pipe: the hub hands it messages and commands."""

    def __init__(self, broker: "AmpBroker", on_lost=None):
        super().__init__()
        self.broker = broker
        self.on_lost = on_lost

    @Deliver.responder
    def deliver(self, id, to, frame):
        message = Message(id, parse_address(json.loads(to), sys.maxsize), frame)
        self.broker.receiver.deliver(message)
        return {}

    @Perform.responder
    def perform(self, name, args):
        d = maybeDeferred(self.broker.receiver.perform, Command(name, args))
        return d.addCallback(lambda result: {"result": result})

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.on_lost is not None:
            self.on_lost(reason)


@implementer(IBroker)
class AmpBroker:
    """IBroker over AMP to the master's hub."""

    def __init__(self):
        self.receiver = None
        self.hub: amp.AMP | None = None
        self.subscriptions: set[str] = set()

    def attach(self, receiver):
        self.receiver = receiver

    def connect(self, hub: amp.AMP) -> None:
        """Use ``hub`` (a connected WorkerProtocol) from now on."""
        self.hub = hub

    def subscribe(self, channel):
        self.subscriptions.add(channel)
        return self.hub.callRemote(Subscribe, channels=[channel])

    def unsubscribe(self, channel):
        self.subscriptions.discard(channel)
        self.hub.callRemote(Unsubscribe, channels=[channel])

    def publish(self, channels, message):
        if not self.subscriptions.isdisjoint(channels):
            self.receiver.deliver(message)
        self.hub.callRemote(Publish, channels=list(channels), id=message.id,
                            to=json.dumps(message.to.to_json()).encode("utf-8"),
                            frame=message.frame)
        return succeed(None)

    def command(self, command):
        d = self.hub.callRemote(RunCommand, name=command.name, args=command.args)
        return d.addCallback(lambda answer: answer["results"])

    def close(self):
        if self.hub is not None and self.hub.transport is not None:
            self.hub.transport.loseConnection()
        return succeed(None)
