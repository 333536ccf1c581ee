"""Pusher Channels protocol 7 on the WebSocket: parse client frames, encode
server frames, convert data.  No I/O.

What this follows: Pusher's "Pusher Channels Protocol" reference (protocol
version 7: its events, their data and the "double encoding" of ``data``) and
pusher-js's handling of the same frames.  Channel names, socket ids, close
codes and ``PusherError`` are in names.py (and importable from here).

Client frames (``parse_frame`` -> ``ClientFrame``)::

    {"event":"pusher:subscribe","data":{"channel":C,"auth":"key:sig","channel_data":"{..}"}}
    {"event":"pusher:unsubscribe","data":{"channel":C}}
    {"event":"pusher:ping","data":{}}        answered by pusher:pong
    {"event":"pusher:pong","data":{}}        the answer to our pusher:ping
    {"event":"pusher:signin","data":{"auth":"key:sig","user_data":"{\\"id\\":..}"}}
    {"event":"client-E","channel":C,"data":ANY}   private/presence channels only

``data`` of a ``pusher:`` event may also arrive as a JSON string holding the
object (some libraries double-encode); both are read.  A presence member's
``user_id`` may be a string or a whole number (Pusher's own example uses
10); it is made a string, the key of the presence hash.

Server frames (bytes, compact UTF-8 JSON)::

    pusher:connection_established   data '{"socket_id":"1.2","activity_timeout":120}'  (a string)
    pusher_internal:subscription_succeeded   channel, data '{}' or, for presence,
                                    '{"presence":{"ids":[..],"hash":{id:info},"count":N}}'
    pusher_internal:member_added    channel, data '{"user_id":..,"user_info":..}'
    pusher_internal:member_removed  channel, data '{"user_id":..}'
    pusher:pong / pusher:ping       data {}
    pusher:error                    data {"message":..,"code":N|null}   (an object)
    pusher:subscription_error       channel, data {"type":..,"error":..,"status":N}
    pusher:signin_success           data {"user_data":"{..}"}          (an object)
    E (a channel event)             {"event":E,"channel":C,"data":D[,"user_id":U]}

A channel event's bytes are the same for every Pusher recipient of it, so an
edge encodes it once per message (``channel_event``).

Data: Pusher's ``data`` is a string; a pushsvc message's ``data`` is any JSON
value.  pushsvc -> Pusher (``data_text``): a string goes as it is; any other
value goes as its compact JSON text (``{"a":1}`` -> ``'{"a":1}'``), which
pusher-js turns back into the object.  Pusher -> pushsvc (``data_value``): the
string is read as JSON when it is JSON (``'{"a":1}'`` -> ``{"a":1}``, ``'5'``
-> ``5``), else it stays a string -- exactly what pusher-js hands its ``bind``
callbacks, so both kinds of client see the same value.  A Pusher client
receiving a Pusher trigger gets the trigger's string unchanged (not a
round trip through ``data_value``, which would turn ``'"x"'`` into ``'x'``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..protocol import encode
from .names import (
    ACTIVITY_TIMEOUT, APP_DISABLED, APP_NOT_FOUND, CHANNEL_NAME, CLIENT_EVENT_RATE_LIMIT,
    ENCRYPTED, INACTIVE, INVALID_VERSION, MAX_EVENT_NAME, NO_PROTOCOL, OVER_CAPACITY,
    OVER_QUOTA, PATH_NOT_FOUND, PONG_NOT_RECEIVED, PRESENCE, PRIVATE, PROTOCOL, PUBLIC,
    RECONNECT, SERVER_TO_USER, SERVER_TO_USER_PREFIX, SOCKET_ID, SSL_ONLY, UNAUTHORIZED,
    UNSUPPORTED_PROTOCOL, PusherError, channel_kind, check_channel, check_socket_id,
    new_socket_id, parse_connect, reconnect_advice, user_of_channel)

__all__ = [
    # names.py, re-exported
    "ACTIVITY_TIMEOUT", "APP_DISABLED", "APP_NOT_FOUND", "CHANNEL_NAME",
    "CLIENT_EVENT_RATE_LIMIT", "ENCRYPTED", "INACTIVE", "INVALID_VERSION", "MAX_EVENT_NAME",
    "NO_PROTOCOL", "OVER_CAPACITY", "OVER_QUOTA", "PATH_NOT_FOUND", "PONG_NOT_RECEIVED",
    "PRESENCE", "PRIVATE", "PROTOCOL", "PUBLIC", "RECONNECT", "SERVER_TO_USER",
    "SERVER_TO_USER_PREFIX", "SOCKET_ID", "SSL_ONLY", "UNAUTHORIZED", "UNSUPPORTED_PROTOCOL",
    "PusherError", "channel_kind", "check_channel", "check_socket_id", "new_socket_id",
    "parse_connect", "reconnect_advice", "user_of_channel",
    # this module
    "ClientFrame", "channel_event", "connection_established", "data_of_message", "data_text",
    "data_value",
    "error", "member_added", "member_added_data", "member_removed", "member_removed_data",
    "parse_frame", "ping", "pong",
    "signin_success", "subscription_count", "subscription_error", "subscription_succeeded"]

# -- data --------------------------------------------------------------------

def data_text(value: Any) -> str:
    """pushsvc data -> Pusher's data string: a string as is, else its JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def data_value(text: str) -> Any:
    """Pusher's data string -> pushsvc data: its JSON value, or the string
    (also for ``NaN`` and ``Infinity``, which are not JSON)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return text


_DATA_FIELD = b',"data":'


def data_of_message(frame: bytes) -> str:
    """Pusher's data string of a pushsvc ``msg`` frame, without decoding the
    frame: pushsvc.frames.message_frame writes ``data`` last, and no field
    before it holds a ``"data"`` key (inside JSON strings quotes are
    escaped), so the first ``,"data":`` starts it.  Equals ``data_text(data)``
    (or the same JSON ASCII-escaped, when data holds a lone surrogate); for
    an edge that turns one message into one Pusher frame per channel."""
    body = frame[frame.index(_DATA_FIELD) + len(_DATA_FIELD):-1]
    return json.loads(body) if body[:1] == b'"' else body.decode("utf-8")


# -- client frames -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClientFrame:
    """One parsed client frame.  ``channel_data`` and ``user_data`` are the
    texts as sent (they are signed as they are); ``user_id``/``user_info``
    are read from them; ``data`` of a client event is Pusher's string."""
    event: str
    channel: str | None = None
    kind: str | None = None
    auth: str | None = None
    channel_data: str | None = None
    user_data: str | None = None
    user_id: str | None = None
    user_info: Any = None
    data: str | None = None


