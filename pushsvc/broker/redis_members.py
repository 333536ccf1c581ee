"""The members of a Redis cluster: heartbeat, node names and cluster commands.

Heartbeat.  Every ``[redis] heartbeat`` seconds each broker runs
``HEARTBEAT_SCRIPT``: it claims its node name (``PREFIX_node:NODE``, held
with this node's ``token``: a second node of the same name is fatal once the
first has had time to go), registers in ``PREFIX_members`` (only once its
subscriber has every channel again: a registered member hears everything),
learns the live members and the history's epoch, and PINGs the subscriber.
Live members are those in ``_members`` whose heartbeat is not older than
three intervals.

Commands.  ``command`` runs the command here and publishes it on ``_cmd``
with a request id; every other live member runs it and publishes its result
on the asker's reply channel.  The asker waits for every one of them, or
``timeout`` seconds and logs who did not answer.  While Redis is away,
commands answer for this node alone: a pool worker's go to the hub's
``RunCommand`` (every worker of this node answers, as in a pool without
Redis), with ``--workers 0`` this engine alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Callable

import txredisapi
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..commands import COMMANDS
from ..protocol import ProtocolError
from ..wire.hub_commands import RunCommand
from .interface import Command
from .redis_context import MISSED_BEATS, Context, RepeatedError
from .redis_link import _reason
from .redis_scripts import HEARTBEAT_SCRIPT, MEMBERS_SCRIPT, utf8 as _utf8

__all__ = ["Members", "MEMBER_RE"]

_log = Logger()

MEMBER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")


@dataclass
class _Request:
    """A cluster command waiting for the other members' results."""
    name: str
    expected: set[str]
    done: Deferred = field(default_factory=Deferred)
    results: list[Any] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    timer: Any = None


