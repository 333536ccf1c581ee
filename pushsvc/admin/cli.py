"""``pushsvc-admin``: the console of a running pushsvc.

    pushsvc-admin stats                              one command, then exit
    pushsvc-admin push group:lobby '{"text":"hi"}'   DATA: JSON, or plain text as a string
    pushsvc-admin --json sessions u1                 the raw JSON result
    pushsvc-admin stats --watch 5                    the counters every 5 s, with rates
    pushsvc-admin                                    a prompt: history, help, tab completion

Exit status: 0 done, 1 the server refused or failed (one line on stderr) or
cannot be reached, 2 a bad command or argument (its usage on stderr), 141
its output's reader left (``| head``), quietly, as a tool killed by SIGPIPE.

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
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.endpoints import (TCP4ClientEndpoint, TCP6ClientEndpoint,
                                        UNIXClientEndpoint, connectProtocol)
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
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

# The longest unix socket path connect() takes, in bytes (sun_path less its NUL).
UNIX_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


@dataclass(frozen=True)
class Target:
    """The admin endpoint as a client sees it: a unix socket path, or a host and port."""
    path: str = ""
    host: str = ""
    port: int = 0

    def endpoint(self, reactor):
        if self.path:
            return UNIXClientEndpoint(reactor, self.reachable_path())
        kind = TCP6ClientEndpoint if ":" in self.host else TCP4ClientEndpoint
        return kind(reactor, self.host, self.port)

    def reachable_path(self) -> str:
        """The socket path to connect to: as given, or (when that is longer
        than a unix socket address holds) relative to the current folder;
        Unreachable when neither fits."""
        for path in (self.path, os.path.relpath(self.path)):
            if len(os.fsencode(path)) <= UNIX_PATH_MAX:
                return path
        raise Unreachable(f"cannot connect to {self.describe()}: its path is longer than a "
                          f"unix socket address holds ({UNIX_PATH_MAX} bytes), even relative "
                          f"to this folder; run the console nearer to it")

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"tcp:[{self.host}]:{self.port}" if ":" in self.host else \
            f"tcp:{self.host}:{self.port}"

    def describe(self) -> str:
        """``str()``, and a relative socket path's full path."""
        if self.path and not os.path.isabs(self.path):
            return f"{self} ({os.path.abspath(self.path)})"
        return str(self)


class BadEndpoint(ValueError):
    """An admin endpoint string the console cannot use; ``str()`` is the one line."""

    def __init__(self, description: str, why: str):
        super().__init__(f"bad endpoint '{description}': {why}; use a socket path, "
                         f"unix:PATH or tcp:PORT (the server's string, "
                         f"e.g. tcp:7001:interface=127.0.0.1)")


# Endpoint kinds a server may listen on that the console cannot connect to.
OTHER_KINDS = ("ssl", "tls", "tcp4", "udp", "systemd", "stdio", "tor", "onion")


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
    ``tcp:host=H:port=P``) or a bare socket path; BadEndpoint if it is none."""
    if not description.strip():
        raise BadEndpoint(description, "it is empty")
    kind, colon, rest = description.partition(":")
    if colon and kind.lower() in OTHER_KINDS:
        raise BadEndpoint(description, f"the console connects over unix or tcp, not {kind}")
    if not colon or kind not in ("unix", "tcp", "tcp6"):
        return Target(path=description)
    fields = _fields(rest)
    named = {name: value for value, name in fields if name is not None}
    positional = [value for value, name in fields if name is None and value]
    if kind == "unix":
        path = named.get("path") or named.get("address") or next(iter(positional), "")
        if not path:
            raise BadEndpoint(description, "no socket path")
        return Target(path=path)
    host = (named.get("host") or named.get("interface")
            or (positional[0] if len(positional) > 1 else "")
            or ("::1" if kind == "tcp6" else "127.0.0.1"))
    port = named.get("port") or next(reversed(positional), "")
    if not port.isdigit():
        raise BadEndpoint(description, "no port number")
    if not 0 < int(port) < 65536:
        raise BadEndpoint(description, f"port {port} is not between 1 and 65535")
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


def _targeted(name: str, key: str) -> Callable[[list[str]], Request]:
    """``NAME USER|session:ID VALUE`` -> the command with ``key=VALUE``."""
    return lambda words: _run(name, **parse_who(words[0]), **{key: words[1]})


def _totals(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` for the whole server: without the ``worker`` that each
    worker's counters carry (merged, it names only one of them)."""
    return {k: v for k, v in stats.items() if k != "worker"}


