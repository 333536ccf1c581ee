"""``resume``: the kept messages a session missed, replayed before the live
ones, each once (docs/protocol.md#history-and-resume)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..cursor import Replayed, cursor, shard_tag
from ..frames import position_of
from ..wire.values import Message
from ..protocol import BAD_REQUEST, CLOSE_TRY_AGAIN, UNAVAILABLE, ProtocolError, Request
from ..routing import session_channels
from ..sessions import Session

_log = Logger()

# Live messages one session may hold until its resume is replayed (and at
# most max_buffered_bytes of them, as for a client that reads slowly).
MAX_HELD = 10_000


class _Held(list):
    """The live messages held for a session until its replay is written:
    (id, position, its shard, prepared frame) each, and their ``bytes``."""

    bytes = 0


class Replays:
    """The sessions being replayed what they missed, and their held messages."""

    def __init__(self, engine):
        self.engine = engine
        self.held: dict[Session, _Held] = {}
        self.resumed: set[Session] = set()  # each has sent its one resume
        # the ids of the messages a session's user's mailbox gave it (auth):
        # its resume skips them
        self.mailed: dict[Session, set[str]] = {}

    def closed(self, session: Session) -> None:
        """``session`` has closed: what it held, its resume and mail go."""
        self.held.pop(session, None)
        self.resumed.discard(session)
        self.mailed.pop(session, None)

    def hold(self, session: Session) -> None:
        """Hold the live messages for ``session`` until its ``resume`` (a
        client that connects with ``?resume=1``): so none of them comes
        before, or twice with, what the replay gives."""
        self.held.setdefault(session, _Held())

    def resume(self, session: Session, request: Request) -> Deferred:
        """``resume``: the kept messages of the session's channels after
        ``since``, then ``ok`` with their count and the channels with a gap
        (and, with Redis shards, those whose shard cannot be read now:
        ``unavailable``).

        Live messages for the session wait until the replay is written; one
        that is also in the replay is written once, in its replay place.
        """
        if session in self.resumed:  # one replay per connection: each costs the keeper a scan
            raise ProtocolError(BAD_REQUEST, "this session has resumed already")
        self.resumed.add(session)
        self.hold(session)  # held since it connected (?resume=1), or from now on
        d = self.engine.broker.replay(session_channels(session), request.since,
                                      request.epoch)
        return d.addBoth(self._replayed, session, request)

    def _replayed(self, result, session: Session, request: Request) -> None:
        engine = self.engine
        if session not in self.held:  # closed meanwhile
            return
        if isinstance(result, Failure):
            _log.failure("reading the history for session {session} (user {user}) failed",
                         result, session=session.id, user=session.user)
            self._end(session, set(), self._since(request))
            self.resumed.discard(session)  # it may try again
            raise ProtocolError(UNAVAILABLE, "the history cannot be read now")
        replayed = Replayed(*result)
        messages = replayed.messages
        mailed = self.mailed.get(session)
        if mailed:
            messages = [(i, frame) for i, frame in messages if i not in mailed]
        for _, frame in messages:
            engine.reply(session, frame)
        engine.after_replies(session, self._end, session,
                             {msg_id for msg_id, _ in messages}.union(replayed.had),
                             self._since(request))
        more = {"unavailable": replayed.unavailable} if replayed.unavailable else {}
        engine.ok(session, request, replayed=len(messages), gaps=replayed.gaps, **more)

    def _since(self, request: Request) -> list[int | None]:
        """Per shard, the position the client had, when it counts in that
        shard's epoch (``cursor``)."""
        return cursor(request.since, request.epoch, self.engine.broker.epoch)

    def _end(self, session: Session, skip: set[str], since: list[int | None]) -> None:
        """Write the live messages held for the session, but those of ``skip``
        (replayed, or had) and those the client had before (at or below its
        position on their shard, when that counts in the shard's epoch)."""
        for msg_id, position, shard, prepared in self.held.pop(session, ()):
            if msg_id in skip:
                continue
            had = since[shard] if shard < len(since) else None
            if had is None or position is None or position > had:
                session.conn.send_prepared(prepared)

    def live(self, targets, message: Message, prepared) -> list[Session]:
        """The targets not being replayed to; the others hold the message."""
        live = []
        limit = self.engine.settings.max_buffered_bytes
        for session in targets:
            held = self.held.get(session)
            if held is None:
                live.append(session)
            elif len(held) < MAX_HELD and held.bytes + len(message.frame) <= limit:
                held.append((message.id, position_of(message.frame),
                             shard_tag(message.frame), prepared))
                held.bytes += len(message.frame)
            else:  # it would rather reconnect than wait this long
                del self.held[session]
                session.conn.close(CLOSE_TRY_AGAIN, "too many messages during the resume")
        return live
