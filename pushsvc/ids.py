"""Session and message ids that are unique for the life of a deployment.

An id reads ``NODE.WORKER.INCARNATION.COUNTER``:

- NODE is the machine's configured name, WORKER the worker index on it, so
  ``owner(id)`` (``NODE.WORKER``) tells who holds a session;
- INCARNATION is new each time a process starts (start time in milliseconds and
  random bits, base 36), so ids never repeat after a restart;
- COUNTER counts up without bound, so ids never collide within a process.

A message id has the same four parts, but its COUNTER starts with ``M``
(``NODE.WORKER.INCARNATION.MCOUNTER``; base 36 is lower case), so no message id
is ever a session id.
"""

from __future__ import annotations

import os
import time

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(n: int) -> str:
    """``n >= 0`` in base 36, lower case."""
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
        if not n:
            return out


def new_incarnation() -> str:
    """A token that no earlier start of any process has had."""
    millis = time.time_ns() // 1_000_000
    return base36(millis) + base36(int.from_bytes(os.urandom(3), "big")).rjust(5, "0")


def owner(session_id: str) -> str | None:
    """The ``NODE.WORKER`` that holds ``session_id``, or None if it is malformed."""
    parts = session_id.split(".")
    if len(parts) != 4 or not all(parts):
        return None
    return f"{parts[0]}.{parts[1]}"


class IdMaker:
    """Makes session ids and message ids for one process."""

    def __init__(self, node: str, worker: int = 0, incarnation: str | None = None):
        self.owner = f"{node}.{worker}"
        self.prefix = f"{self.owner}.{incarnation or new_incarnation()}."
        self._sessions = 0
        self._messages = 0

    def session_id(self) -> str:
        self._sessions += 1
        return self.prefix + base36(self._sessions)

    def message_id(self) -> str:
        self._messages += 1
        return f"{self.prefix}M{base36(self._messages)}"
