"""The ``[[pusher.apps]]`` tables, and how a Pusher app's channels map onto
pushsvc groups.  No I/O.

Each table is one Pusher app::

    [[pusher.apps]]
    id = "1001"                 # the app id of the HTTP API: /apps/1001/events
    key = "app-key"             # the public key: ws://host/app/app-key, auth_key
    secret = "app-secret"       # signs channel auth, signin, API requests, webhooks
    enabled = true              # false: connections closed with 4003, API answers 403
    client_events = false       # whether clients may send client-* events
    user_authentication = false # true: a connection must sign in (pusher:signin)
    max_connections = 0         # open connections of this app, cluster-wide; 0 = no cap
    max_event_bytes = 10240     # an event's data, UTF-8 bytes (Pusher's 10 KB)
    max_channel_name = 200      # characters (Pusher's limit; its SDKs refuse longer)
    max_client_events_per_second = 10   # per connection (Pusher's); over it 4301; 0 = none
    max_backend_events_per_second = 0   # HTTP API events per process; over it 429; 0 = none
    allowed_origins = ["*"]     # pages that may connect (origins.py); others: 4009
    webhooks = [{url = "https://backend/pusher/webhook",
                 events = ["channel_occupied", "channel_vacated"]}]

``check_apps`` checks the raw tables (the config loader calls it and turns an
``AppTableError`` into one start-up line naming its key, such as
``pusher.apps[0].secret``) and returns them complete, with the defaults.
``Apps`` answers ``by_key``, ``by_id`` and maps channels to groups.

Channels and groups: the channel ``C`` of the app ``ID`` *is* the pushsvc group
``pusher.ID:C`` (``:`` is ``policy.namespace_separator``, whatever it is set
to), in the namespace ``pusher.ID`` -- one namespace per app, so two apps
never share a channel, and a ``[namespaces."pusher.ID"]`` table sets that
app's pushsvc-side rules.  A Pusher client subscribed to ``chat`` of app
``1001`` is a member of the group ``pusher.1001:chat``: pushsvc's own API
pushing to ``{"group":"pusher.1001:chat"}`` reaches it, and a Pusher trigger
on ``chat`` reaches pushsvc clients that joined ``pusher.1001:chat``.
``group_of`` and ``channel_of`` are the two directions; ``locate`` finds the
app and channel of any group.  An app id is therefore limited to letters,
digits, ``_`` and ``-`` (not the separator): the mapping is never ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..namespaces import TableError
from .origins import AllowedOrigins, check_allowed_origins

# The webhook events a [[pusher.apps]] table may ask for (Pusher's names).
WEBHOOK_EVENTS = ("channel_occupied", "channel_vacated", "member_added",
                  "member_removed", "client_event")

# The keys of a table, with their defaults (None: required).
DEFAULTS: dict[str, Any] = {
    "id": None, "key": None, "secret": None,
    "enabled": True,
    "client_events": False,
    "user_authentication": False,
    "max_connections": 0,
    "webhooks": [],
    "max_event_bytes": 10240,
    "max_channel_name": 200,
    "max_client_events_per_second": 10,
    "max_backend_events_per_second": 0,
    "allowed_origins": ["*"],
}

NAMESPACE_PREFIX = "pusher."
MAX_CHANNEL_NAME = 200          # Pusher's limit, and its SDKs'
MAX_EVENT_BYTES = 1024 * 1024   # a sanity cap on max_event_bytes
MAX_EVENTS_PER_SECOND = 1_000_000  # a sanity cap on the rates
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")


# A ``[[pusher.apps]]`` table is wrong: ``key`` (``pusher.apps[0].secret``)
# and what is wrong with it; the same error as a [namespaces] table's.
AppTableError = TableError


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where to POST which webhook events."""
    url: str
    events: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PusherApp:
    """One checked ``[[pusher.apps]]`` table."""
    id: str
    key: str
    secret: str = field(repr=False)
    enabled: bool = True
    client_events: bool = False
    user_authentication: bool = False
    max_connections: int = 0
    webhooks: tuple[Webhook, ...] = ()
    max_event_bytes: int = 10240
    max_channel_name: int = 200
    max_client_events_per_second: int = 10
    max_backend_events_per_second: int = 0
    allowed_origins: AllowedOrigins = field(default_factory=AllowedOrigins, compare=False,
                                            repr=False)

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> "PusherApp":
        """From a table ``check_apps`` returned."""
        hooks = tuple(Webhook(h["url"], tuple(h["events"])) for h in table["webhooks"])
        return cls(**{**table, "webhooks": hooks,
                      "allowed_origins": AllowedOrigins(table["allowed_origins"])})

    @property
    def namespace(self) -> str:
        """The pushsvc namespace of the app's channels: ``pusher.<id>``."""
        return NAMESPACE_PREFIX + self.id

    def webhook_urls(self, event: str) -> list[str]:
        """The URLs that want the webhook ``event`` (``channel_occupied``...)."""
        return [hook.url for hook in self.webhooks if event in hook.events]


