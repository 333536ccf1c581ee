"""AMP commands the master sends to a worker."""

from __future__ import annotations

import json

from twisted.protocols import amp

from ..protocol import ProtocolError
from .amp_args import BigBytes, Json


class DeliverBatch(amp.Command):
    """Messages for this worker's sessions: message records (as they came in the
    publish records), in the order the hub received them."""
    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class Refused(Exception):
    """A worker refused a command's arguments (a ProtocolError there); the
    text is ``[code, message]`` as JSON (see ``refused``/``protocol_error``)."""


def refused(error) -> Refused:
    """The Refused to send for a worker's ProtocolError."""
    return Refused(json.dumps([error.code, error.message]))


def protocol_error(error: Refused):
    """The ProtocolError a Refused came from."""
    return ProtocolError(*json.loads(str(error)))


class Perform(amp.Command):
    """Run a command on this worker's sessions."""
    arguments = [(b"name", amp.Unicode()), (b"args", Json())]
    response = [(b"result", Json())]
    errors = {Refused: b"REFUSED"}


class Reload(amp.Command):
    """Apply these settings and reload the application module; ``error`` is
    "" when it worked, else why nothing changed."""
    arguments = [(b"settings", Json())]
    response = [(b"error", amp.Unicode())]


class SetLogLevel(amp.Command):
    """Drop log events below ``level`` from now on (``pushsvc.loglevel``)."""
    arguments = [(b"level", amp.Unicode())]
    response: list = []


class StopAccepting(amp.Command):
    """Stop accepting new clients (a rolling restart's replacements accept
    them); answered once the listeners are closed."""


class Retire(amp.Command):
    """Stop accepting, close every client with ``code`` and ``reason``,
    spread over ``drain`` seconds, and exit (a rolling restart has started
    this worker's replacement)."""
    arguments = [(b"code", amp.Integer()), (b"reason", amp.Unicode()),
                 (b"drain", amp.Float())]
    requiresAnswer = False
