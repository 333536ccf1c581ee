"""``pushsvc-admin``: the console of a running pushsvc.

    pushsvc-admin stats                              one command, then exit
    pushsvc-admin push group:lobby '{"text":"hi"}'   DATA: JSON, or plain text as a string
    pushsvc-admin --json sessions u1                 the raw JSON result
    pushsvc-admin stats --watch 5                    the counters every 5 s, with rates
    pushsvc-admin                                    a prompt: history, help, tab completion

Exit status: 0 done, 1 the server refused or failed (one line on stderr) or
cannot be reached, 2 a bad command or argument (its usage on stderr), 141
its output's reader left (``| head``), quietly, as a tool killed by SIGPIPE.

The pieces: ``commands`` (the command table, arguments, help), ``output``
(tables, ``--json``, ``--watch``), ``connection`` (endpoints, connecting,
its errors) and ``prompt`` (the interactive console); here, the command
line and ``main``.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import DEFAULT_ADMIN, ConfigError, build_settings
from .commands import (COMMANDS, PROG, Usage, help_for, help_text, parse_data,
                       parse_target, parse_who, prepare)
from .connection import BadEndpoint, Connection, Target, Unreachable, parse_endpoint
from .output import WATCH_EVERY, duration, pairs, perform, table, watch
from .prompt import Console, interact, interactive_words
from .wire import AdminError

# Names of the pieces, importable from here as before.
__all__ = ["main", "COMMANDS", "BadEndpoint", "Console", "SECRET_ENV", "Target",
           "Unreachable", "Usage", "connection_of", "duration", "help_for",
           "interactive_words", "pairs", "parse_args", "parse_data", "parse_endpoint",
           "parse_target", "parse_who", "prepare", "table"]

SECRET_ENV = "PUSHSVC_ADMIN_SECRET"


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
