"""What the admin console drives: a running pushsvc, one process or a pool.

``IControl`` is served by ``LocalControl`` (``--workers 0``: the one process)
and by the master of a worker pool (``pushsvc.pool.control.PoolControl``).  The
admin endpoint (``pushsvc.admin``) only ever talks to an ``IControl``.

Every method returns a Deferred.  A result that concerns workers is a list
with one entry per worker, each naming its ``worker`` (the index).  A failure
the operator should read (a refused argument, a config file that does not
validate, an operation this server cannot do) is a ProtocolError, ConfigError
or ControlError; the console shows its message.
"""

from __future__ import annotations

import os

from twisted.internet.defer import fail, maybeDeferred, succeed
from zope.interface import Interface, implementer

from . import loglevel
from .wire.values import Command
from .commands import make_command


class IControl(Interface):
    """Run-time control of a pushsvc server."""

    def run(name, args):
        """Run the server-side command ``name`` (see ``pushsvc.commands``) on
        every worker: a Deferred firing with the list of their results (fold
        them with ``commands.merge``)."""

    def push(to, data):
        """Publish ``data`` to the address ``to`` (a JSON address object):
        a Deferred firing with the message id; fails with ProtocolError when
        the address or data is refused."""

    def workers():
        """A Deferred firing with one dict per worker: ``worker`` (index),
        ``pid``, ``owner`` (its session-id prefix), ``uptime`` (seconds),
        ``sessions``, ``ready`` (bool), and the pool's ``restarts``."""

    def reload():
        """Re-read the config file and reload the application module in every
        worker, keeping every connection.  A Deferred firing with one dict per
        worker: ``worker``, ``ok`` (bool), ``error`` (text or None).  A config
        file that does not validate fails the whole reload (ConfigError) and
        changes nothing."""

    def restart_workers():
        """Replace every worker with a new one, one at a time: the new one
        accepts before the old one closes its clients with 1012.  A Deferred
        firing with ``{"replaced": [{"worker", "old_pid", "new_pid"}, ...]}``."""

    def set_log_level(level):
        """Log events below ``level`` (debug, info, warn, error, critical)
        are dropped from now on, in the master and every worker
        (``pushsvc.loglevel.set_level``)."""


class ControlError(Exception):
    """A control operation this server cannot do; ``str()`` says why."""


@implementer(IControl)
class LocalControl:
    """``IControl`` for one process (``--workers 0``): ``server`` is its
    ``PushServer``, the one worker, number 0."""

    def __init__(self, server):
        self.server = server
        self.started = server.engine.clock.seconds()

    def run(self, name, args):
        return maybeDeferred(lambda: self.server.engine.run_each(make_command(name, args)))

    def push(self, to, data):
        command = Command("publish", {"to": to, "data": data})
        return maybeDeferred(self.server.engine.perform, command).addCallback(
            lambda result: result["id"])

    def workers(self):
        engine = self.server.engine
        return succeed([{"worker": 0, "pid": os.getpid(), "owner": engine.ids.owner,
                         "uptime": engine.clock.seconds() - self.started,
                         "sessions": len(engine.registry), "ready": True, "restarts": 0}])

    def reload(self):
        def reload():
            try:
                error = self.server.reload(self.server.settings.reread())
            except Exception:
                reloads["failed"] += 1  # a config file that does not validate
                raise
            reloads["ok" if error is None else "failed"] += 1
            return [{"worker": 0, "pid": os.getpid(), "ok": error is None, "error": error}]
        reloads = self.server.engine.meter.reloads  # GET /metrics: pushsvc_reloads_total
        return maybeDeferred(reload)

    def restart_workers(self):
        return fail(ControlError("restart-workers needs a worker pool; this server "
                                 "runs in one process (--workers 0)"))

    def set_log_level(self, level):
        return maybeDeferred(loglevel.set_level, level)