def _string(data: dict[str, Any], key: str, event: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise PusherError(None, f"{event} needs '{key}' (a non-empty string)")
    return value


def _user_id(value: Any, what: str) -> str:
    """A user id: a non-empty string, or a whole number (made a string)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise PusherError(None, f"{what} must be a non-empty string of at most 200 "
                                "characters")
    return value


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise PusherError(None, f"'{what}' must be a JSON object encoded as a string")
    return value


def parse_frame(text: str | bytes, max_event_bytes: int = 10240,
                max_channel_name: int = 200) -> ClientFrame:
    """Parse and check one client frame; raises PusherError(None, ...).

    The limits are the app's (``PusherApp.max_event_bytes``/``max_channel_name``).
    Whether the app allows client events and whether the connection is
    subscribed to the channel are the edge's to check.
    """
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise PusherError(None, "a frame must be a JSON object")
    if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
        raise PusherError(None, "a frame must be a JSON object with an 'event' string")
    event = frame["event"]
    data = frame.get("data")
    if event.startswith("pusher:"):
        if isinstance(data, str):
            try:
                data = json.loads(data) if data else {}
            except ValueError:
                raise PusherError(None, f"the data of {event[:50]} is not JSON")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PusherError(None, f"the data of {event[:50]} must be an object")
    if event in ("pusher:ping", "pusher:pong"):
        return ClientFrame(event)
    if event in ("pusher:subscribe", "pusher:unsubscribe"):
        channel = data.get("channel")
        kind = check_channel(channel, max_channel_name)
        if event == "pusher:unsubscribe":
            return ClientFrame(event, channel, kind)
        if kind in (PRIVATE, PRESENCE):
            auth = _string(data, "auth", f"subscribing to a {kind} channel")
        else:
            auth = None
        if kind != PRESENCE:
            return ClientFrame(event, channel, kind, auth)
        channel_data = _string(data, "channel_data", "subscribing to a presence channel")
        if len(channel_data.encode("utf-8", "surrogatepass")) > max_event_bytes:
            raise PusherError(None, f"'channel_data' is over {max_event_bytes} bytes")
        member = _json_object(channel_data, "channel_data")
        return ClientFrame(event, channel, kind, auth, channel_data,
                           user_id=_user_id(member.get("user_id"), "channel_data.user_id"),
                           user_info=member.get("user_info"))
    if event == "pusher:signin":
        auth = _string(data, "auth", event)
        user_data = _string(data, "user_data", event)
        if len(user_data.encode("utf-8", "surrogatepass")) > max_event_bytes:
            raise PusherError(None, f"'user_data' is over {max_event_bytes} bytes")
        user = _json_object(user_data, "user_data")
        if not isinstance(user.get("id"), str):
            raise PusherError(None, "user_data.id must be a non-empty string")
        return ClientFrame(event, auth=auth, user_data=user_data,
                           user_id=_user_id(user["id"], "user_data.id"), user_info=user)
    if event.startswith("client-"):
        if len(event) > MAX_EVENT_NAME:
            raise PusherError(None, f"event name longer than {MAX_EVENT_NAME} characters")
        channel = frame.get("channel")
        kind = check_channel(channel, max_channel_name)
        if kind not in (PRIVATE, PRESENCE):
            raise PusherError(None, "client events can only be sent on private- and "
                                    "presence- channels")
        text = data_text(data)
        if len(text.encode("utf-8", "surrogatepass")) > max_event_bytes:
            raise PusherError(None, f"the event's data is over {max_event_bytes} bytes")
        return ClientFrame(event, channel, kind, data=text)
    if event.startswith(("pusher:", "pusher_internal:")):
        raise PusherError(None, f"unknown event {event[:50]!r}")
    raise PusherError(None, f"clients may only send pusher: events and client- events, "
                            f"not {event[:50]!r}")


# -- server frames -----------------------------------------------------------

def _event(event: str, data: Any, channel: str | None = None, **extra: Any) -> bytes:
    frame: dict[str, Any] = {"event": event}
    if channel is not None:
        frame["channel"] = channel
    frame["data"] = data
    frame.update(extra)
    return encode(frame)


def connection_established(socket_id: str, activity_timeout: int = ACTIVITY_TIMEOUT) -> bytes:
    """The first frame: the socket id and the activity timeout (seconds)."""
    return _event("pusher:connection_established", data_text(
        {"socket_id": socket_id, "activity_timeout": activity_timeout}))


def subscription_succeeded(channel: str, members: dict[str, Any] | None = None) -> bytes:
    """The answer to a subscribe; ``members`` (user id -> user_info) for a
    presence channel."""
    if members is None:
        return _event("pusher_internal:subscription_succeeded", "{}", channel)
    presence = {"ids": list(members), "hash": members, "count": len(members)}
    return _event("pusher_internal:subscription_succeeded",
                  data_text({"presence": presence}), channel)


def member_added_data(user_id: str, user_info: Any = None) -> str:
    """The data of ``pusher_internal:member_added``."""
    member: dict[str, Any] = {"user_id": user_id}
    if user_info is not None:
        member["user_info"] = user_info
    return data_text(member)


def member_removed_data(user_id: str) -> str:
    """The data of ``pusher_internal:member_removed``."""
    return data_text({"user_id": user_id})


def member_added(channel: str, user_id: str, user_info: Any = None) -> bytes:
    """A user's first connection joined the presence ``channel``."""
    return _event("pusher_internal:member_added", member_added_data(user_id, user_info),
                  channel)


def member_removed(channel: str, user_id: str) -> bytes:
    """A user's last connection left the presence ``channel``."""
    return _event("pusher_internal:member_removed", member_removed_data(user_id), channel)


def subscription_count(channel: str, count: int) -> bytes:
    """``pusher_internal:subscription_count``: the channel's connections."""
    return _event("pusher_internal:subscription_count",
                  data_text({"subscription_count": count}), channel)


def pong() -> bytes:
    return _event("pusher:pong", {})


def ping() -> bytes:
    return _event("pusher:ping", {})


def error(message: str, code: int | None = None) -> bytes:
    """``pusher:error``; ``code`` None for an error that does not close."""
    return _event("pusher:error", {"message": message, "code": code})


def subscription_error(channel: str, message: str, status: int = 401,
                       error_type: str = "AuthError") -> bytes:
    """``pusher:subscription_error`` on ``channel``: pusher-js hands it to the
    channel's ``pusher:subscription_error`` bindings (Laravel Echo's ``error``)."""
    return _event("pusher:subscription_error",
                  {"type": error_type, "error": message, "status": status}, channel)


def signin_success(user_data: str) -> bytes:
    """The answer to a good ``pusher:signin``: the user data as it was signed."""
    return _event("pusher:signin_success", {"user_data": user_data})


def channel_event(event: str, channel: str, data: Any, user_id: str | None = None) -> bytes:
    """An event on ``channel``: ``data`` becomes Pusher's string (``data_text``);
    ``user_id`` is the sender of a client event on a presence channel."""
    extra = {} if user_id is None else {"user_id": user_id}
    return _event(event, data_text(data), channel, **extra)
