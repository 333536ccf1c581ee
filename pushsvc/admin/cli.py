"""``pushsvc-admin``: the console of a running pushsvc.

    pushsvc-admin stats                              one command, then exit
    pushsvc-admin push group:lobby '{"text":"hi"}'
    pushsvc-admin --json sessions u1                 the raw JSON result
    pushsvc-admin stats --watch 5                    the counters every 5 s, with rates
    pushsvc-admin                                    a prompt: history, help, tab completion

Exit status: 0 done, 1 the server refused or failed (one line on stderr) or
cannot be reached, 2 a bad command or argument (its usage on stderr).

The AMP calls run on a reactor in a background thread (``blockingCallFromThread``),
so one-shot and interactive use share one blocking path.
"""

from __future__ import annotations

import argparse
import cmd
import errno
import json
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.endpoints import (TCP4ClientEndpoint, TCP6ClientEndpoint,
                                        UNIXClientEndpoint, connectProtocol)
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.threads import blockingCallFromThread
from twisted.protocols import amp

from .. import loglevel
from ..config import DEFAULT_ADMIN, ConfigError, build_settings
from ..protocol import ADDRESS_KINDS, ProtocolError, decode_json
from .wire import (AdminError, Authenticate, Push, Reload, RestartWorkers, Run,
                   SetLogLevel, Workers)

PROG = "pushsvc-admin"
HISTORY = os.path.join("~", ".pushsvc_admin_history")
SECRET_ENV = "PUSHSVC_ADMIN_SECRET"


class Usage(ValueError):
    """A command line that does not fit its command's usage; ``str()`` says why."""


# -- where the server is -----------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The admin endpoint as a client sees it: a unix socket path, or a host and port."""
    path: str = ""
    host: str = ""
    port: int = 0

    def endpoint(self, reactor):
        if self.path:
            return UNIXClientEndpoint(reactor, self.path)
        kind = TCP6ClientEndpoint if ":" in self.host else TCP4ClientEndpoint
        return kind(reactor, self.host, self.port)

    def __str__(self) -> str:
        if self.path:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _fields(text: str) -> list[tuple[str, str | None]]:
    """Split an endpoint string's arguments at ``:`` (``\\`` escapes):
    (text, the name before its first unescaped ``=`` or None)."""
    fields, current, name, chars = [], [], None, iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            fields.append(("".join(current), name))
            current, name = [], None
        elif char == "=" and name is None:
            name, current = "".join(current), []
        else:
            current.append(char)
    fields.append(("".join(current), name))
    return fields


def parse_endpoint(description: str) -> Target:
    """The admin endpoint from the server's endpoint string (``unix:PATH:mode=600``,
    ``tcp:PORT:interface=127.0.0.1``), a client one (``unix:path=PATH``,
    ``tcp:host=H:port=P``) or a bare socket path; ValueError if it is none."""
    kind, colon, rest = description.partition(":")
    if not colon or kind not in ("unix", "tcp", "tcp6"):
        return Target(path=description)
    fields = _fields(rest)
    named = {name: value for value, name in fields if name is not None}
    positional = [value for value, name in fields if name is None and value]
    if kind == "unix":
        path = named.get("path") or named.get("address") or next(iter(positional), "")
        if not path:
            raise ValueError(f"no socket path in {description!r}")
        return Target(path=path)
    host = (named.get("host") or named.get("interface")
            or (positional[0] if len(positional) > 1 else "")
            or ("::1" if kind == "tcp6" else "127.0.0.1"))
    port = named.get("port") or next(reversed(positional), "")
    if not port.isdigit():
        raise ValueError(f"no port in {description!r}")
    return Target(host=host, port=int(port))


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


# -- showing results ---------------------------------------------------------

