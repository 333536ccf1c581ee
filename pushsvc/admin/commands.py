"""The console's commands: the command table (``COMMANDS``), how a command's
words become its AMP call (``prepare``, ``parse_*``, ``Usage`` when they do
not fit), and what ``help`` says."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable

from twisted.protocols import amp

from .. import loglevel
from ..commands import COMMANDS as SERVER_COMMANDS, Spec
from ..protocol import ADDRESS_KINDS, ProtocolError, decode_json
from .output import (pairs, reload_errors, show_count, show_reload, show_sessions,
                     show_workers, table, totals)
from .wire import Push, Reload, RestartWorkers, Run, SetLogLevel, Workers

PROG = "pushsvc-admin"


class Usage(ValueError):
    """A command line that does not fit its command's usage; ``str()`` says why."""


# -- reading arguments -------------------------------------------------------

def parse_target(text: str) -> dict[str, Any]:
    """``push``'s TARGET: ``all``, ``session:ID``, ``user:U``, ``group:G``,
    ``tag:T``, or an address object in JSON."""
    if text == "all":
        return {"all": True}
    if text.startswith("{"):
        address = parse_json(text, "TARGET")
        if not isinstance(address, dict):
            raise Usage("TARGET must be a JSON object")
        return address
    kind, colon, name = text.partition(":")
    if not colon or kind not in ADDRESS_KINDS or not name:
        raise Usage(f"bad TARGET '{text}': use all, session:ID, user:U, group:G, tag:T "
                    f"or an address object")
    return {kind: name}


def parse_who(text: str) -> dict[str, str]:
    """A user (``U`` or ``user:U``) or a session (``session:ID``)."""
    for kind in ("session", "user"):
        if text.startswith(f"{kind}:") and len(text) > len(kind) + 1:
            return {kind: text[len(kind) + 1:]}
    return {"user": text}


def parse_json(text: str, what: str) -> Any:
    try:
        return decode_json(text)
    except ProtocolError as e:
        raise Usage(f"{what} is {e}: {text}")


def parse_data(text: str) -> Any:
    """``push``'s DATA: a JSON value, or else plain text, sent as a JSON string.
    Text that starts like a JSON object, array or string (``{``, ``[``, ``"``)
    but does not parse is refused (likely JSON the shell took the quotes of)."""
    try:
        return decode_json(text)
    except ProtocolError:
        if text.lstrip()[:1] not in ("{", "[", '"'):
            return text
    raise Usage(f"DATA starts like JSON but is not valid JSON: {text}; quote it for the "
                f"shell ('{{\"text\": \"hi\"}}'), or to send text, write it as a JSON "
                f"string ('{json.dumps(text, ensure_ascii=False)}')")


# -- the commands ------------------------------------------------------------

Request = tuple[type[amp.Command], dict[str, Any]]


@dataclass(frozen=True)
class Command:
    """One console command: its usage, help, how its words become an AMP call
    and how the result reads."""
    args: str
    help: str
    low: int
    high: int | None  # None: the last argument takes the rest of the words
    request: Callable[[list[str]], Request]
    show: Callable[[Any], str]
    errors: Callable[[Any], list[str]] = lambda result: []
    # the server's result as the user sees it (shown, or printed by --json)
    answer: Callable[[Any], Any] = lambda result: result

    def build(self, name: str, words: list[str]) -> Request:
        if len(words) < self.low or (self.high is not None and len(words) > self.high):
            raise Usage(f"wrong number of arguments ({len(words)})")
        return self.request(words)


def _run(name: str, **args: Any) -> Request:
    return Run, {"name": name, "args": args}


def _level(words: list[str]) -> Request:
    if words[0] not in loglevel.LEVELS:
        raise Usage(f"unknown level '{words[0]}': use one of {', '.join(loglevel.LEVELS)}")
    return SetLogLevel, {"level": words[0]}


def _server_command(name: str, spec: Spec, show: Callable[[Any], str],
                    args: str | None = None, **more: Any) -> Command:
    """The console's face of a server-side command (``commands.COMMANDS``):
    ``[USER|session:ID] NEEDS... [OPTIONAL]``, a reason taking the rest of
    the words."""
    words = (["USER|session:ID"] if spec.targeted else []) + [n.upper() for n in spec.needs]
    reason = "reason" in spec.optional
    words += [f"[{n.upper()}{'...' if n == 'reason' else ''}]" for n in spec.optional]
    low = spec.targeted + len(spec.needs)

    def request(given: list[str]) -> Request:
        fields = parse_who(given[0]) if spec.targeted else {}
        rest = given[spec.targeted:]
        fields.update(zip(spec.needs, rest))
        extra = rest[len(spec.needs):]
        if extra:
            fields[spec.optional[0]] = " ".join(extra) if reason else extra[0]
        return _run(name, **fields)

    return Command(" ".join(words) if args is None else args, spec.help, low,
                   None if reason else low + len(spec.optional), request, show, **more)