class Members:
    """This engine as a member: its heartbeat, the live members (``live``)
    and the cluster commands it asks and answers.

    ``on_beat()`` runs at every beat (before the heartbeat script);
    ``on_fatal(reason)`` when another node holds this node's name.
    """

    def __init__(self, context: Context, on_beat: Callable[[], None],
                 on_fatal: Callable[[str], None]):
        self.context = context
        self.on_beat = on_beat
        self.on_fatal = on_fatal
        self.live: list[str] = []   # the live members at the last heartbeat
        self._rids = count(1)
        self._requests: dict[int, _Request] = {}
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = context.clock
        self._beating = False
        self._again = False    # beat_now asked while a beat was under way
        self._claim_lost_since: float | None = None
        self._beat_error = RepeatedError("the redis heartbeat")

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        self._heartbeat.start(self.context.interval, now=False).addErrback(
            lambda f: _log.failure("the redis heartbeat stopped", f))

    def stop(self) -> None:
        """No more beats; every command waiting for results ends with those in."""
        if self._heartbeat.running:
            self._heartbeat.stop()
        for rid in list(self._requests):
            self._finish(rid)

    def leave(self) -> Deferred:
        """Leave the members (at close); fires when done, or after ``timeout``."""
        ctx = self.context
        d = succeed(None)
        if ctx.cmd.protocol is not None:
            d = maybeDeferred(ctx.cmd.protocol.execute_command, "ZREM",
                              ctx.members_key, ctx.id_b)
            d.addTimeout(ctx.timeout, ctx.clock).addErrback(lambda _: None)
        return d

    def registered(self, since) -> Deferred:
        """``(now, members)`` from ``MEMBERS_SCRIPT``: the live members, those
        registered since ``since`` (a time it answered) when not None."""
        ctx = self.context
        return ctx.eval(MEMBERS_SCRIPT, [ctx.members_key], [
            "" if since is None else since, ctx.ttl_ms])

    # -- heartbeat ------------------------------------------------------------

    def beat_now(self) -> None:
        """Beat at once (the subscriber is ready: register now), or right
        after the beat under way, which may have gone out before it was."""
        self.context.clock.callLater(0, self._beat_soon)

    def _beat_soon(self) -> None:
        if self._beating:
            self._again = True
        else:
            self._beat()

    def _beat(self) -> None:
        """Claim the node name, register (once subscribed), learn the members;
        PING the subscriber."""
        ctx = self.context
        ctx.sub.ping(ctx.clock.seconds())
        self.on_beat()
        if self._beating or ctx.cmd.protocol is None or ctx.closed:
            return
        self._beating = True
        d = ctx.eval(HEARTBEAT_SCRIPT, [ctx.members_key, ctx.node_key, *ctx.history_keys],
                     [ctx.id_b, ctx.ttl_ms, _utf8(ctx.token),
                      b"1" if ctx.sub_ready else b"0", ctx.candidate()])
        d.addCallbacks(self._beaten, self._beat_error.failed)
        d.addBoth(self._beat_done)

    def _beat_done(self, _) -> None:
        self._beating = False
        if self._again:
            self._again = False
            self._beat()

    def _beaten(self, result) -> None:
        ctx = self.context
        claimed, holder, members, epoch = result
        self._beat_error.ok()
        self.live = [m.decode("utf-8", "replace") for m in members]
        ctx.set_epoch(epoch)
        if claimed:
            self._claim_lost_since = None
            return
        holder = holder.decode("utf-8", "replace")
        now = ctx.clock.seconds()
        grace = (MISSED_BEATS + 1) * ctx.interval
        if self._claim_lost_since is None:
            self._claim_lost_since = now
            _log.warn("node name {node!r} is held in redis by another process ({holder}): "
                      "a node that stopped less than {ttl:g} s ago, or another node with "
                      "the same name; waiting up to {grace:g} s for it to go",
                      node=ctx.node, holder=holder, ttl=MISSED_BEATS * ctx.interval,
                      grace=grace)
        elif now - self._claim_lost_since >= grace:
            self._claim_lost_since = None
            self.on_fatal(f"another pushsvc node ({holder}) runs with the node name "
                          f"{ctx.node!r} on {ctx.url.describe()}: give each node its "
                          "own --node")

    # -- commands -------------------------------------------------------------

    def command(self, command) -> Deferred:
        """Run ``command`` here and on every other live member; their results.

        While Redis is away: on every worker of this node through the hub (a
        pool worker), else here alone."""
        if self.context.health() is not None:
            return self._node_command(command)
        local = maybeDeferred(self.context.receiver.perform, command)
        remote = self._ask(command)
        d = DeferredList([local, remote], fireOnOneErrback=True, consumeErrors=True)

        def both(results):
            return [results[0][1]] + results[1][1]

        def first_error(failure):
            return failure.value.subFailure
        return d.addCallbacks(both, first_error)

    def _node_command(self, command) -> Deferred:
        """``command`` on this node only: every ready worker's result through
        the hub (``RunCommand``, as the ``AmpBroker`` does), or this engine's."""
        ctx = self.context
        if ctx.hub is None:
            return maybeDeferred(ctx.receiver.perform, command).addCallback(
                lambda result: [result])
        d = ctx.hub.callRemote(RunCommand, name=command.name, args=command.args)
        return d.addCallback(lambda answer: answer["results"])

    def _ask(self, command) -> Deferred:
        ctx = self.context
        d = self.registered(None)

        def members(result):
            self.live = [m.decode("utf-8", "replace") for m in result[1]]
            expected = set(self.live) - {ctx.id}
            if not expected:
                return []
            if ctx.cmd.protocol is None:
                raise txredisapi.ConnectionError("connection lost")
            rid = next(self._rids)
            request = self._requests[rid] = _Request(command.name, expected)
            payload = json.dumps({"rid": rid, "from": ctx.id, "name": command.name,
                                  "args": command.args}, separators=(",", ":"))
            ctx.cmd.protocol.publish(ctx.cmd_key, payload.encode("utf-8")).addErrback(
                lambda f: self._finish(rid))
            request.timer = ctx.clock.callLater(ctx.timeout, self._finish, rid)
            return request.done

        def alone(failure):
            _log.warn("command {name} answered by this process alone: {error}",
                      name=command.name, error=_reason(failure))
            return []
        return d.addCallback(members).addErrback(alone)

    def on_request(self, payload: bytes) -> None:
        """A command another member asks (on ``_cmd``): run here, the result
        published on its reply channel."""
        try:
            request = json.loads(payload)
            rid, origin = request["rid"], request["from"]
            name, args = request["name"], request["args"]
            if (not isinstance(rid, int) or not isinstance(origin, str)
                    or not MEMBER_RE.match(origin) or name not in COMMANDS
                    or not isinstance(args, dict)):
                raise ValueError(f"bad command request {payload[:200]!r}")
        except (ValueError, KeyError, TypeError) as e:
            self.context.bad("a command", e)
            return
        if origin == self.context.id:
            return
        d = maybeDeferred(self.context.receiver.perform, Command(name, args))

        def failed(failure):
            if not failure.check(ProtocolError):
                _log.failure("command {name} from {origin} failed", failure, name=name,
                             origin=origin)
            return {"error": _reason(failure)}
        d.addCallbacks(lambda result: {"result": result}, failed)
        d.addCallback(self._answer, rid, origin)

    def _answer(self, answer: dict, rid: int, origin: str) -> None:
        ctx = self.context
        proto = ctx.cmd.protocol
        if proto is None:
            return
        answer.update(rid=rid, member=ctx.id)
        proto.publish(ctx.prefix + _utf8(f"_reply:{origin}"),
                      json.dumps(answer, separators=(",", ":")).encode("utf-8")
                      ).addErrback(lambda _: None)

    def on_reply(self, payload: bytes) -> None:
        """A member's result (on this member's reply channel)."""
        try:
            answer = json.loads(payload)
            rid, member = answer["rid"], answer["member"]
        except (ValueError, KeyError, TypeError) as e:
            self.context.bad("a command result", e)
            return
        request = self._requests.get(rid)
        if request is None or member in request.answered:
            return  # too late, or twice
        request.answered.add(member)
        if "result" in answer:
            request.results.append(answer["result"])
        else:
            _log.warn("command {name} failed on {member}: {error}", name=request.name,
                      member=member, error=answer.get("error"))
        if request.expected <= request.answered:
            self._finish(rid)

    def _finish(self, rid: int) -> None:
        request = self._requests.pop(rid, None)
        if request is None:
            return
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        missing = request.expected - request.answered
        if missing and not self.context.closed:
            _log.warn("command {name}: no answer from {members} within {timeout:g} s",
                      name=request.name, members=", ".join(sorted(missing)),
                      timeout=self.context.timeout)
        request.done.callback(request.results)