def cell(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Aligned columns under upper-case headers; numbers to the right."""
    if not rows:
        return "(none)"
    texts = [[cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool)
                   for row in rows) for i in range(len(headers))]
    lines = [[h.upper() for h in headers]] + texts
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(text.rjust(w) if right else text.ljust(w)
                               for text, w, right in zip(line, widths, numeric)).rstrip()
                     for line in lines)


def pairs(values: dict[str, Any]) -> str:
    """``key  value`` lines, the keys aligned."""
    width = max(map(len, values), default=0)
    return "\n".join(f"{key.ljust(width)}  {cell(value)}" for key, value in values.items())


def duration(seconds: float) -> str:
    """``42s``, ``5m 3s``, ``2h 5m``, ``3d 4h``."""
    s = int(seconds)
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                          ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {s % size // small_size}{small}"
    return f"{s}s"


def _sessions(result: dict[str, Any]) -> str:
    rows = [[s["session"], s["user"], s["groups"], s["tags"]] for s in result["sessions"]]
    text = table(["session", "user", "groups", "tags"], rows)
    total = result.get("total", len(rows))
    return text if total == len(rows) else f"{text}\n({len(rows)} shown of {total})"


def _workers(result: list[dict[str, Any]]) -> str:
    return table(["worker", "pid", "owner", "sessions", "uptime", "ready", "restarts"],
                 [[w["worker"], w["pid"], w.get("owner"), w.get("sessions"),
                   duration(w["uptime"]), w.get("ready"), w.get("restarts")]
                  for w in result])


def _count(verb: str) -> Callable[[dict[str, Any]], str]:
    def show(result: dict[str, Any]) -> str:
        n = result["sessions"]
        text = f"{verb} {n} session{'' if n == 1 else 's'}"
        if result.get("refused"):
            text += f"; {result['refused']} refused (at max_groups_per_session)"
        return text
    return show


def _reload(result: list[dict[str, Any]]) -> str:
    return "\n".join(f"worker {r['worker']}: reloaded" for r in result if r["ok"])


def _reload_errors(result: list[dict[str, Any]]) -> list[str]:
    return [f"worker {r['worker']}: reload failed: {r['error']}" for r in result if not r["ok"]]


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


def _targeted(name: str, key: str) -> Callable[[list[str]], Request]:
    """``NAME USER|session:ID VALUE`` -> the command with ``key=VALUE``."""
    return lambda words: _run(name, **parse_who(words[0]), **{key: words[1]})


def _kick(words: list[str]) -> Request:
    reason = {"reason": " ".join(words[1:])} if len(words) > 1 else {}
    return _run("kick", **parse_who(words[0]), **reason)


COMMANDS: dict[str, Command] = {
    "stats": Command("[--watch [SECONDS]]", "counters for the whole server; --watch: "
                     "again every SECONDS with rates per second, until Ctrl-C", 0, 0,
                     lambda w: _run("stats"),
                     lambda r: pairs({k: v for k, v in r.items() if k != "worker"})),
    "workers": Command("", "the worker processes: pid, sessions, uptime", 0, 0,
                       lambda w: (Workers, {}), _workers),
    "sessions": Command("[USER]", "sessions (of USER, or everyone's): groups and tags",
                        0, 1, lambda w: _run("sessions", **({"user": w[0]} if w else {})),
                        _sessions),
    "user": Command("USER", "USER's sessions, with their groups and tags", 1, 1,
                    lambda w: _run("user", user=w[0]), _sessions),
    "groups": Command("", "every group and how many sessions are in it", 0, 0,
                      lambda w: _run("groups"),
                      lambda r: table(["group", "sessions"],
                                      sorted(map(list, r["groups"].items())))),
    "group": Command("GROUP", "the sessions in GROUP", 1, 1,
                     lambda w: _run("group", group=w[0]),
                     lambda r: table(["session", "user"],
                                     [[m["session"], m["user"]] for m in r["members"]])),
    "push": Command("TARGET JSON", "send JSON to TARGET: all, session:ID, user:U, group:G, "
                    "tag:T or an address object", 2, 2,
                    lambda w: (Push, {"to": parse_target(w[0]),
                                      "data": parse_json(w[1], "JSON")}),
                    lambda r: f"sent message {r['id']}"),
    "join": Command("USER|session:ID GROUP", "put the user's sessions (or one session) in GROUP",
                    2, 2, _targeted("join", "group"), _count("joined")),
    "leave": Command("USER|session:ID GROUP", "take the user's sessions (or one) out of GROUP",
                     2, 2, _targeted("leave", "group"), _count("removed")),
    "destroy": Command("GROUP", "empty GROUP: every session leaves it", 1, 1,
                       lambda w: _run("destroy", group=w[0]), _count("removed")),
    "kick": Command("USER|session:ID [REASON...]", "close the user's sessions (or one) with "
                    "code 4000 and REASON", 1, None, _kick, _count("kicked")),
    "tag": Command("USER|session:ID TAG", "tag the user's sessions (or one) with TAG", 2, 2,
                   _targeted("tag", "tag"), _count("tagged")),
    "untag": Command("USER|session:ID TAG", "remove TAG from the user's sessions (or one)",
                     2, 2, _targeted("untag", "tag"), _count("untagged")),
    "reload": Command("", "re-read the config file and the application module, keeping "
                      "every connection", 0, 0, lambda w: (Reload, {}), _reload, _reload_errors),
    "restart-workers": Command("", "replace each worker in turn (its clients reconnect)", 0, 0,
                               lambda w: (RestartWorkers, {}),
                               lambda r: table(["worker", "old pid", "new pid"],
                                               [[x["worker"], x["old_pid"], x["new_pid"]]
                                                for x in r["replaced"]])),
    "loglevel": Command("LEVEL", f"log from LEVEL up: {', '.join(loglevel.LEVELS)}", 1, 1,
                        _level, lambda r: f"log level: {r['level']}"),
}


# -- stats --watch -------------------------------------------------------------

WATCH_EVERY = 2.0  # seconds between refreshes of ``stats --watch`` by default

# Figures of ``stats`` that are levels, not counts since the start: no rate.
LEVELS_NOT_COUNTS = ("sessions", "users", "groups")

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def rates(before: tuple[float, dict[str, Any]] | None, now: float,
          stats: dict[str, Any]) -> dict[str, float]:
    """Per second, how much each counter of ``stats`` grew since ``before``
    (a (time, stats) pair; None: nothing to compare with yet)."""
    if before is None or now <= before[0]:
        return {}
    elapsed = now - before[0]
    return {key: (value - before[1].get(key, 0)) / elapsed for key, value in stats.items()
            if key not in LEVELS_NOT_COUNTS and isinstance(value, (int, float))
            and not isinstance(value, bool)}


def watch_screen(stats: dict[str, Any], per_second: dict[str, float], every: float,
                 clock: str) -> str:
    """The ``stats --watch`` table: each figure, and its rate per second."""
    rows = [(key, f"{value:,}" if isinstance(value, int) else cell(value),
             "" if key in LEVELS_NOT_COUNTS else
             f"{per_second[key]:,.1f}" if key in per_second else "-")
            for key, value in stats.items()]
    widths = [max(len(row[i]) for row in [("", "VALUE", "PER SECOND"), *rows])
              for i in range(3)]
    lines = [f"pushsvc stats at {clock}, every {every:g} s (Ctrl-C stops)", "",
             f"{''.ljust(widths[0])}  {'VALUE'.rjust(widths[1])}  "
             f"{'PER SECOND'.rjust(widths[2])}"]
    lines += [f"{k.ljust(widths[0])}  {v.rjust(widths[1])}  {r.rjust(widths[2])}".rstrip()
              for k, v, r in rows]
    return "\n".join(lines)


def watch(connection: "Connection", every: float, count: int = 0,
          as_json: bool = False) -> int:
    """``stats`` every ``every`` seconds, with the counters' rates, until
    Ctrl-C (or ``count`` refreshes, 0: no end): a table rewritten in place
    on a terminal, one after the other otherwise; with ``as_json`` one JSON
    line per refresh (the figures, ``time`` and ``rates``).  The exit status."""
    tty = sys.stdout.isatty() and not as_json
    before, shown = None, 0
    try:
        while True:
            try:
                stats = connection.call(Run, name="stats", args={})
            except (AdminError, Unreachable) as e:
                print(e, file=sys.stderr)
                return 1
            now = time.monotonic()
            stats = {k: v for k, v in stats.items() if k != "worker"}
            per_second = rates(before, now, stats)
            if as_json:
                print(json.dumps({"time": round(time.time(), 3), **stats,
                                  "rates": {k: round(v, 3) for k, v in per_second.items()}},
                                 ensure_ascii=False))
            else:
                screen = watch_screen(stats, per_second, every, time.strftime("%H:%M:%S"))
                print(CLEAR + screen if tty else screen + "\n")
            sys.stdout.flush()
            before, shown = (now, stats), shown + 1
            if count and shown >= count:
                return 0
            time.sleep(max(0.0, every - (time.monotonic() - now)))
    except KeyboardInterrupt:  # the way to stop it: not a failure
        return 0


def watch_options(words: list[str]) -> tuple[float, int]:
    """``[--watch [SECONDS]] [--count N]`` typed after ``stats`` at the prompt:
    (seconds, count); Usage when they do not read."""
    every, count, rest = WATCH_EVERY, 0, list(words)
    try:
        while rest:
            word = rest.pop(0)
            if word == "--watch":
                if rest and not rest[0].startswith("--"):
                    every = float(rest.pop(0))
            elif word == "--count":
                count = int(rest.pop(0))
            else:
                raise Usage(f"unexpected '{word}'")
    except (ValueError, IndexError):
        raise Usage("--watch takes a number of seconds, --count a whole number")
    if every <= 0 or count < 0:
        raise Usage("--watch takes a number of seconds above 0, --count one of 0 or more")
    return every, count


def usage(name: str) -> str:
    command = COMMANDS[name]
    return f"usage: {PROG} {name} {command.args}".rstrip()


def help_text() -> str:
    width = max(len(f"{name} {c.args}") for name, c in COMMANDS.items())
    return "\n".join(f"  {f'{name} {c.args}'.ljust(width)}  {c.help}"
                     for name, c in COMMANDS.items())


# -- talking to the server ---------------------------------------------------

class Unreachable(Exception):
    """The admin endpoint cannot be reached; ``str()`` is the one line to show."""


class Connection:
    """A blocking AMP connection to the admin endpoint: the reactor runs in a
    background thread; a lost connection is made again on the next call."""

    def __init__(self, target: Target, secret: str):
        from twisted.internet import reactor
        self.reactor = reactor
        self.target = target
        self.secret = secret
        self.protocol: amp.AMP | None = None
        self.thread = threading.Thread(target=reactor.run, daemon=True,
                                       kwargs={"installSignalHandlers": False})
        self.thread.start()

    def open(self) -> None:
        """Connect (and authenticate) unless connected; AdminError or Unreachable."""
        if self.protocol is None or not self.protocol.transport.connected:
            self.protocol = self._blocking(self._connect)

    def call(self, command: type[amp.Command], **args: Any) -> Any:
        """The command's ``result``; AdminError, or Unreachable."""
        self.open()
        try:
            return self._blocking(self.protocol.callRemote, command, **args)["result"]
        except ConnectionClosed:
            raise Unreachable(f"lost the connection to {self.target}")
        except amp.UnknownRemoteError as e:
            raise AdminError(f"the server failed ({e}); see its log")

    def _connect(self):
        d = connectProtocol(self.target.endpoint(self.reactor), amp.AMP())
        if self.secret:
            d.addCallback(lambda p: p.callRemote(Authenticate, secret=self.secret)
                          .addCallback(lambda _: p))
        return d

    def _blocking(self, f, *args, **kwargs):
        try:
            return blockingCallFromThread(self.reactor, f, *args, **kwargs)
        except ConnectError as e:
            if e.osError in (errno.EACCES, errno.EPERM):
                raise Unreachable(f"cannot connect to {self.target}: permission denied "
                                  f"(run the console as the server's user)")
            raise Unreachable(f"cannot connect to {self.target} — is pushsvc running?")

    def close(self) -> None:
        if self.protocol is not None:
            self.reactor.callFromThread(self.protocol.transport.loseConnection)
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(5)


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


def perform(connection: Connection, command: Command, request: Request,
            as_json: bool) -> int:
    """Make the call and print its result: the exit status."""
    try:
        result = connection.call(request[0], **request[1])
    except (AdminError, Unreachable) as e:
        print(e, file=sys.stderr)
        return 1
    text = json.dumps(result, ensure_ascii=False) if as_json else command.show(result)
    if text:
        print(text)
    errors = command.errors(result)
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


# -- the prompt --------------------------------------------------------------

def interactive_words(name: str, rest: str) -> list[str]:
    """The words of a typed line: as a shell splits them, except that ``push``
    takes its JSON as written (shell quotes around it are fine too)."""
    if name != "push":
        return shlex.split(rest)
    target, _, data = rest.strip().partition(" ")
    data = data.strip()
    try:
        json.loads(data)
    except ValueError:
        unquoted = shlex.split(data)
        data = unquoted[0] if len(unquoted) == 1 else data
    return [w for w in (target, data) if w]


class Console(cmd.Cmd):
    """The interactive prompt: every command, ``help``, ``quit``."""

    identchars = cmd.Cmd.identchars + "-"
    prompt = "pushsvc> "

    def __init__(self, connection: Connection, as_json: bool):
        super().__init__()
        self.connection = connection
        self.as_json = as_json
        self.intro = (f"connected to {connection.target}; 'help' lists the commands, "
                      f"'quit' or Ctrl-D leaves")

    def default(self, line: str) -> None:
        name, _, rest = line.strip().partition(" ")
        try:
            words = interactive_words(name, rest)
            if name == "stats" and words:  # stats --watch [SECONDS] [--count N]
                watch(self.connection, *watch_options(words), self.as_json)
                return
            command, request = prepare(name, words)
        except ValueError as e:  # Usage, or shlex: an unclosed quote
            print(e, file=sys.stderr)
            return
        perform(self.connection, command, request, self.as_json)

    def emptyline(self) -> None:
        """An empty line does nothing (not: the last command again)."""

    def do_help(self, arg: str) -> None:
        """help [COMMAND]: the commands, or one command's usage."""
        if arg in COMMANDS:
            print(f"{usage(arg)}\n  {COMMANDS[arg].help}")
        else:
            print(f"commands:\n{help_text()}\n  help [COMMAND]\n  quit")

    def do_quit(self, arg: str) -> bool:
        return True

    do_exit = do_quit

    def do_EOF(self, arg: str) -> bool:
        print()
        return True

    def completenames(self, text: str, *ignored) -> list[str]:
        return [n for n in [*COMMANDS, "help", "quit"] if n.startswith(text)]

    def completedefault(self, text: str, line: str, *ignored) -> list[str]:
        first = line.split(None, 1)[0]
        choices = {"loglevel": loglevel.LEVELS, "help": tuple(COMMANDS)}.get(first, ())
        return [c for c in choices if c.startswith(text)]

    complete_help = completedefault


def interact(connection: Connection, as_json: bool) -> int:
    """The prompt, with readline history in ``~/.pushsvc_admin_history``."""
    try:
        import readline
    except ImportError:  # no readline on this system: a prompt without history
        readline = None
    history = os.path.expanduser(HISTORY)
    if readline is not None:
        readline.set_completer_delims(" \t\n")
        readline.set_history_length(1000)
        try:
            readline.read_history_file(history)
        except OSError:
            pass
    console = Console(connection, as_json)
    try:
        while True:
            try:
                console.cmdloop()
                return 0
            except KeyboardInterrupt:  # Ctrl-C drops the line, not the console
                console.intro = None
                print()
    finally:
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass


# -- the command line --------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The console of a running pushsvc: one command, or a prompt when "
                    "no command is given.",
        epilog=f"commands:\n{help_text()}")
    p.add_argument("--connect", "--socket", metavar="ENDPOINT",
                   help="the admin endpoint: a unix socket path, or the server's "
                        "endpoint string (default: from --config, else "
                        f"{DEFAULT_ADMIN!r}, relative to the current folder)")
    p.add_argument("--secret", help=f"the admin secret (default: ${SECRET_ENV}, "
                                    "else from --config)")
    p.add_argument("--config", metavar="FILE",
                   help="the server's TOML config: its admin endpoint and secret")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--watch", metavar="SECONDS", type=float, nargs="?", const=WATCH_EVERY,
                   help="with stats: show it again every SECONDS (default "
                        f"{WATCH_EVERY:g}) with each counter's rate per second, "
                        "until Ctrl-C; with --json, one JSON line each time")
    p.add_argument("--count", metavar="N", type=int, default=0,
                   help="with --watch: stop after N refreshes")
    p.add_argument("command", nargs="?", help="a command (see below); none for a prompt")
    p.add_argument("words", nargs="*", help="the command's arguments")
    return p.parse_intermixed_args(argv)


