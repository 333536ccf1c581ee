"""Server-side commands: their arguments, checking, and merging results.  No I/O.

A command (join a user's sessions to a group, destroy a group, list a group's
members, ...) runs on every engine that holds sessions; each returns a dict and
``merge`` folds them into the answer for the whole server.  The HTTP API, the
console and the application API build commands with ``make_command``, so every
entry point checks arguments the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .wire.values import Command
from .protocol import BAD_REQUEST, ProtocolError, name, valid_unicode


@dataclass(frozen=True)
class Spec:
    """One command: its arguments, and what it does in a line (the console's
    help, the docs).  A targeted command takes exactly one of ``user`` or
    ``session``; of the optional arguments a ``reason`` is text, anything
    else a name; an ``action`` changes sessions and is ``POST /api/NAME``
    (the others are read through GET routes)."""
    help: str
    needs: tuple[str, ...] = ()
    targeted: bool = False
    optional: tuple[str, ...] = ()
    action: bool = False


# Every server-side command, declared once: the engine (``Performer.do_NAME``),
# the HTTP API, the console, the application API and the Redis command relay
# read this table.
COMMANDS: dict[str, Spec] = {
    "stats": Spec("counters for the whole server"),
    "sessions": Spec("sessions (of USER, or everyone's): groups and tags", optional=("user",)),
    "user": Spec("USER's sessions, with their groups and tags", ("user",)),
    "groups": Spec("every group and how many sessions are in it"),
    "group": Spec("the sessions in GROUP", ("group",)),
    "presence": Spec("the users in GROUP, with their session counts and join data",
                     ("group",)),
    "join": Spec("put the user's sessions (or one session) in GROUP", ("group",), True,
                 action=True),
    "leave": Spec("take the user's sessions (or one) out of GROUP", ("group",), True,
                  action=True),
    "destroy": Spec("empty GROUP: every session leaves it", ("group",), action=True),
    "kick": Spec("close the user's sessions (or one) with code 4000 and REASON", (), True,
                 ("reason",), action=True),
    "tag": Spec("tag the user's sessions (or one) with TAG", ("tag",), True, action=True),
    "untag": Spec("remove TAG from the user's sessions (or one)", ("tag",), True,
                  action=True),
}
ACTIONS = tuple(name for name, spec in COMMANDS.items() if spec.action)

MAX_REASON = 120  # a close reason must fit a close frame (123 bytes)


def make_command(command: str, body: Any) -> Command:
    """Check ``body`` for ``command`` and build it; ProtocolError when it is wrong.

    A targeted command takes exactly one of ``user`` or ``session``.
    """
    if command not in COMMANDS:
        raise ProtocolError(BAD_REQUEST, f"unknown command '{command}'")
    if not isinstance(body, dict):
        raise ProtocolError(BAD_REQUEST, "the body must be a JSON object")
    spec = COMMANDS[command]
    args = {key: name(body.get(key), key) for key in spec.needs}
    for key in spec.optional:
        if key in body and key != "reason":
            args[key] = name(body[key], key)
        elif key in body:
            if (not isinstance(body[key], str) or not valid_unicode(body[key])
                    or len(body[key].encode()) > MAX_REASON):
                raise ProtocolError(BAD_REQUEST, f"'{key}' must be a string of at most "
                                                 f"{MAX_REASON} bytes")
            args[key] = body[key]
    if spec.targeted:
        given = [key for key in ("user", "session") if key in body]
        if len(given) != 1:
            raise ProtocolError(BAD_REQUEST, "give exactly one of 'user' or 'session'")
        args[given[0]] = name(body[given[0]], given[0])
    return Command(command, args)


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold per-engine results: numbers add up, lists join, dicts merge likewise,
    booleans are true if any is."""
    out: dict[str, Any] = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, dict):
                out[key] = merge([out.get(key, {}), value])
            elif key not in out:
                out[key] = list(value) if isinstance(value, list) else value
            elif isinstance(value, bool):
                out[key] = out[key] or value
            elif isinstance(value, (int, float, list)):
                out[key] = out[key] + value
            else:
                out[key] = value
    return out
