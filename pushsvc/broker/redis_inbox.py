"""What a ``RedisBroker`` hands its engine's sessions, from wherever it comes.

From Redis.  The publish script publishes, per channel, one payload holding
a header (the publisher's member id, the call's number and the call's first
position) and the records of that call's messages on that channel, each with
its index among the call's kept messages: every receiver splices its
position into the frame (``frames.with_position``), so every copy carries
the same bytes.  A script runs atomically, so a subscriber receives the
copies of one call back to back: a message published on several channels it
subscribes to is delivered from the first copy, and the others are dropped by
id (only ids of multi-channel messages of the current call are remembered).

Its own.  The publisher delivers to its own sessions from its own copies
(``await_own``), so that they get messages in position order with everyone
else's; while its subscriber is away, or when a call fails, it delivers them
at once, without positions (``at_once``).

From the hub.  While Redis is away, a pool worker gets the messages the
node's other workers queue for Redis through the hub (``deliver_relayed``):
it delivers each and keeps its id, per origin engine, at most as many as
the origin's queue holds and for ``QUEUE_MAX_AGE`` plus ``hold_time``
seconds; when Redis is back and the origin sends its queue, this node's
workers drop the Redis copy of an id they kept (``_was_relayed``), while the
other nodes deliver it, numbered (the ids, rather than a mark in the Redis
payloads, keep their format: nodes of two versions still read each other's).
"""

from __future__ import annotations

import json
import struct
import sys
from collections import deque

from twisted.logger import Logger

from ..frames import with_position
from ..protocol import parse_address
from .interface import Message
from .redis_context import QUEUE_MAX_AGE, Context
from .redis_scripts import parse_payload

__all__ = ["Inbox", "OWN_CALLS_KEPT"]

_log = Logger()

OWN_CALLS_KEPT = 10000  # script calls whose copies the publisher awaits, at most


