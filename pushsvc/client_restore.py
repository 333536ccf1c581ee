"""How ``PushClient`` (pushsvc/client_reconnecting.py) restores a new
connection: authenticates again, joins its groups again, resumes from the
last ``pos`` (with Redis shards, the last of each shard: ``pushsvc.cursor``);
and how it hands messages on: each once, the ones held while resuming sorted
by ``pos`` (with shards, in the server's order), the ones already had dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList

from .client_connection import ConnectionClosed, ServerError
from .cursor import SEPARATOR

if TYPE_CHECKING:
    from .client_reconnecting import _Connection


RECENT_IDS = 1024  # ids of kept messages remembered (``Recent``)


class Recent:
    """The last ``size`` message ids seen: a message comes once, though a
    replay may hold one that came live, and with Redis shards a message had
    through a shard that lost its history may be replayed from another one
    (docs/protocol.md, "Resume with Redis shards")."""

    def __init__(self, size: int = RECENT_IDS):
        self.size = size
        self._ids: OrderedDict[Any, None] = OrderedDict()

    def seen(self, msg_id: Any) -> bool:
        """Whether ``msg_id`` was seen already; it is remembered."""
        if msg_id in self._ids:
            return True
        self._ids[msg_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


def fresh(epoch: str | None) -> list[int | None]:
    """No position yet on each shard of ``epoch``."""
    return [None] * (epoch.count(SEPARATOR) + 1 if epoch else 1)


class _Restoring:
    """PushClient's restoring of a connection and delivery of messages (a
    mixin: the state is PushClient's).  ``positions``: the last ``pos`` had
    on each shard (one with one Redis, or none), in ``pos_epoch``."""

    def _deliver(self, frame: dict[str, Any]) -> None:
        """Hand on ``frame`` unless it was had: a kept message (with ``pos``)
        whose id came lately.  A ``pos`` at or below the last of its shard
        with a new id is that shard's history numbering again (its Redis lost
        its data): the message is handed on, and the next resume, with the
        old epoch, hears of the gap."""
        pos, shard = frame.get("pos"), frame.get("shard", 0)
        if isinstance(pos, int) and isinstance(shard, int):
            if self.pos_epoch != self.epoch:
                self.pos_epoch, self.positions = self.epoch, fresh(self.epoch)
            if 0 <= shard < len(self.positions):
                self.positions[shard] = pos
            if self._recent.seen(frame.get("id")):
                return  # had it already (replayed, or through another shard)
        self._emit("message", frame)

    def _flush_buffer(self) -> None:
        """Deliver the messages held while resuming: one of each (one may
        arrive live after a join and again in the replay), the kept ones in
        ``pos`` order, then the others."""
        held, self._buffer = self._buffer, None
        seen: set[Any] = set()
        kept, unkept = [], []
        for frame in held or ():
            if frame.get("id") in seen:
                continue
            seen.add(frame.get("id"))
            (kept if isinstance(frame.get("pos"), int) else unkept).append(frame)
        if not any("shard" in f for f in kept):  # with shards, the server's order
            kept.sort(key=lambda f: f["pos"])
        for frame in kept + unkept:
            self._deliver(frame)

    def _rejoin(self, conn: _Connection, group: str) -> Deferred:
        d = self._join_fields(group, self._join_options.get(group, {}))
        return d.addCallback(lambda fields: self._send(conn, "join", fields))

    async def _restore(self, conn: _Connection) -> None:
        resuming = self._resuming
        self._buffer = [] if resuming else None
        try:
            if self._credentials is not None:
                fields = await self._credential_fields(self._credentials)
                await self._send(conn, "auth", fields)
            groups = sorted(self.groups)
            results = await DeferredList([self._rejoin(conn, g) for g in groups],
                                         consumeErrors=True)
            for group, (ok, result) in zip(groups, results):
                if not ok:
                    if result.check(ConnectionClosed):
                        result.raiseException()
                    # Refused now (or its token function failed): no longer
                    # one of ours, and said so.
                    self._forget(group)
                    if result.check(ServerError):
                        result.value.group = group
                    self._emit("error", result.value)
            if resuming:
                await self._resume(conn)
        except ConnectionClosed:
            return  # _lost takes it from here
        except Exception as e:
            # An auth refused: the server closes with 1008 next.
            if conn is self.protocol:
                self._flush_buffer()
                self._emit("error", e)
            return
        if conn is not self.protocol:
            return
        self.attempt = 0
        self._ever_ready = True
        self._set_state("ready", session=self.session)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)
        queue, self._queue = self._queue, []
        for op, fields, d in queue:
            self._send(conn, op, fields, d)

    async def _resume(self, conn: _Connection) -> None:
        # With no kept message yet: from the start of the first history seen
        # (a server without history, ttl = 0, answers with every channel a gap).
        positions = [pos or 0 for pos in self.positions]
        since = positions[0] if len(positions) == 1 else positions
        epoch = self.pos_epoch if self.pos_epoch is not None else (self.epoch or "")
        changed = epoch != self.epoch
        try:
            ok = await self._send(conn, "resume", {"since": since, "epoch": epoch})
        except ServerError as e:  # "unavailable": the history cannot be read now
            self._flush_buffer()
            self._emit("error", e)
            self._emit("gap", {"channels": None, "epoch_changed": changed, "since": since,
                               "error": e})
            return
        if changed:  # positions in a shard's old history mean nothing now
            old, new = epoch.split(SEPARATOR), (self.epoch or "").split(SEPARATOR)
            self.positions = ([pos if a == b else None
                               for pos, a, b in zip(self.positions, old, new)]
                              if len(old) == len(new) == len(self.positions)
                              else fresh(self.epoch))
            self.pos_epoch = self.epoch
        self._flush_buffer()
        info = {"since": since, "epoch": epoch, "replayed": ok.get("replayed", 0),
                "gaps": ok.get("gaps", []), "epoch_changed": changed}
        unavailable = ok.get("unavailable", [])
        if unavailable:
            info["unavailable"] = unavailable
        self._emit("resumed", info)
        if info["gaps"] or unavailable:
            gap = {"channels": sorted(set(info["gaps"]) | set(unavailable)),
                   "epoch_changed": changed, "since": since}
            if unavailable:
                gap["unavailable"] = unavailable
            self._emit("gap", gap)
