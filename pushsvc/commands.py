"""Server-side commands: their arguments, checking, and merging results.  No I/O.

A command (join a user's sessions to a group, destroy a group, list a group's
members, ...) runs on every engine that holds sessions; each returns a dict and
``merge`` folds them into the answer for the whole server.  The HTTP API (and
later the AMP console) build commands with ``make_command``, so every entry
point checks arguments the same way.
"""

from __future__ import annotations

from typing import Any

from .wire.values import Command
from .protocol import BAD_REQUEST, ProtocolError, name, valid_unicode

# command -> (required name arguments, whether it takes a user-or-session
# target, optional arguments: a reason is text, anything else a name)
COMMANDS: dict[str, tuple[tuple[str, ...], bool, tuple[str, ...]]] = {
    "join": (("group",), True, ()),
    "leave": (("group",), True, ()),
    "destroy": (("group",), False, ()),
    "tag": (("tag",), True, ()),
    "untag": (("tag",), True, ()),
    "kick": ((), True, ("reason",)),
    "group": (("group",), False, ()),
    "presence": (("group",), False, ()),
    "user": (("user",), False, ()),
    "groups": ((), False, ()),
    "stats": ((), False, ()),
    "sessions": ((), False, ("user",)),
}
# The commands that change sessions: POST /api/NAME (the others are read
# through GET routes).
ACTIONS = ("join", "leave", "destroy", "tag", "untag", "kick")

MAX_REASON = 120  # a close reason must fit a close frame (123 bytes)


def make_command(command: str, body: Any) -> Command:
    """Check ``body`` for ``command`` and build it; ProtocolError when it is wrong.

    A targeted command takes exactly one of ``user`` or ``session``.
    """
    if command not in COMMANDS:
        raise ProtocolError(BAD_REQUEST, f"unknown command '{command}'")
    if not isinstance(body, dict):
        raise ProtocolError(BAD_REQUEST, "the body must be a JSON object")
    needed, targeted, optional = COMMANDS[command]
    args = {key: name(body.get(key), key) for key in needed}
    for key in optional:
        if key in body and key != "reason":
            args[key] = name(body[key], key)
        elif key in body:
            if (not isinstance(body[key], str) or not valid_unicode(body[key])
                    or len(body[key].encode()) > MAX_REASON):
                raise ProtocolError(BAD_REQUEST, f"'{key}' must be a string of at most "
                                                 f"{MAX_REASON} bytes")
            args[key] = body[key]
    if targeted:
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
