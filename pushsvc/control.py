"""What the admin console drives: a running pushsvc, one process or a pool.

``IControl`` is served by ``LocalControl`` (``--workers 0``: the one process)
and by the master of a worker pool (``pushsvc.pool.master.PoolControl``).  The
admin endpoint (``pushsvc.admin``) only ever talks to an ``IControl``.

Every method returns a Deferred.  A result that concerns workers is a list
with one entry per worker, each naming its ``worker`` (the index).
"""

from __future__ import annotations

from zope.interface import Interface


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
        are dropped from now on, in the master and every worker."""