def connection_of(args: argparse.Namespace) -> tuple[Target, str]:
    """Where to connect and the secret to give; ConfigError or ValueError."""
    settings = build_settings(args.config) if args.config else None
    endpoint = args.connect or (settings.admin if settings else DEFAULT_ADMIN)
    if not endpoint:
        raise ConfigError("server.admin", f"is off (\"\") in {args.config}: "
                                          "the server has no console")
    secret = args.secret or os.environ.get(SECRET_ENV) or (
        settings.admin_secret if settings else "")
    return parse_endpoint(endpoint), secret


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        target, secret = connection_of(args)
        # a bad command line is answered without the server
        prepared = None if args.command is None else prepare(args.command, args.words)
        if (args.watch is not None or args.count) and (
                args.command != "stats" or args.watch is None or args.watch <= 0
                or args.count < 0):
            raise Usage(f"usage: {PROG} stats --watch [SECONDS] [--count N]\n"
                        "--watch is for stats, with a number of seconds above 0; "
                        "--count needs --watch")
    except Usage as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    except (ConfigError, ValueError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        sys.exit(2)
    connection = Connection(target, secret)
    try:
        if args.watch is not None:
            status = watch(connection, args.watch, args.count, args.json)
        elif prepared is not None:
            status = perform(connection, *prepared, args.json)
        else:
            connection.open()
            status = interact(connection, args.json)
    except (AdminError, Unreachable) as e:
        print(e, file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        connection.close()
    sys.exit(status)


if __name__ == "__main__":
    main()
