"""The application's hooks as the engine calls them (``--app``, pushsvc/app.py)."""

from __future__ import annotations

from typing import Any, Callable, NoReturn

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..app import API, App, Refused, SessionInfo
from ..protocol import FORBIDDEN, UNAUTHORIZED, ProtocolError

_log = Logger()

INTERNAL = "internal"  # the error code of a hook that failed


class Hooks:
    """The loaded application (None: none) and the one way to call its hooks."""

    def __init__(self, engine):
        self.app: App | None = None
        self.api = API(engine)

    def get(self, hook_name: str) -> Callable[..., Any] | None:
        """The application's ``hook_name`` function, or None."""
        return None if self.app is None else getattr(self.app, hook_name)

    def call(self, hook_name: str, hook: Callable[..., Any], info: SessionInfo,
             *args: Any, result: Callable[[Any], Any] | None = None) -> Deferred:
        """Call ``hook``; a Deferred with its outcome, read by ``result``.

        A ``Refused`` fails it with the matching ProtocolError; any other
        failure (of the hook or of ``result``) is logged and fails it with
        an ``internal`` one.
        """
        d = maybeDeferred(hook, info, self.api, *args)
        if result is not None:
            d.addCallback(result)
        return d.addErrback(_failed, hook_name, info)


def _failed(failure: Failure, hook_name: str, info: SessionInfo) -> NoReturn:
    if failure.check(Refused):
        raise ProtocolError(UNAUTHORIZED if hook_name == "on_auth" else FORBIDDEN,
                            failure.value.message)
    _log.failure("application hook {hook} failed for session {session} (user {user})",
                 failure, hook=hook_name, session=info.id, user=info.user)
    raise ProtocolError(INTERNAL, "internal error in the application")
