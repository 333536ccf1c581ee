"""The Pusher HTTP API: routes, request bodies, answers, and webhook bodies.
No I/O: the edge gathers the counts and members, these functions shape them.

What this follows: Pusher's "HTTP API reference" (events, batch events,
channels, channel, users; the info attributes; 10 KB of data, 100 channels
per trigger, 10 events per batch), its webhooks page, and the bodies the
official Python server SDK (``pusher`` 3.3) sends.

Routes (``parse_route``; 404 for another path, 405 for another method)::

    POST /apps/{id}/events                     {"name","data","channel"|"channels",
                                                "socket_id"?,"info"?}   -> {} or {"channels":{..}}
    POST /apps/{id}/batch_events               {"batch":[{..,"channel"},..]} -> {} or {"batch":[..]}
    GET  /apps/{id}/channels                   ?filter_by_prefix=&info=user_count
    GET  /apps/{id}/channels/{channel}         ?info=user_count,subscription_count
    GET  /apps/{id}/channels/{channel}/users   presence channels only
    POST /apps/{id}/users/{user}/terminate_connections   (also /users/{user}/..., as the
                                               Python SDK sends it)

Parameters travel in the JSON body of a POST (as the SDKs send them).  The
``data`` of an event is Pusher's string (a JSON value that is not a string is
taken as its JSON text, protocol.data_text); its UTF-8 size is held to the
app's ``max_event_bytes`` (413).  Event names are at most 200 characters and
may not start with ``pusher:`` or ``pusher_internal:`` (they would pass for
the server's own events).  ``info=user_count`` is for presence channels (400
elsewhere, as Pusher does); ``subscription_count`` is given for every kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..protocol import encode
from .apps import WEBHOOK_EVENTS, PusherApp
from .names import (MAX_EVENT_NAME, PRESENCE, SERVER_TO_USER, PusherError, channel_kind,
                    check_channel, check_socket_id)
from .protocol import data_text

MAX_CHANNELS = 100              # channels of one trigger
MAX_BATCH = 10                  # events of one batch
INFO_ATTRIBUTES = ("user_count", "subscription_count")


@dataclass(frozen=True, slots=True)
class Route:
    """What an HTTP API request asks for: ``name`` is ``events``,
    ``batch_events``, ``channels``, ``channel``, ``users`` or
    ``terminate_connections``; ``channel``/``user`` are unescaped; ``app_id``
    is None for the SDK's ``/users/{user}/terminate_connections``."""
    name: str
    app_id: str | None
    channel: str | None = None
    user: str | None = None


def parse_route(method: str, path: str) -> Route:
    """The route of ``method path`` (the path as sent); PusherError(404, 405).

    ``/users/{user}/terminate_connections`` without ``/apps/{id}`` (where the
    Python SDK 3.3 sends it) is a route too, with ``app_id`` None: the app
    is the one whose key signed the request.
    """
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "" and parts[1] == "users":
        parts = ["", "apps", None] + parts[1:]
    if len(parts) < 4 or parts[0] or parts[1] != "apps" or parts[2] == "":
        raise PusherError(404, f"no such resource: {path[:200]}")
    app_id, rest = parts[2], parts[3:]
    if rest == ["events"] or rest == ["batch_events"]:
        route, wants = Route(rest[0], app_id), "POST"
    elif rest == ["channels"]:
        route, wants = Route("channels", app_id), "GET"
    elif len(rest) == 2 and rest[0] == "channels" and rest[1]:
        route, wants = Route("channel", app_id, unquote(rest[1])), "GET"
    elif len(rest) == 3 and rest[0] == "channels" and rest[1] and rest[2] == "users":
        route, wants = Route("users", app_id, unquote(rest[1])), "GET"
    elif (len(rest) == 3 and rest[0] == "users" and rest[1]
          and rest[2] == "terminate_connections"):
        route, wants = Route("terminate_connections", app_id, user=unquote(rest[1])), "POST"
    else:
        raise PusherError(404, f"no such resource: {path[:200]}")
    if app_id is None and route.name != "terminate_connections":
        raise PusherError(404, f"no such resource: {path[:200]}")
    if method.upper() != wants:
        raise PusherError(405, f"{path[:200]} takes {wants}, not {method[:10]}")
    return route