def _kick(words: list[str]) -> Request:
    reason = {"reason": " ".join(words[1:])} if len(words) > 1 else {}
    return _run("kick", **parse_who(words[0]), **reason)


COMMANDS: dict[str, Command] = {
    "stats": Command("[--watch [SECONDS]]", "counters for the whole server; --watch: "
                     "again every SECONDS with rates per second, until Ctrl-C", 0, 0,
                     lambda w: _run("stats"), pairs, answer=_totals),
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
    "push": Command("TARGET DATA", "send DATA to TARGET (all, session:ID, user:U, group:G, "
                    "tag:T or an address object); DATA is JSON, or else plain text, sent as "
                    "a string (the rest of the words); quote JSON for the shell", 2, None,
                    lambda w: (Push, {"to": parse_target(w[0]),
                                      "data": parse_data(" ".join(w[1:]))}),
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
            stats = _totals(stats)
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


# -- talking to the server ---------------------------------------------------

class Unreachable(Exception):
    """The admin endpoint cannot be reached; ``str()`` is the one line to show."""


class _Client(amp.AMP):
    """The console's end of a connection; knows when it is gone."""

    lost = False

    def connectionLost(self, reason):
        self.lost = True
        super().connectionLost(reason)


def _alive(protocol: _Client | None) -> bool:
    """Whether ``protocol``'s connection can take a command: not lost, and
    no end of file waiting to be read (the server never speaks first, so
    anything readable on an idle connection is its end: it stopped or
    restarted)."""
    if protocol is None or protocol.lost:
        return False
    try:
        return protocol.transport.getHandle().recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:  # nothing to read: the usual, alive
        return True
    except OSError:
        return False


class Connection:
    """A blocking AMP connection to the admin endpoint: the reactor runs in a
    background thread.  A connection found dead before a command (the server
    stopped or restarted) is made again, once, for that command."""

    def __init__(self, target: Target, secret: str):
        from twisted.internet import reactor
        self.reactor = reactor
        self.target = target
        self.secret = secret
        self.protocol: _Client | None = None  # used in the reactor thread only
        self.thread = threading.Thread(target=reactor.run, daemon=True,
                                       kwargs={"installSignalHandlers": False})
        self.thread.start()

    def open(self) -> None:
        """Connect (and authenticate) unless connected; AdminError or Unreachable."""
        self._blocking(self._ready)

    def call(self, command: type[amp.Command], **args: Any) -> Any:
        """The command's ``result``; AdminError, or Unreachable."""
        try:
            return self._blocking(self._call, command, args)["result"]
        except ConnectionClosed:
            raise Unreachable(f"lost the connection to {self.target} before an answer "
                              f"(did the server stop?); the command may not have run")
        except amp.UnknownRemoteError as e:
            raise AdminError(f"the server failed ({e}); see its log")
        except amp.UnhandledCommand:
            raise AdminError(f"the server at {self.target} does not know this command "
                             f"(is it an older pushsvc?)")

    # -- in the reactor thread

    def _ready(self):
        """A Deferred firing with a live, authenticated connection."""
        if _alive(self.protocol):
            return succeed(self.protocol)
        if self.protocol is not None and not self.protocol.lost:
            self.protocol.transport.abortConnection()
        self.protocol = None
        d = connectProtocol(self.target.endpoint(self.reactor), _Client())
        if self.secret:
            d.addCallback(self._authenticate)
        return d.addCallback(self._keep)

    def _authenticate(self, protocol: _Client):
        def refused(failure):
            protocol.transport.loseConnection()
            return failure
        return (protocol.callRemote(Authenticate, secret=self.secret)
                .addCallbacks(lambda _: protocol, refused))

    def _keep(self, protocol: _Client) -> _Client:
        self.protocol = protocol
        return protocol

    def _call(self, command: type[amp.Command], args: dict[str, Any]):
        return self._ready().addCallback(lambda p: p.callRemote(command, **args))

    def _stop(self) -> None:
        if self.protocol is not None and not self.protocol.lost:
            self.protocol.transport.loseConnection()
        self.reactor.stop()

    # -- from the main thread

    def _blocking(self, f, *args, **kwargs):
        try:
            return blockingCallFromThread(self.reactor, f, *args, **kwargs)
        except (ConnectError, DNSLookupError) as e:
            raise Unreachable(self.cannot_connect(e))

    def cannot_connect(self, e: Exception) -> str:
        """The one line for a failed connect: the endpoint, why, and a hint."""
        where = f"cannot connect to {self.target.describe()}"
        number = getattr(e, "osError", None)
        if number in (errno.EACCES, errno.EPERM):
            return f"{where}: permission denied (run the console as the server's user)"
        if isinstance(number, int) and number:
            why = os.strerror(number)
        elif isinstance(e, ConnectError):
            why = (str(e.args[0]) if e.args and e.args[0] else e.MESSAGE).rstrip(".")
        else:
            why = str(e).rstrip(".")
        if isinstance(e, DNSLookupError):
            return f"{where}: {why}"
        if self.target.path and not os.path.isabs(self.target.path):
            hint = ("is pushsvc running, and is this its run directory? "
                    "Use --connect to give its endpoint")
        else:
            hint = "is pushsvc running?"
        return f"{where}: {why}; {hint}"

    def close(self) -> None:
        if self.thread.is_alive():
            self.reactor.callFromThread(self._stop)
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
    answer = command.answer(result)
    text = json.dumps(answer, ensure_ascii=False) if as_json else command.show(answer)
    if text:
        print(text)
    errors = command.errors(result)
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


# -- the prompt --------------------------------------------------------------

def interactive_words(name: str, rest: str) -> list[str]:
    """The words of a typed line: as a shell splits them, except that ``push``
    takes its DATA (JSON or text) as written, the rest of the line (shell
    quotes around it are fine too)."""
    if name != "push":
        return shlex.split(rest)
    target, _, data = rest.strip().partition(" ")
    data = data.strip()
    try:
        json.loads(data)
    except ValueError:
        try:
            unquoted = shlex.split(data)
        except ValueError:  # an unclosed quote: plain text, as typed (it's)
            unquoted = []
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
        try:
            print(help_for(arg.split(), prompt=True))
        except Usage as e:
            print(e, file=sys.stderr)

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
    """Where to connect and the secret to give; ConfigError or BadEndpoint."""
    settings = build_settings(args.config) if args.config else None
    endpoint = args.connect if args.connect is not None else (
        settings.admin if settings else DEFAULT_ADMIN)
    if not endpoint and args.connect is None:
        raise ConfigError("server.admin", f"is off (\"\") in {args.config}: "
                                          "the server has no console")
    secret = args.secret or os.environ.get(SECRET_ENV) or (
        settings.admin_secret if settings else "")
    return parse_endpoint(endpoint), secret


def console(argv: list[str] | None) -> int:
    """The whole console, its exit status."""
    args = parse_args(argv)
    if args.command == "help":  # answered here, without the server
        try:
            print(help_for(args.words))
            return 0
        except Usage as e:
            print(e, file=sys.stderr)
            return 2
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
    except (Usage, BadEndpoint) as e:
        print(e, file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    connection = Connection(target, secret)
    try:
        if args.watch is not None:
            return watch(connection, args.watch, args.count, args.json)
        if prepared is not None:
            return perform(connection, *prepared, args.json)
        connection.open()
        return interact(connection, args.json)
    except (AdminError, Unreachable) as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        connection.close()


# Exit status when the reader of our output went away (``| head``): what a
# shell reports for a tool killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> None:
    try:
        try:
            status = console(argv)
        except SystemExit as e:  # argparse: --help, or a bad option
            status = e.code
        except KeyboardInterrupt:  # Ctrl-C before (or after) the work
            status = 130
        sys.stdout.flush()  # here, not at exit, where a broken pipe cannot be caught
    except BrokenPipeError:
        # Nobody reads our output any more: no traceback, and no second
        # error when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_BROKEN_PIPE
    sys.exit(status)


if __name__ == "__main__":
    main()
