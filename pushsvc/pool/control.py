"""What the console drives in a pool (``IControl``): the master asks the workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import fail
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import loglevel
from ..config import ConfigError
from ..control import ControlError, IControl
from ..wire.worker_commands import Perform, Refused, SetLogLevel, protocol_error

if TYPE_CHECKING:
    from .supervisor import Pool


@implementer(IControl)
class PoolControl:
    """The console's view of a pool (``IControl``): the master asks the workers."""

    def __init__(self, pool: "Pool"):
        self.pool = pool

    def run(self, name, args):
        return self.pool.run_command(name, args)

    def push(self, to, data):
        ready = [w for w in self.pool.workers.values() if w.ready]
        if not ready:
            return fail(ControlError("no worker is ready; try again in a moment"))
        d = ready[0].amp.callRemote(Perform, name="publish", args={"to": to, "data": data})
        return d.addCallbacks(lambda answer: answer["result"]["id"], _unrefuse)

    def workers(self):
        d = self.pool.ask_all(Perform, name="stats", args={})
        stats = {}

        def listed(answers):
            for worker, answer in answers:
                if not isinstance(answer, Failure):
                    stats[worker] = answer["result"]["sessions"]
            return [{**w.describe(), "sessions": stats.get(w), "restarts": self.pool.restarts}
                    for w in sorted(self.pool.live, key=lambda w: (w.index, w.started))]
        return d.addCallback(listed)

    def reload(self):
        reloads = self.pool.reloads  # GET /metrics: pushsvc_reloads_total
        try:
            settings = self.pool.settings.reread()
        except ConfigError as e:
            reloads["failed"] += 1
            return fail(e)

        def count(results):
            reloads["ok" if all(r["ok"] for r in results) else "failed"] += 1
            return results
        return self.pool.reload(settings).addCallback(count)

    def restart_workers(self):
        return self.pool.restart_workers()

    def set_log_level(self, level):
        """The master's level, then every worker's (a new worker starts with it)."""
        try:
            loglevel.set_level(level)
        except ValueError as e:
            return fail(ControlError(str(e)))
        return self.pool.ask_all(SetLogLevel, level=level).addCallback(lambda _: None)


def _unrefuse(failure):
    failure.trap(Refused)
    raise protocol_error(failure.value)