class Inbox:
    """Delivers to ``context.receiver``: the payloads from Redis, this
    engine's own messages back from Redis, the hub's relays, and what cannot
    wait for Redis."""

    def __init__(self, context: Context):
        self.context = context
        # The script calls whose copies come back to this engine's own
        # sessions: (call number, {id: message}), oldest first.
        self._own: deque[tuple[int, dict[str, Message]]] = deque()
        self._burst_own = 0          # the last of them that began to come back
        self._direct: list[Message] = []  # for local sessions at once (no subscriber)
        self._direct_call = None
        # The ids of the messages the hub relayed here from the node's other
        # workers while Redis was away, per origin engine, oldest first, with
        # when they came: their Redis copies, when Redis is back, are dropped.
        self._relayed: dict[str, dict[str, float]] = {}
        self.relayed_kept = QUEUE_MAX_AGE + context.hold_time  # seconds an id is remembered
        self._burst: tuple[bytes, int] | None = None  # the script call being received
        self._seen: set[str] = set()  # its multi-channel message ids delivered

    # -- from Redis ---------------------------------------------------------

    def on_messages(self, payload: bytes) -> None:
        """A payload of the publish script, from the subscriber."""
        ctx = self.context
        try:
            origin, seq, records = parse_payload(payload)
        except (ValueError, struct.error, StopIteration, UnicodeDecodeError) as e:
            ctx.bad("a message payload", e)
            return
        if origin == ctx.id_b:
            self._own_copies(seq, records)
            return
        if (origin, seq) != self._burst:
            self._burst = (origin, seq)
            self._seen = set()
        deliver = []
        relayed = self._relayed
        for several, position, msg_id, to, frame in records:
            if several:
                if msg_id in self._seen:
                    ctx.counters["duplicates"] += 1
                    continue
                self._seen.add(msg_id)
            if relayed and self._was_relayed(msg_id):  # the hub brought it during an outage
                ctx.counters["duplicates"] += 1
                continue
            deliver.append((position, msg_id, to, frame))
        alone = len(deliver) == 1
        for position, msg_id, to, frame in deliver:
            ctx.counters["received"] += 1
            try:
                if position is not None:
                    frame = with_position(frame, position)
                message = Message(msg_id, parse_address(json.loads(to), sys.maxsize), frame)
                ctx.receiver.deliver(message, alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=msg_id)

    # -- from the hub -------------------------------------------------------

    def deliver_relayed(self, message: Message, alone: bool = False) -> None:
        """A message another worker of this node relayed through the hub
        while Redis was away (``Publisher._relay``): delivered now, and its
        id kept until its copy from Redis comes (``_was_relayed``), at most
        ``relayed_kept`` seconds and, per origin, as many as its queue holds
        (``max_queued_messages``)."""
        ctx = self.context
        ctx.counters["from_hub"] += 1
        origin = message.id.rpartition(".")[0]
        ids = self._relayed.get(origin)
        if ids is None:
            ids = self._relayed[origin] = {}
        ids.pop(message.id, None)
        ids[message.id] = ctx.clock.seconds()
        if len(ids) > ctx.settings.redis_max_queued:
            del ids[next(iter(ids))]
        ctx.receiver.deliver(message, alone)

    def _was_relayed(self, msg_id: str) -> bool:
        """Whether ``msg_id`` came through the hub already (forgotten now)."""
        origin = msg_id.rpartition(".")[0]
        ids = self._relayed.get(origin)
        if not ids or ids.pop(msg_id, None) is None:
            return False
        if not ids:
            del self._relayed[origin]
        return True

    def forget_relayed(self) -> None:
        """Let go of the relayed ids whose Redis copies can no longer come."""
        if not self._relayed:
            return
        until = self.context.clock.seconds() - self.relayed_kept
        for origin, ids in list(self._relayed.items()):
            while ids and next(iter(ids.values())) < until:
                del ids[next(iter(ids))]
            if not ids:
                del self._relayed[origin]

    # -- this engine's own --------------------------------------------------

    def await_own(self, seq: int, local: dict[str, Message]) -> None:
        """Script call ``seq`` carries ``local`` ({id: message}) for this
        engine's sessions too: delivered from its copies, numbered, or at
        once while the subscriber is away."""
        if self.context.sub_ready:  # they come back from Redis, numbered
            self._own.append((seq, local))
            if len(self._own) > OWN_CALLS_KEPT:
                self._own.popleft()
        else:
            self.at_once(list(local.values()))

    def own_failed(self, seq: int) -> None:
        """Script call ``seq`` failed: its own sessions have it at once
        (those awaiting its copy)."""
        for n, (call, local) in enumerate(self._own):
            if call == seq:
                del self._own[n]
                self.at_once(list(local.values()))
                break

    def _own_copies(self, seq: int, records) -> None:
        """This engine's own messages back from Redis: delivered to its
        sessions (those it awaits, each once), with their positions."""
        self._burst_own = seq
        own = self._own
        while own and own[0][0] < seq:  # their calls are over
            own.popleft()
        if not own or own[0][0] != seq:
            return
        waiting = own[0][1]
        deliver = []
        for _, position, msg_id, _, _ in records:
            message = waiting.pop(msg_id, None)
            if message is None:
                continue
            if position is not None:
                message = Message(msg_id, message.to, with_position(message.frame, position),
                                  message.to_text)
            deliver.append(message)
        self._deliver_all(deliver)

    def own_lost(self) -> None:
        """The subscriber went: what it had still to bring back of calls it
        had not begun to bring goes to the local sessions at once."""
        last = self._burst_own
        own, self._own = self._own, deque()
        self.at_once([message for seq, waiting in own if seq > last
                      for message in waiting.values()])

    # -- without Redis ------------------------------------------------------

    def at_once(self, messages: list[Message]) -> None:
        """Deliver ``messages`` to local sessions (at the end of this turn),
        without waiting for Redis: its subscriber is away, or the call failed."""
        if not messages:
            return
        self._direct += messages
        if self._direct_call is None:
            self._direct_call = self.context.clock.callLater(0, self._deliver_direct)

    def _deliver_direct(self) -> None:
        self._direct_call = None
        messages, self._direct = self._direct, []
        self._deliver_all(messages)

    def _deliver_all(self, messages: list[Message]) -> None:
        alone = len(messages) == 1
        for message in messages:
            try:
                self.context.receiver.deliver(message, alone)
            except Exception:
                _log.failure("delivering message {id} failed", id=message.id)