# Room in a body for what is not event data (the names, up to 100 channels
# of 200 characters, socket_id, info) and a factor for the JSON escaping of
# the data (an ASCII control character or a non-ASCII one escaped as \uXXXX
# takes 6 bytes, a quote 2).
BODY_OVERHEAD = 32 * 1024
ESCAPING = 6


def body_limit(app: PusherApp, route: str) -> int:
    """The largest body ``route`` (``events``, ``batch_events``...) takes for
    ``app``: room for its largest events, escaped; the others take no body
    worth the name (4 KiB)."""
    if route == "events":
        return ESCAPING * app.max_event_bytes + BODY_OVERHEAD
    if route == "batch_events":
        return MAX_BATCH * (ESCAPING * app.max_event_bytes + BODY_OVERHEAD)
    return 4096


# -- triggers ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Trigger:
    """One event to publish: ``data`` is Pusher's string; ``socket_id`` is
    the connection not to send it to; ``info`` the attributes asked for."""
    name: str
    data: str
    channels: tuple[str, ...]
    socket_id: str | None = None
    info: tuple[str, ...] = ()


def parse_info(value: Any, where: str = "info") -> tuple[str, ...]:
    """``info``: a comma-separated list of attributes; 400 for an unknown one."""
    if value is None or value == "":
        return ()
    if not isinstance(value, str):
        raise PusherError(400, f"'{where}' must be a comma-separated string")
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for name in names:
        if name not in INFO_ATTRIBUTES:
            raise PusherError(400, f"'{where}': unknown attribute {name[:50]!r}; known: "
                                   f"{', '.join(INFO_ATTRIBUTES)}")
    return names


def _json_body(body: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PusherError(400, "the body must be a JSON object")
    if not isinstance(value, dict):
        raise PusherError(400, "the body must be a JSON object")
    return value


def _event(obj: Any, app: PusherApp, where: str, batch: bool) -> Trigger:
    if not isinstance(obj, dict):
        raise PusherError(400, f"{where} must be an object")
    name = obj.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_EVENT_NAME:
        raise PusherError(400, f"{where}name must be a string of 1 to {MAX_EVENT_NAME} "
                               "characters")
    if name.startswith(("pusher:", "pusher_internal:")):
        raise PusherError(400, f"{where}name may not start with pusher: or pusher_internal:")
    if "data" not in obj:
        raise PusherError(400, f"{where}data is required")
    data = data_text(obj["data"])
    size = len(data.encode("utf-8", "surrogatepass"))
    if size > app.max_event_bytes:
        raise PusherError(413, f"{where}data is {size} bytes; the limit is "
                               f"{app.max_event_bytes}")
    if batch or "channels" not in obj:
        channels = [obj.get("channel")]
        if not batch and "channel" not in obj:
            raise PusherError(400, "give 'channels' (a list) or 'channel'")
    elif "channel" in obj:
        raise PusherError(400, "give 'channels' or 'channel', not both")
    else:
        channels = obj["channels"]
        if not isinstance(channels, list) or not 0 < len(channels) <= MAX_CHANNELS:
            raise PusherError(400, f"'channels' must be a list of 1 to {MAX_CHANNELS} "
                                   "channel names")
    for channel in channels:
        try:
            check_channel(channel, app.max_channel_name, 400)
        except PusherError as e:
            raise PusherError(400, f"{where}channel: {e.message}")
    socket_id = obj.get("socket_id")
    if socket_id is not None:
        check_socket_id(socket_id, 400)
    return Trigger(name, data, tuple(dict.fromkeys(channels)), socket_id,
                   parse_info(obj.get("info"), f"{where}info"))


def parse_trigger(body: bytes | str, app: PusherApp) -> Trigger:
    """The body of ``POST /apps/{id}/events``; PusherError(400 or 413)."""
    return _event(_json_body(body), app, "", batch=False)


def parse_batch(body: bytes | str, app: PusherApp, max_batch: int = MAX_BATCH) -> list[Trigger]:
    """The body of ``POST /apps/{id}/batch_events``; PusherError(400 or 413)."""
    batch = _json_body(body).get("batch")
    if not isinstance(batch, list) or not 0 < len(batch) <= max_batch:
        raise PusherError(400, f"'batch' must be a list of 1 to {max_batch} events")
    return [_event(obj, app, f"batch[{i}].", batch=True) for i, obj in enumerate(batch)]


# -- answers -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChannelStats:
    """What the edge gathered about one channel: its connections and, for a
    presence channel, its distinct users."""
    subscription_count: int = 0
    user_count: int = 0


def _attributes(channel: str, info: tuple[str, ...], stats: ChannelStats | None,
                strict: bool) -> dict[str, int]:
    stats = stats or ChannelStats()
    out: dict[str, int] = {}
    for name in info:
        if name == "user_count" and channel_kind(channel) != PRESENCE:
            if strict:
                raise PusherError(400, "user_count is only for presence channels")
            continue
        out[name] = getattr(stats, name)
    return out


def channel_stats(members: list[dict[str, Any]]) -> ChannelStats:
    """A channel's figures from its group's members (the ``group`` command's
    ``[{"session":..,"user":..},..]``): every session is a subscription; the
    users are the distinct signed-in ones."""
    return ChannelStats(subscription_count=len(members), user_count=len(user_ids(members)))


def user_ids(members: list[dict[str, Any]]) -> list[str]:
    """The distinct users of a group's members, sorted (sessions without a
    user are not users)."""
    return sorted({m["user"] for m in members if m.get("user") is not None})


def trigger_answer(trigger: Trigger, stats: dict[str, ChannelStats]) -> dict[str, Any]:
    """The answer to a trigger: ``{}``, or with ``info`` the attributes of
    each channel (``user_count`` only for presence channels)."""
    if not trigger.info:
        return {}
    return {"channels": {channel: _attributes(channel, trigger.info, stats.get(channel), False)
                         for channel in trigger.channels}}


def batch_answer(triggers: list[Trigger], stats: dict[str, ChannelStats]) -> dict[str, Any]:
    """The answer to a batch: ``{}``, or when any event asked for ``info``,
    the attributes of each event's channel, in order."""
    if not any(t.info for t in triggers):
        return {}
    return {"batch": [_attributes(t.channels[0], t.info, stats.get(t.channels[0]), False)
                      for t in triggers]}


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name) or [None]
    return values[0]


