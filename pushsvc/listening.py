"""Listening: the one line a port that cannot be bound ends start-up with,
and the service that listens on one endpoint.  Used by the one-process
server and by the master of a pool alike."""

from __future__ import annotations

import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from .logtext import address_text

_log = Logger()


LISTEN_ERRORS = (CannotListenError, OSError)


def exit_cannot_listen(description: str, error: Exception):
    """End start-up with one line on the real stderr (twistd has taken over
    sys.stderr by the time ports are bound)."""
    reason = getattr(error, "socketError", None) or error
    sys.__stderr__.write(f"pushsvc: cannot listen on {description}: {reason}\n")
    raise SystemExit(1)


class ListenerService(StreamServerEndpointService):
    """Listens on one endpoint; a port that cannot be bound ends start-up in one line."""

    _raiseSynchronously = True

    def __init__(self, description: str, endpoint, factory):
        super().__init__(endpoint, factory)
        self.description = description

    def privilegedStartService(self):
        # twistd binds here, before startService.
        try:
            super().privilegedStartService()
        except LISTEN_ERRORS as e:
            exit_cannot_listen(self.description, e)

    def startService(self):
        super().startService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        address = port.getHost()
        _log.info("listening on {endpoint} ({address})", endpoint=self.description,
                  address=address_text(address))
        return port
