"""The admin endpoint: AMP on ``settings.admin``, answering the console from an
``IControl``.

By default a unix socket in the run directory, mode 0600, whose lock file
refuses a second server on a live path; TCP only on loopback and only with
``admin_secret``.  When a secret is set, a connection's first command must
give it (``Authenticate``).  Every command that changes something is logged,
whatever the log level, with who asked (the peer's uid and pid on a unix
socket, its address on TCP) and what, in the namespace ``pushsvc.admin.audit``
with the structured fields ``admin_peer``, ``admin_command`` and ``admin_args``.
"""

from __future__ import annotations

import hmac
import json
import socket
import struct
from typing import Any

from twisted.internet.defer import fail, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp

from .. import loglevel
from ..commands import make_command, merge
from ..config import ConfigError
from ..control import ControlError
from ..protocol import ProtocolError
from ..listening import ListenerService, exit_cannot_listen
from .wire import (AdminError, Authenticate, Push, Reload, RestartWorkers, Run,
                   SetLogLevel, Workers)

_log = Logger()

# Who changed what is logged whatever the log level.
_audit_log = Logger(namespace="pushsvc.admin.audit")
loglevel.predicate.setLogLevelForNamespace(_audit_log.namespace, LogLevel.info)

# Server-side commands that change something (the others only read).
CHANGING = frozenset({"join", "leave", "destroy", "tag", "untag", "kick"})

# Failures whose message is for the operator; any other is logged in full.
EXPECTED = (ProtocolError, ConfigError, ControlError)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def admin_service(settings, control, reactor) -> ListenerService | None:
    """The admin endpoint for ``control`` on ``settings.admin``, to add to the
    service tree; None when ``settings.admin`` is "" (no console).  A bad
    endpoint string, or one it cannot listen on, ends start-up in one line."""
    if not settings.admin:
        return None
    description = f"the admin endpoint {settings.admin}"
    try:
        endpoint = serverFromString(reactor, settings.admin)
    except Exception as e:  # whatever the parser raises means a bad string
        exit_cannot_listen(description, e)
    factory = AdminFactory(control, settings.admin_secret, clock=reactor)
    return ListenerService(description, _ExplainLock(endpoint), factory)


class _ExplainLock:
    """Says what a unix socket's lock file refusing means."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def listen(self, factory):
        return self.endpoint.listen(factory).addErrback(self._explain)

    @staticmethod
    def _explain(failure):
        if (failure.check(CannotListenError)
                and failure.value.socketError == "Cannot acquire lock"):
            raise CannotListenError(None, failure.value.port,
                                    "a live server holds it (is pushsvc already running here?)")
        return failure


class AdminFactory(Factory):
    """Console connections to ``control``; with a ``secret`` (always, for TCP:
    the settings insist) each must give it first."""

    noisy = False

    def __init__(self, control, secret: str, clock):
        self.control = control
        self.secret = secret
        self.clock = clock

    def buildProtocol(self, addr):
        return AdminProtocol(self)


def peer_of(transport) -> dict[str, Any]:
    """Who is at the other end: ``pid``/``uid``/``gid`` on a unix socket (where
    the system tells), ``host``/``port`` on TCP."""
    address = transport.getPeer()
    if hasattr(address, "host"):
        return {"host": address.host, "port": address.port}
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return {}
    pid, uid, gid = _PEERCRED.unpack(
        transport.getHandle().getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size))
    return {"pid": pid, "uid": uid, "gid": gid}


def describe_peer(peer: dict[str, Any]) -> str:
    if "host" in peer:
        return f"{peer['host']}:{peer['port']}"
    if "uid" in peer:
        return f"uid {peer['uid']} pid {peer['pid']}"
    return "a unix socket peer"


class AdminProtocol(amp.AMP):
    """One console connection."""

    def __init__(self, factory: AdminFactory):
        super().__init__()
        self.control = factory.control
        self.factory = factory
        self.authenticated = not factory.secret
        self.peer: dict[str, Any] = {}

    def connectionMade(self):
        super().connectionMade()
        self.peer = peer_of(self.transport)

    def locateResponder(self, name):
        """Before ``Authenticate`` succeeds (where it is needed), every other
        command is refused."""
        if self.authenticated or name == Authenticate.commandName:
            return super().locateResponder(name)
        return lambda box: fail(amp.RemoteAmpError(
            b"ADMIN_ERROR", "authenticate first: this endpoint needs the admin secret"))

    def _audit(self, command: str, args: Any) -> None:
        _audit_log.info("admin command from {who}: {command} {what}",
                  who=describe_peer(self.peer), command=command,
                  what=json.dumps(args, sort_keys=True, ensure_ascii=False),
                  admin_peer=self.peer, admin_command=command, admin_args=args)

    def _answer(self, what: str, call, *args):
        """``call(*args)``'s result as the answer; a failure as one line."""
        return maybeDeferred(call, *args).addCallbacks(
            lambda result: {"result": result}, self._refuse, errbackArgs=(what,))

    def _refuse(self, failure, what: str):
        if failure.check(AdminError):
            return failure
        if failure.check(*EXPECTED):
            raise AdminError(str(failure.value))
        _log.failure("admin command {what} failed", failure, what=what)
        raise AdminError(f"{what} failed: {failure.getErrorMessage()} "
                         f"({failure.type.__name__}; see the server log)")

    @Authenticate.responder
    def authenticate(self, secret):
        if self.authenticated or hmac.compare_digest(secret.encode(),
                                                     self.factory.secret.encode()):
            self.authenticated = True
            return {}
        _log.warn("admin: wrong secret from {who}", who=describe_peer(self.peer),
                  admin_peer=self.peer)
        self.factory.clock.callLater(0, self.transport.loseConnection)
        raise AdminError("wrong secret")

    @Run.responder
    def run(self, name, args):
        def command():
            checked = make_command(name, args)
            if name in CHANGING:
                self._audit(name, checked.args)
            return self.control.run(checked.name, checked.args).addCallback(merge)
        return self._answer(name, command)

    @Push.responder
    def push(self, to, data):
        def push():
            size = len(json.dumps(data, separators=(",", ":")))
            self._audit("push", {"to": to, "data_bytes": size})
            return self.control.push(to, data).addCallback(lambda msg_id: {"id": msg_id})
        return self._answer("push", push)

    @Workers.responder
    def workers(self):
        return self._answer("workers", self.control.workers)

    @Reload.responder
    def reload(self):
        self._audit("reload", {})
        return self._answer("reload", self.control.reload)

    @RestartWorkers.responder
    def restart_workers(self):
        self._audit("restart-workers", {})
        return self._answer("restart-workers", self.control.restart_workers)

    @SetLogLevel.responder
    def set_log_level(self, level):
        def set_level():
            if level not in loglevel.LEVELS:
                raise AdminError(f"unknown log level '{level}'; use one of "
                                 f"{', '.join(loglevel.LEVELS)}")
            self._audit("loglevel", {"level": level})
            return self.control.set_log_level(level).addCallback(lambda _: {"level": level})
        return self._answer("loglevel", set_level)