def _whole(value: Any, minimum: int, maximum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValueError(f"must be a whole number from {minimum} to {maximum}{meaning}, "
                         f"got {value!r}")
    return value


def _check_webhooks(value: Any, label: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise AppTableError(label, "must be a list of tables such as "
                                   "{url = \"https://...\", events = [\"channel_occupied\"]}")
    hooks = []
    for i, hook in enumerate(value):
        where = f"{label}[{i}]"
        if not isinstance(hook, dict):
            raise AppTableError(where, "must be a table {url = ..., events = [...]}")
        unknown = sorted(set(hook) - {"url", "events"})
        if unknown:
            raise AppTableError(f"{where}.{unknown[0]}", "unknown setting; known: url, events")
        url = hook.get("url")
        if not isinstance(url, str) or not re.match(r"https?://[^\s/]+", url):
            raise AppTableError(f"{where}.url", f"must be an http:// or https:// URL, "
                                                f"got {url!r}")
        events = hook.get("events")
        if (not isinstance(events, list) or not events
                or not all(isinstance(e, str) for e in events)):
            raise AppTableError(f"{where}.events", "must be a non-empty list of event "
                                                   f"names: {', '.join(WEBHOOK_EVENTS)}")
        for event in events:
            if event not in WEBHOOK_EVENTS:
                raise AppTableError(f"{where}.events", f"unknown event {event!r}; known: "
                                                       f"{', '.join(WEBHOOK_EVENTS)}")
        hooks.append({"url": url, "events": list(dict.fromkeys(events))})
    return hooks


def _check_value(key: str, value: Any, label: str, separator: str) -> Any:
    """One setting of a table, checked; AppTableError names ``label``."""
    try:
        if key == "id":
            if not isinstance(value, str) or not _ID.fullmatch(value):
                raise ValueError(f"must be 1-64 letters, digits, '_' or '-' (it names the "
                                 f"namespace pusher.<id>), got {value!r}")
            if separator in NAMESPACE_PREFIX + value:
                raise ValueError(f"the namespace {NAMESPACE_PREFIX + value!r} would hold "
                                 f"policy.namespace_separator {separator!r}")
        elif key == "key":
            if not isinstance(value, str) or not _KEY.fullmatch(value):
                raise ValueError(f"must be 1-128 letters, digits, '_', '.' or '-' (it is "
                                 f"part of the URL /app/<key>), got {value!r}")
        elif key == "secret":
            if not isinstance(value, str) or not value:
                raise ValueError("must be a non-empty string")
        elif key in ("enabled", "client_events", "user_authentication"):
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {value!r}")
        elif key == "max_connections":
            _whole(value, 0, 2 ** 31, " (0 = no cap)")
        elif key == "max_event_bytes":
            _whole(value, 1, MAX_EVENT_BYTES, " (bytes)")
        elif key == "max_channel_name":
            _whole(value, 1, MAX_CHANNEL_NAME, " (characters; Pusher's SDKs refuse "
                                               "longer names)")
        elif key in ("max_client_events_per_second", "max_backend_events_per_second"):
            _whole(value, 0, MAX_EVENTS_PER_SECOND, " (events a second; 0 = no limit)")
        elif key == "webhooks":
            return _check_webhooks(value, label)
        elif key == "allowed_origins":
            return check_allowed_origins(value, label)
    except AppTableError:
        raise
    except ValueError as e:
        raise AppTableError(label, str(e))
    return value


def check_apps(raw: Any, separator: str = ":") -> list[dict[str, Any]]:
    """Check the ``[[pusher.apps]]`` tables (``raw``: the list TOML gives,
    None for none); the tables with their defaults, or AppTableError."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise AppTableError("pusher.apps", "must be tables written [[pusher.apps]]")
    checked: list[dict[str, Any]] = []
    seen: dict[str, dict[str, int]] = {"id": {}, "key": {}}
    for i, table in enumerate(raw):
        label = f"pusher.apps[{i}]"
        if not isinstance(table, dict):
            raise AppTableError(label, "must be a table ([[pusher.apps]])")
        for key in table:
            if key not in DEFAULTS:
                raise AppTableError(f"{label}.{key}",
                                    f"unknown setting; known: {', '.join(DEFAULTS)}")
        app: dict[str, Any] = {}
        for key, default in DEFAULTS.items():
            if key not in table:
                if default is None:
                    raise AppTableError(f"{label}.{key}", "is required")
                app[key] = list(default) if isinstance(default, list) else default
                continue
            app[key] = _check_value(key, table[key], f"{label}.{key}", separator)
        for key in ("id", "key"):
            first = seen[key].setdefault(app[key], i)
            if first != i:
                raise AppTableError(f"{label}.{key}", f"{app[key]!r} is already the {key} "
                                                      f"of pusher.apps[{first}]")
        checked.append(app)
    return checked


# The pushsvc-side rules of an app's namespace unless its own
# [namespaces."pusher.<id>"] table says otherwise: pushsvc's /ws clients may not
# join its groups (only server-side joins: the HTTP API, the console, token
# claims) nor send to them; only the app's signed HTTP API publishes there.
SERVER_ONLY = {"join": "server", "client_send": "none"}


def server_only_namespaces(tables: list[dict[str, Any]],
                           namespaces: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``namespaces`` (the ``[namespaces.NAME]`` tables) with each app's
    namespace ``pusher.<id>`` made server-only: ``SERVER_ONLY`` under the
    keys its own table sets, if it has one."""
    out = dict(namespaces)
    for table in tables:
        name = NAMESPACE_PREFIX + table["id"]
        out[name] = {**SERVER_ONLY, **namespaces.get(name, {})}
    return out


class Apps:
    """The configured Pusher apps: lookups and the channel <-> group mapping."""

    def __init__(self, tables: list[dict[str, Any]], separator: str = ":"):
        self.separator = separator
        self._by_id = {t["id"]: PusherApp.from_table(t) for t in tables}
        self._by_key = {app.key: app for app in self._by_id.values()}

    def __iter__(self) -> Iterator[PusherApp]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def by_key(self, key: str) -> PusherApp | None:
        """The app whose key is ``key`` (``/app/{key}``, ``auth_key``), or None."""
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> PusherApp | None:
        """The app whose id is ``app_id`` (``/apps/{id}/...``), or None."""
        return self._by_id.get(app_id)

    def group_of(self, app: PusherApp, channel: str) -> str:
        """The pushsvc group of ``channel`` of ``app``: ``pusher.<id>:<channel>``."""
        return f"{app.namespace}{self.separator}{channel}"

    def channel_of(self, app: PusherApp, group: str) -> str | None:
        """The channel of ``app`` that ``group`` is, or None when the group is
        not in the app's namespace."""
        prefix = app.namespace + self.separator
        if group.startswith(prefix) and len(group) > len(prefix):
            return group[len(prefix):]
        return None

    def locate(self, group: str) -> tuple[PusherApp, str] | None:
        """The app and channel that ``group`` is, or None for a group outside
        every app's namespace (an ordinary pushsvc group)."""
        if not group.startswith(NAMESPACE_PREFIX):
            return None
        head, found, channel = group.partition(self.separator)
        app = self._by_id.get(head[len(NAMESPACE_PREFIX):]) if found else None
        if app is None or not channel:
            return None
        return app, channel