def show_presence(result: dict[str, Any]) -> str:
    users = sorted(result["users"].items())
    text = table(["user", "sessions", "data"],
                 [[user, entry["sessions"], entry.get("data")] for user, entry in users])
    return f"{text}\n({result['sessions']} sessions, {result['anonymous']} anonymous)"


# How the console shows each server-side command's result.
_SHOWN: dict[str, tuple[Callable[[Any], str], dict[str, Any]]] = {
    "stats": (pairs, {"args": "[--watch [SECONDS]]", "answer": totals}),
    "sessions": (show_sessions, {}),
    "user": (show_sessions, {}),
    "groups": (lambda r: table(["group", "sessions"], sorted(map(list, r["groups"].items()))),
               {}),
    "group": (lambda r: table(["session", "user"],
                              [[m["session"], m["user"]] for m in r["members"]]), {}),
    "presence": (show_presence, {}),
    "join": (show_count("joined"), {}),
    "leave": (show_count("removed"), {}),
    "destroy": (show_count("removed"), {}),
    "kick": (show_count("kicked"), {}),
    "tag": (show_count("tagged"), {}),
    "untag": (show_count("untagged"), {}),
}

COMMANDS: dict[str, Command] = {
    name: _server_command(name, spec, _SHOWN[name][0], **_SHOWN[name][1])
    for name, spec in SERVER_COMMANDS.items()}
COMMANDS["stats"] = replace(COMMANDS["stats"], help=(
    "counters for the whole server; --watch: again every SECONDS with rates per second, "
    "until Ctrl-C"))
COMMANDS.update({
    "workers": Command("", "the worker processes: pid, sessions, uptime", 0, 0,
                       lambda w: (Workers, {}), show_workers),
    "push": Command("TARGET DATA", "send DATA to TARGET (all, session:ID, user:U, group:G, "
                    "tag:T or an address object); DATA is JSON, or else plain text, sent as "
                    "a string (the rest of the words); quote JSON for the shell", 2, None,
                    lambda w: (Push, {"to": parse_target(w[0]),
                                      "data": parse_data(" ".join(w[1:]))}),
                    lambda r: f"sent message {r['id']}"),
    "reload": Command("", "re-read the config file and the application module, keeping "
                      "every connection", 0, 0, lambda w: (Reload, {}), show_reload,
                      reload_errors),
    "restart-workers": Command("", "replace each worker in turn (its clients reconnect)", 0, 0,
                               lambda w: (RestartWorkers, {}),
                               lambda r: table(["worker", "old pid", "new pid"],
                                               [[x["worker"], x["old_pid"], x["new_pid"]]
                                                for x in r["replaced"]])),
    "loglevel": Command("LEVEL", f"log from LEVEL up: {', '.join(loglevel.LEVELS)}", 1, 1,
                        _level, lambda r: f"log level: {r['level']}"),
})


def prepare(name: str, words: list[str]) -> tuple[Command, Request]:
    """The command ``name`` and its AMP call; Usage (the text to show) if the
    words do not fit."""
    command = COMMANDS.get(name)
    if command is None:
        raise Usage(f"unknown command '{name}'; the commands are:\n{help_text()}")
    try:
        return command, command.build(name, words)
    except Usage as e:
        raise Usage(f"{usage(name)}\n{e}")


def usage(name: str) -> str:
    command = COMMANDS[name]
    return f"usage: {PROG} {name} {command.args}".rstrip()


def help_text() -> str:
    width = max(len(f"{name} {c.args}") for name, c in COMMANDS.items())
    return "\n".join(f"  {f'{name} {c.args}'.ljust(width)}  {c.help}"
                     for name, c in COMMANDS.items())


def help_for(words: list[str], prompt: bool = False) -> str:
    """What ``help [COMMAND]`` says (the prompt's list adds ``quit``);
    Usage for an unknown command."""
    if not words:
        return f"commands:\n{help_text()}\n  help [COMMAND]" + ("\n  quit" if prompt else "")
    if len(words) == 1 and words[0] in COMMANDS:
        return f"{usage(words[0])}\n  {COMMANDS[words[0]].help}"
    if len(words) == 1 and words[0] in ("help", "quit"):
        return {"help": "help [COMMAND]: the commands, or one command's usage",
                "quit": "quit (or Ctrl-D): leave the prompt"}[words[0]]
    raise Usage(f"unknown command '{' '.join(words)}'; the commands are:\n{help_text()}")
