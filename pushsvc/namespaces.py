"""Namespaces: per-group rules for who may join, who may send, presence and
events, from the ``[namespaces.NAME]`` tables of the config file.  No I/O.

A group ``NS:rest`` belongs to namespace ``NS`` (the separator is
``policy.namespace_separator``); a group without the separator belongs to the
namespace ``""``, configured by ``[namespaces.""]``.  A namespace without a
table gets the defaults, which depend on ``auth.mode``: in the development mode
(``none``) anyone may join any group; with ``token`` or ``required`` a client
may join only what a rule allows (``JOIN_RULES``).  docs/security.md tells
the whole story.

``check_tables`` validates the raw tables (config.py calls it, so a bad table
stops start-up or a reload with one line naming its key); ``Namespaces``
answers ``of(group)`` with the group's ``Namespace``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from .protocol import FORBIDDEN, Address, ProtocolError

# Who may join a group of the namespace from a client (``join`` op):
#   open    anyone
#   token   a session whose connection token's ``groups`` claim names the
#           group (or a pattern such as ``team:7:*``), or a join carrying a
#           subscription token for it
#   proxy   as token, else the backend (proxy.join_url) decides
#   hook    as token, else the application's on_join hook decides
#   server  nobody: only server-side joins (HTTP API, console, token claims)
JOIN_RULES = ("open", "token", "proxy", "hook", "server")

# What a client's ``send`` may do with a group of the namespace:
#   joined  members may send to it
#   any     any session may send to it
#   none    nobody may
#   proxy   members may, when the backend (proxy.send_url) allows it
SEND_POLICIES = ("joined", "any", "none", "proxy")

# The keys of a [namespaces.NAME] table, and their checks.
KEYS = ("join", "client_send", "presence", "events", "max_members")

MAX_SEPARATOR = 8


@dataclass(frozen=True, slots=True)
class Namespace:
    """The rules of one namespace."""
    name: str
    join: str
    client_send: str
    presence: bool = True        # members may ask who else is in a group (``presence`` op)
    events: bool = False         # members get ``joined``/``left`` frames for the others
    max_members: int = 0         # sessions one group may hold; 0 = no cap


def _check_value(key: str, value: Any) -> Any:
    if key == "join":
        if value not in JOIN_RULES:
            raise ValueError(f"must be one of {', '.join(JOIN_RULES)}; got {value!r}")
    elif key == "client_send":
        if value not in SEND_POLICIES:
            raise ValueError(f"must be one of {', '.join(SEND_POLICIES)}; got {value!r}")
    elif key in ("presence", "events"):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number >= 0 (0 = no cap), got {value!r}")
    return value


def check_separator(value: Any) -> str:
    """``policy.namespace_separator``: 1-8 characters, no letter or digit."""
    if (not isinstance(value, str) or not 0 < len(value) <= MAX_SEPARATOR
            or any(c.isalnum() for c in value)):
        raise ValueError(f"must be 1-{MAX_SEPARATOR} characters that are not letters or "
                         f"digits, got {value!r}")
    return value


class TableError(ValueError):
    """A ``[namespaces]`` table is wrong: ``key`` (``namespaces.team.join``)
    and what is wrong with it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def check_tables(raw: Any, separator: str) -> dict[str, dict[str, Any]]:
    """Check the ``[namespaces]`` tables; a copy, or TableError."""
    if not isinstance(raw, dict):
        raise TableError("namespaces", "must be tables such as [namespaces.team]")
    checked: dict[str, dict[str, Any]] = {}
    for name, table in raw.items():
        label = f"namespaces.{name or chr(34) * 2}"
        if separator in name:
            raise TableError(label, f"a namespace name cannot hold the separator "
                                    f"{separator!r} (policy.namespace_separator)")
        if not isinstance(table, dict):
            raise TableError(label, f"must be a table ([{label}])")
        for key, value in table.items():
            if key not in KEYS:
                raise TableError(f"{label}.{key}",
                                 f"unknown setting; known: {', '.join(KEYS)}")
            try:
                _check_value(key, value)
            except ValueError as e:
                raise TableError(f"{label}.{key}", str(e))
        checked[name] = dict(table)
    return checked


@lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern:
    return re.compile(".*".join(map(re.escape, pattern.split("*"))), re.DOTALL)


def granted(names: Iterable[str], group: str) -> bool:
    """Whether ``group`` is one of ``names`` (a token's ``groups`` claim), or
    matches one with ``*`` in it (any run of characters: ``team:7:*``)."""
    for pattern in names:
        if pattern == group or ("*" in pattern and _pattern(pattern).fullmatch(group)):
            return True
    return False


class Namespaces:
    """Every namespace's rules, as the settings configure them."""

    def __init__(self, tables: dict[str, dict[str, Any]], separator: str = ":",
                 auth_mode: str = "none", client_send: str = "joined"):
        self.separator = separator
        self.auth_mode = auth_mode
        defaults = {"join": "open" if auth_mode == "none" else "token",
                    "client_send": client_send}
        self._defaults = defaults
        self.tables = {name: Namespace(name, **{**defaults, **table})
                       for name, table in tables.items()}
        self.client_send = client_send

    @classmethod
    def from_settings(cls, settings) -> "Namespaces":
        return cls(settings.namespaces, settings.namespace_separator, settings.auth_mode,
                   settings.client_send)

    def name_of(self, group: str) -> str:
        """The namespace ``group`` belongs to ("" without the separator)."""
        head, found, _ = group.partition(self.separator)
        return head if found else ""

    def of(self, group: str) -> Namespace:
        """The rules for ``group``."""
        name = self.name_of(group)
        found = self.tables.get(name)
        return found if found is not None else Namespace(name, **self._defaults)

    def open_in_secure_mode(self) -> list[str]:
        """The namespaces anyone may join although tokens are on (worth a warning)."""
        if self.auth_mode == "none":
            return []
        return sorted(name for name, ns in self.tables.items() if ns.join == "open")

    def check_send(self, session, address: Address) -> list[str]:
        """Raise ``forbidden`` unless ``session`` may send to ``address``; the
        groups of it whose namespace asks the backend first (``proxy``).

        Groups follow their namespace's ``client_send``; the other parts of
        an address (users, tags, sessions, all) need ``policy.client_send =
        "any"``.
        """
        others = address.all or address.user or address.tag or address.session
        if others and self.client_send != "any":
            if self.client_send == "none":
                raise ProtocolError(FORBIDDEN, "clients may not send messages")
            outside = [g for g in address.group if g not in session.groups]
            if outside:
                raise ProtocolError(FORBIDDEN, f"not a member of group '{outside[0]}'")
            raise ProtocolError(FORBIDDEN, "clients may only send to groups they have joined")
        ask = []
        for group in address.group:
            namespace = self.of(group)
            policy = namespace.client_send
            if policy == "any":
                continue
            if policy == "none":
                raise ProtocolError(FORBIDDEN, "clients may not send messages"
                                    if namespace.name not in self.tables else
                                    f"clients may not send to group '{group}' (namespace "
                                    f"'{namespace.name}')")
            if group not in session.groups:
                raise ProtocolError(FORBIDDEN, f"not a member of group '{group}'")
            if policy == "proxy":
                ask.append(group)
        return ask