def channels_answer(query: dict[str, list[str]],
                    stats: dict[str, ChannelStats]) -> dict[str, Any]:
    """``GET /channels``: the occupied channels (of ``stats``, by channel name)
    whose names start with ``filter_by_prefix``, with the ``info`` asked for;
    ``user_count`` needs a ``presence-`` prefix (else 400)."""
    prefix = _one(query, "filter_by_prefix") or ""
    info = parse_info(_one(query, "info"))
    if "user_count" in info and not prefix.startswith("presence-"):
        raise PusherError(400, "info=user_count needs filter_by_prefix=presence-")
    return {"channels": {
        channel: _attributes(channel, info, stats[channel], False)
        for channel in sorted(stats)
        if channel.startswith(prefix) and stats[channel].subscription_count > 0
        and channel_kind(channel) != SERVER_TO_USER}}


def channel_answer(channel: str, query: dict[str, list[str]], stats: ChannelStats | None,
                   app: PusherApp) -> dict[str, Any]:
    """``GET /channels/{channel}``: ``occupied`` and the ``info`` asked for
    (``user_count`` of a channel that is not presence: 400)."""
    check_channel(channel, app.max_channel_name, 400)
    info = parse_info(_one(query, "info"))
    occupied = stats is not None and stats.subscription_count > 0
    return {"occupied": occupied, **_attributes(channel, info, stats, True)}


def users_answer(channel: str, user_ids: list[str], app: PusherApp) -> dict[str, Any]:
    """``GET /channels/{channel}/users``: the users of a presence channel."""
    if check_channel(channel, app.max_channel_name, 400) != PRESENCE:
        raise PusherError(400, "users can only be listed for presence channels")
    return {"users": [{"id": user_id} for user_id in user_ids]}


# -- webhooks ----------------------------------------------------------------

def webhook_event(name: str, channel: str, **fields: Any) -> dict[str, Any]:
    """One event of a webhook body: ``channel_occupied``/``channel_vacated``
    (no fields), ``member_added``/``member_removed`` (``user_id``),
    ``client_event`` (``event``, ``data``, ``socket_id``, ``user_id`` on
    presence channels)."""
    if name not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {name!r}")
    return {"name": name, "channel": channel,
            **{key: value for key, value in fields.items() if value is not None}}


def webhook_body(events: list[dict[str, Any]], time_ms: int) -> bytes:
    """A webhook body: ``{"time_ms":..,"events":[..]}`` (sign it with
    signatures.webhook_headers)."""
    return encode({"time_ms": time_ms, "events": events})
