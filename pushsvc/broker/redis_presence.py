"""Presence members decided in Redis (``IBroker.member``), one part of a
``RedisBroker``: the calls of ``redis_presence_lua``'s scripts.

``member`` adds or removes one entry (a session of a user in a group) and
answers whether it was the user's first or last: the script decides once
for every node.  This engine remembers the entries it holds (with each
member's data), so that Redis can be set right when it lost track:

- at each heartbeat (``beat``) the member is kept alive, the members whose
  heartbeat stopped (a node or worker that died, or stopped: ``stop``) are
  swept, and the users whose last entry they held are handed to
  ``on_member`` here, once in the cluster (the sweeping engine announces
  their ``member_removed``);
- when the member's entries in Redis are not those it holds (a call lost
  with the connection, or its entries swept while it was only cut off
  longer than the heartbeat's ``ttl``), ``SYNC_SCRIPT`` makes them so, and
  each transition it makes goes to ``on_member`` too (a member announced
  removed while cut off is announced added again).

A change whose call fails (Redis away) fails the caller's Deferred; the
next heartbeat after the connection is back syncs, and announces what the
failed call would have.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .redis_context import Context, RepeatedError
from .redis_presence_lua import (BEAT_SCRIPT, CHANGE_SCRIPT, STOP_SCRIPT, SYNC_SCRIPT,
                                 entry, parse_beat, parse_entry, parse_sync, presence_keys)

__all__ = ["Presence"]

_log = Logger()


class Presence:
    """This engine's presence entries in Redis (see the module docstring)."""

    def __init__(self, context: Context):
        self.context = context
        self.keys = presence_keys(context.prefix)   # holders first
        self.entries: dict[bytes, Any] = {}   # entry -> the member's data
        self.left: set[bytes] = set()        # entries whose leave Redis may not know
        self.on_member: Callable[[str, str, Any, bool], None] | None = None
        self._dirty = False    # a call failed: Redis may not hold what this engine does
        self._beating = False
        self._error = RepeatedError("the presence heartbeat")

    def _args(self, *more) -> list:
        ctx = self.context
        return [ctx.id_b, ctx.ttl_ms, *more]

    def member(self, group: str, user: str, session: str, joined: bool,
               info: Any = None) -> Deferred:
        """Add (``joined``) or remove one entry; True for a transition."""
        key = entry(group, user, session)
        if joined:
            self.entries[key] = info
            self.left.discard(key)
        else:
            self.entries.pop(key, None)
        d = self.context.eval(CHANGE_SCRIPT, self.keys,
                              self._args(b"1" if joined else b"0", key))
        return d.addCallbacks(lambda answer: int(answer) == 1, self._lost,
                              errbackArgs=(None if joined else key,))

    def _lost(self, failure: Failure, left: bytes | None = None) -> Failure:
        self._dirty = True  # the next heartbeat syncs
        if left is not None:
            self.left.add(left)
        return failure

    # -- heartbeat ------------------------------------------------------------

    def beat(self) -> None:
        """Stay alive, sweep the dead, sync when out of step."""
        ctx = self.context
        if self._beating or ctx.cmd.protocol is None or ctx.closed:
            return
        self._beating = True
        if self._dirty:
            d = self._sync()
        else:
            d = ctx.eval(BEAT_SCRIPT, self.keys, self._args(len(self.entries)))
            d.addCallback(self._beaten)
        d.addCallbacks(self._ok, self._failed)

    def _beaten(self, answer) -> Deferred | None:
        in_step, gone = parse_beat(answer)
        if gone:
            _log.info("presence in redis: {count} members left with engines that "
                      "stopped beating", count=len(gone))
        for group, user in gone:
            self._tell(group, user, None, False)
        return None if in_step else self._sync()

    def _sync(self) -> Deferred:
        self._dirty = False
        left, self.left = self.left, set()
        d = self.context.eval(SYNC_SCRIPT, self.keys,
                              self._args(len(self.entries), *self.entries, *left))

        def synced(answer) -> None:
            if answer:
                _log.info("presence in redis counted again: {count} members changed",
                          count=len(answer) // 2)
            for joined, raw in parse_sync(answer):
                group, user, _ = parse_entry(raw)
                self._tell(group, user, self.entries.get(raw), joined)
        def failed(failure: Failure) -> Failure:
            self.left |= left - self.entries.keys()
            return self._lost(failure)
        return d.addCallbacks(synced, failed)

    def _tell(self, group: str, user: str, info: Any, joined: bool) -> None:
        if self.on_member is None:
            return
        try:
            self.on_member(group, user, info, joined)
        except Exception:
            _log.failure("announcing a presence change of {user} in {group} failed",
                         user=user, group=group)

    def _ok(self, _) -> None:
        self._beating = False
        self._error.ok()

    def _failed(self, failure: Failure) -> None:
        self._beating = False
        self._error.failed(failure)

    def stop(self) -> None:
        """This engine stops: the others' next heartbeat sweeps its entries
        (their ``member_removed`` announced there)."""
        ctx = self.context
        if ctx.cmd.protocol is not None:
            ctx.eval(STOP_SCRIPT, self.keys[:1], [ctx.id_b]).addErrback(lambda _: None)
