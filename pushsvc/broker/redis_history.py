"""What a ``RedisBroker`` reads back from the history in Redis: a resuming
session's missed messages (``replay``, ``REPLAY_SCRIPT``) and a user's
mailbox (``mail``, ``TAKE_MAIL_SCRIPT``).  The keys and what the scripts
keep are described in ``redis_scripts``; the writes are the publish
script's (``redis_publish``).
"""

from __future__ import annotations

import json
from typing import Callable

import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ..frames import with_position
from ..history import in_order
from ..protocol import Address
from ..routing import channels as route
from .redis_context import Context
from .redis_scripts import (REPLAY_SCRIPT, TAKE_MAIL_SCRIPT, mail_key, parse_body,
                            parse_replay, utf8 as _utf8)

__all__ = ["HistoryReader"]

_log = Logger()


class HistoryReader:
    """Replays and mailboxes from Redis.

    ``flush()`` sends this engine's pending publishes (numbered before a
    replay reads); ``standing(channel)`` fires once this engine's last
    subscription to ``channel`` stands in Redis."""

    def __init__(self, context: Context, flush: Callable[[], None],
                 standing: Callable[[str], Deferred]):
        self.context = context
        self.flush = flush
        self.standing = standing

    def replay(self, channels, since, epoch) -> Deferred:
        """The kept messages of ``channels`` after ``since`` and their gaps,
        read from Redis (``REPLAY_SCRIPT``); this engine's pending publishes
        are numbered first."""
        ctx = self.context
        channels = sorted(set(channels))
        limits = ctx.limits()
        if limits.ttl <= 0 or not epoch:
            return succeed(([], channels))
        self.flush()
        d = ctx.eval(REPLAY_SCRIPT, ctx.history_keys, [
            int(limits.ttl * 1000), limits.max_memory, ctx.prefix, _utf8(epoch),
            str(since), *map(_utf8, channels)])

        def answered(answer):
            state, gaps, entries = parse_replay(answer)
            if not state:
                if len(answer) > 1:
                    ctx.set_epoch(answer[1])
                return [], channels
            ctx.set_epoch(answer[1])
            found, wanted = [], set(channels)
            for position, raw in entries:
                msg_id, frame = parse_body(raw)
                if not wanted.intersection(route(Address.from_json(json.loads(frame)["to"]))):
                    # A channel's list outlived the history it points into (keys
                    # evicted or deleted): never hand over another's message.
                    _log.warn("the history in Redis is inconsistent; resume reports gaps")
                    return [], channels
                found.append((position, msg_id, with_position(frame, position)))
            return in_order(found), channels if state == 2 else gaps
        return d.addCallback(answered)

    def mail(self, user) -> Deferred:
        """What the mailbox of ``user`` holds (``TAKE_MAIL_SCRIPT``), once
        this engine's subscription to the user stands in Redis (from then
        on, a stored push finds the user online)."""
        ctx = self.context
        limits = ctx.limits()
        if limits.ttl <= 0 or ctx.cmd.protocol is None:
            return succeed([])
        ready = self.standing(f"user:{user}")
        key = mail_key(ctx.prefix, user)
        ready.addCallback(lambda _: ctx.eval(TAKE_MAIL_SCRIPT, [key],
                                             [int(limits.ttl * 1000)]))

        def taken(bodies):
            return [parse_body(raw) for raw in bodies]

        def away(failure):
            failure.trap(txredisapi.ConnectionError)
            return []
        return ready.addCallbacks(taken, away)
