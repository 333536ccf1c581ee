"""The master's hub: the end of each worker's AMP pipe, and the routing of
the workers' messages through the machine's keeper (pushsvc/keeper.py)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from twisted.logger import Logger

from ..broker.counts import add_up, check_counts
from ..keeper import Keeper
from ..routing import channels as route
from ..tally import MemberTally
from ..wire.batch_pipe import BatchPipe
from ..wire.hub_commands import (CountConnections, GatherMetrics, Hello, Member,
                                 PublishBatch, Replay, RunCommand, Subscribe, TakeMail,
                                 Unsubscribe)
from ..wire.records import (RELAY, STORE, Outbox, message_parts, pack_message,
                            pack_publish, reframe, unpack_publishes)
from ..wire.worker_commands import DeliverBatch

if TYPE_CHECKING:
    from .process import WorkerProcess
    from .supervisor import Pool

_log = Logger(namespace="pushsvc.pool.master")


class Hub:
    """Routes the messages of the workers of ``pool`` through ``keeper``:
    each worker gets what it subscribes to as one DeliverBatch a turn.

    ``tally`` counts the workers' presence members (``Member``);
    ``departed(group, user)`` is told of each user whose last session was
    in a worker that ended (the master announces it).  ``counts`` holds
    each live worker's last ``CountConnections`` report."""

    def __init__(self, keeper: Keeper, clock, pool: "Pool"):
        self.keeper = keeper
        self.clock = clock
        self.pool = pool
        self.outbox = Outbox(clock, self._deliver)  # WorkerProcess -> records
        self.tally = MemberTally()
        self.departed = None
        self.counts: dict["WorkerProcess", dict[str, int]] = {}

    def protocol(self, worker: "WorkerProcess") -> "HubProtocol":
        """The master's end of ``worker``'s AMP pipe."""
        return HubProtocol(self, worker)

    def forward(self, origin: "WorkerProcess", batch: bytes) -> None:
        """Number and keep each message of a worker's PublishBatch (the
        history), and queue it for every worker subscribed to one of its
        channels, the origin included; each worker gets its messages as one
        DeliverBatch at the end of the turn.

        Batching here too makes the hub's cost per AMP box, not per message;
        a message record that keeps no history goes on as the bytes it came in.

        A ``RELAY`` record comes from a worker of a Redis node while Redis
        is away (broker/redis.py): its origin has delivered it to its own
        sessions, and Redis numbers and keeps it once it is back, so it goes
        as it came to the other workers subscribed to one of its channels,
        and nothing else.
        """
        keeper, outbox, now = self.keeper, self.outbox, self.clock.seconds()
        for channels, record, flags in unpack_publishes(batch, with_flags=True):
            if flags & RELAY:
                for worker in keeper.targets(channels, origin):
                    outbox.add(worker, record)
                continue
            parts = None
            if flags & STORE:
                msg_id, frame = parts = message_parts(record)
                keeper.mail(channels, msg_id.decode("utf-8", "surrogatepass"), frame, now)
            kept = keeper.keeps(channels)
            if kept:
                msg_id, frame = parts or message_parts(record)
                record = reframe(record, keeper.number(kept, msg_id, frame, now))
            for worker in keeper.targets(channels):
                outbox.add(worker, record)

    def publish(self, message) -> None:
        """Route a message of the master's own, as a worker's would be."""
        to = message.to_text or message.to.to_text()
        self.forward(None, pack_publish(route(message.to), message.id, to, message.frame))

    def counted(self, worker: "WorkerProcess", counts) -> dict:
        """Keep ``worker``'s report; the sum of the other workers' last."""
        self.counts[worker] = check_counts(counts)
        return {"others": add_up(c for w, c in self.counts.items() if w is not worker)}

    def gone(self, worker: "WorkerProcess") -> None:
        """``worker`` has ended: its presence members leave, and its
        connections stop counting, at once."""
        self.counts.pop(worker, None)
        for group, user in self.tally.drop(worker):
            if self.departed is not None:
                try:
                    self.departed(group, user)
                except Exception:
                    _log.failure("announcing that {user} left {group} failed",
                                 user=user, group=group)

    def replay(self, channels, since: int, epoch: str) -> dict:
        """A worker's Replay, answered after the DeliverBatches queued before it."""
        self.outbox.flush()
        messages, gaps = self.keeper.replay(channels, since, epoch, self.clock.seconds())
        return {"messages": records(messages), "gaps": gaps}

    def take_mail(self, user: str) -> dict:
        return {"messages": records(self.keeper.take_mail(user, self.clock.seconds()))}

    def _deliver(self, worker: "WorkerProcess", batch: bytes) -> None:
        if worker in self.pool.live:  # it has not ended meanwhile
            worker.amp.send_batch(DeliverBatch, batch)


def records(messages: list[tuple[str, bytes]]) -> bytes:
    """Messages as (id, frame) in message records, for a worker."""
    return b"".join(pack_message(msg_id, b"", frame) for msg_id, frame in messages)


class HubProtocol(BatchPipe):
    """The master's end of one worker's AMP pipe."""

    batches = {PublishBatch.commandName: "publish"}

    def __init__(self, hub: Hub, worker: "WorkerProcess"):
        super().__init__()
        self.hub = hub
        self.worker = worker

    @Hello.responder
    def hello(self, index, owner):
        self.hub.pool.worker_ready(self.worker, owner)
        return {}

    @Subscribe.responder
    def subscribe(self, channels):
        self.hub.keeper.table.subscribe(self.worker, channels)
        return {}

    @Unsubscribe.responder
    def unsubscribe(self, channels):
        self.hub.keeper.table.unsubscribe(self.worker, channels)
        return {}

    @Member.responder
    def member(self, group, user, session, joined):
        return {"changed": self.hub.tally.change(self.worker, group, user, session, joined)}

    @CountConnections.responder
    def count_connections(self, counts):
        return self.hub.counted(self.worker, counts)

    @PublishBatch.responder
    def publish(self, batch):
        # An exception out of a responder would make AMP drop this worker's pipe.
        try:
            self.hub.forward(self.worker, batch)
        except (ValueError, struct.error):
            _log.failure("worker {index} sent a malformed PublishBatch",
                         index=self.worker.index)
        return {}

    @Replay.responder
    def replay(self, channels, since, epoch):
        return self.hub.replay(channels, since, epoch)

    @TakeMail.responder
    def take_mail(self, user):
        return self.hub.take_mail(user)

    @RunCommand.responder
    def run_command(self, name, args):
        return self.hub.pool.run_command(name, args).addCallback(
            lambda results: {"results": results})

    @GatherMetrics.responder
    def gather_metrics(self):
        return self.hub.pool.gather_metrics().addCallback(lambda values: {"values": values})
