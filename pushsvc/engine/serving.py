"""Serving a session's client frames in order: one at a time, the next ones
waiting while the application (or the backend) has the one before."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..frames import error_frame
from ..protocol import RATE_LIMITED, UNAUTHORIZED, ProtocolError, parse_request
from ..sessions import Session
from .hooks import INTERNAL

_log = Logger()

# A session's frames that may wait while the application handles an earlier one.
MAX_WAITING = 100

# The ops served before a successful auth in ``auth.mode = "required"``.
BEFORE_AUTH = ("auth", "ping")


class Serving:
    """The frames of every session of ``engine``, each op served by ``ops``."""

    def __init__(self, engine, ops: dict[str, Callable[..., Any]]):
        self.engine = engine
        self.ops = ops

    def handle(self, session: Session, text: bytes) -> None:
        """Serve one client text frame; every reply goes to ``session.conn``.

        While the application handles a request of the session, its next
        frames wait (up to MAX_WAITING), so they are served in order.
        """
        waiting = self.engine.waiting.get(session)
        if waiting is None:
            d = self._serve(session, text)
            if d is not None:
                self.engine.waiting[session] = deque()
                d.addCallback(self.serve_waiting, session)
        elif len(waiting) < MAX_WAITING:
            waiting.append(text)
        else:
            self._too_many(session, text)

    def _serve(self, session: Session, text: bytes) -> Deferred | None:
        """Serve one frame; a Deferred while the application still has it."""
        request = None
        try:
            request = parse_request(text, self.engine.settings.max_targets)
            if (session.user is None and request.op not in BEFORE_AUTH
                    and self.engine.settings.auth_mode == "required"):
                # Refused, but not closed: that is the auth timeout's to do.
                self.engine.reply(session, error_frame(ProtocolError(
                    UNAUTHORIZED, "authenticate first: send auth with a token"), request.ref))
                return None
            d = self.ops[request.op](session, request)
        except ProtocolError as e:
            self.engine.refuse(session, e, e.ref if request is None else request.ref)
            return None
        if d is None:
            return None
        done: list[Any] = []
        d.addErrback(self.request_failed, session, request.ref).addCallback(done.append)
        return None if done else d

    def serve_waiting(self, _, session: Session) -> None:
        """Serve the frames that waited, until one is in the application's hands."""
        waiting = self.engine.waiting.pop(session, None)  # None: the session has closed
        while waiting:
            d = self._serve(session, waiting.popleft())
            if d is not None:
                self.engine.waiting[session] = waiting
                d.addCallback(self.serve_waiting, session)
                return

    def _too_many(self, session: Session, text: bytes) -> None:
        try:
            ref = parse_request(text, self.engine.settings.max_targets).ref
        except ProtocolError as e:
            ref = e.ref
        self.engine.reply(session, error_frame(ProtocolError(
            RATE_LIMITED, f"more than {MAX_WAITING} requests wait for the application"), ref))

    def request_failed(self, failure: Failure, session: Session, ref: Any) -> None:
        """Answer a request that failed after its op returned (in or after a hook)."""
        error = failure.value
        if not failure.check(ProtocolError):
            _log.failure("serving a request of session {session} (user {user}) failed",
                         failure, session=session.id, user=session.user)
            error = ProtocolError(INTERNAL, "internal error; the request was not done")
        self.engine.refuse(session, error, ref)
