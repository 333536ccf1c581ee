"""The interactive prompt (``pushsvc-admin`` with no command): ``Console``,
its words (``interactive_words``, ``watch_options``), tab completion, and
readline history in ``~/.pushsvc_admin_history`` (``interact``)."""

from __future__ import annotations

import cmd
import json
import os
import shlex
import sys

from .. import loglevel
from .commands import COMMANDS, Usage, help_for, prepare
from .connection import Connection
from .output import WATCH_EVERY, perform, watch

HISTORY = os.path.join("~", ".pushsvc_admin_history")


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
