"""AMP commands from the console (``pushsvc-admin``) to the admin endpoint.

They mirror ``pushsvc.control.IControl``.  Every answer is one JSON value,
``result``; a command the server refuses or cannot do fails with AdminError,
whose text is the one line to show.  On a TCP endpoint the first command must
be ``Authenticate``.
"""

from __future__ import annotations

from twisted.protocols import amp

from ..wire.amp_args import Json


class AdminError(Exception):
    """The server refused or could not do a command; ``str()`` says why."""


class AdminCommand(amp.Command):
    errors = {AdminError: b"ADMIN_ERROR"}
    response = [(b"result", Json())]


class Authenticate(AdminCommand):
    """Give the configured secret; a wrong one closes the connection."""
    arguments = [(b"secret", amp.Unicode())]
    response: list = []


class Run(AdminCommand):
    """A server-side command (``pushsvc.commands``): the workers' merged result."""
    arguments = [(b"name", amp.Unicode()), (b"args", Json())]


class Push(AdminCommand):
    """Publish ``data`` to the address ``to``: ``{"id": message id}``."""
    arguments = [(b"to", Json()), (b"data", Json())]


class Workers(AdminCommand):
    """One dict per worker (see ``IControl.workers``)."""
    arguments: list = []


class Reload(AdminCommand):
    """One ``{"worker", "ok", "error"}`` per worker."""
    arguments: list = []


class RestartWorkers(AdminCommand):
    """``{"replaced": [{"worker", "old_pid", "new_pid"}, ...]}``."""
    arguments: list = []


class SetLogLevel(AdminCommand):
    """``{"level": name}`` once the level is in force."""
    arguments = [(b"level", amp.Unicode())]
