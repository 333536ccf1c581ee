"""Pusher signatures: channel authorization, user authentication (signin),
HTTP API requests and webhooks.  HMAC-SHA256, hex, with the app's secret;
every comparison in constant time.  No I/O: ``now`` is given.

What this follows: Pusher's "Generating the authentication string" guide
(auth strings, its worked examples), the "Authentication" section of its HTTP
API reference (the parameters, the 600 s window, the string to sign, its
worked example), its webhooks page (``X-Pusher-Key``, ``X-Pusher-Signature``),
and what the official Python server SDK (``pusher`` 3.3) sends.

- Private and presence channels: the client sends ``auth = "<key>:<sig>"``
  with ``sig = hmac(secret, "<socket_id>:<channel>")``, or for a presence
  channel ``hmac(secret, "<socket_id>:<channel>:<channel_data>")``, the
  ``channel_data`` text exactly as the backend signed it.
- Signin (user authentication): ``auth = "<key>:<sig>"`` with
  ``sig = hmac(secret, "<socket_id>::user::<user_data>")``.
- HTTP API: the query holds ``auth_key``, ``auth_timestamp`` (seconds, within
  600 s of the server's time), ``auth_version=1.0``, ``body_md5`` (hex MD5 of
  the body; the SDKs send it for empty bodies too) and ``auth_signature =
  hmac(secret, "METHOD\\nPATH\\nQUERY")``, where QUERY is every other parameter,
  keys lower-cased, sorted by key, ``key=value`` joined by ``&``, *not*
  URL-escaped, and PATH is the path as sent.  ``check_request`` answers the
  app, or PusherError with an HTTP status: 401 for a missing parameter, an
  unknown key, a key of another app, a stale timestamp or a bad signature;
  400 for a ``body_md5`` that is not the body's (a tampered body) or a
  repeated parameter; 403 for a disabled app.
- Webhooks: ``X-Pusher-Key: <key>`` and ``X-Pusher-Signature: hmac(secret, body)``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from .apps import Apps, PusherApp
from .names import PusherError

AUTH_VERSION = "1.0"
TIMESTAMP_WINDOW = 600          # seconds either side of now
MAX_SHOWN = 300                 # characters of a string to sign shown in an error


def sign(secret: str, text: str | bytes) -> str:
    """The hex HMAC-SHA256 of ``text`` with ``secret``."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    return hmac.new(secret.encode("utf-8"), text, hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    """``a == b`` in constant time (for strings of any characters)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"),
                               b.encode("utf-8", "surrogatepass"))


def _shown(text: str) -> str:
    return repr(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "...")


# -- channels and signin -----------------------------------------------------

def channel_string(socket_id: str, channel: str, channel_data: str | None = None) -> str:
    """What a channel authorization signs."""
    if channel_data is None:
        return f"{socket_id}:{channel}"
    return f"{socket_id}:{channel}:{channel_data}"


def channel_auth(app: PusherApp, socket_id: str, channel: str,
                 channel_data: str | None = None) -> str:
    """The ``auth`` a backend gives a client for ``channel`` (``key:sig``)."""
    return f"{app.key}:{sign(app.secret, channel_string(socket_id, channel, channel_data))}"


def user_string(socket_id: str, user_data: str) -> str:
    """What a user authentication (signin) signs."""
    return f"{socket_id}::user::{user_data}"


def user_auth(app: PusherApp, socket_id: str, user_data: str) -> str:
    """The ``auth`` of a ``pusher:signin`` (``key:sig``)."""
    return f"{app.key}:{sign(app.secret, user_string(socket_id, user_data))}"


def _check_auth(app: PusherApp, auth: Any, signed: str) -> None:
    if not isinstance(auth, str):
        raise PusherError(None, "'auth' must be a string \"<key>:<signature>\"")
    key, colon, signature = auth.partition(":")
    if not colon or not same(key, app.key):
        raise PusherError(None, "invalid auth: it must be \"<key>:<signature>\" with this "
                                "app's key")
    if not same(signature, sign(app.secret, signed)):
        raise PusherError(None, f"invalid signature: expected the HMAC SHA256 hex digest "
                                f"of {_shown(signed)} with the app's secret")


def check_channel_auth(app: PusherApp, socket_id: str, channel: str, auth: Any,
                       channel_data: str | None = None) -> None:
    """Raise PusherError(None, ...) unless ``auth`` authorizes ``socket_id``
    on the private or presence ``channel`` (with its ``channel_data``)."""
    _check_auth(app, auth, channel_string(socket_id, channel, channel_data))


def check_user_auth(app: PusherApp, socket_id: str, auth: Any, user_data: str) -> None:
    """Raise PusherError(None, ...) unless ``auth`` signs ``user_data`` in for
    ``socket_id`` (``pusher:signin``)."""
    _check_auth(app, auth, user_string(socket_id, user_data))


# -- the HTTP API ------------------------------------------------------------

def query_string(params: dict[str, str]) -> str:
    """The signed form of the query: keys lower-cased, sorted, not escaped."""
    pairs = sorted((key.lower(), value) for key, value in params.items())
    return "&".join(f"{key}={value}" for key, value in pairs)


def request_string(method: str, path: str, params: dict[str, str]) -> str:
    """What an HTTP API request signs (``params`` without ``auth_signature``)."""
    return f"{method.upper()}\n{path}\n{query_string(params)}"


def body_md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def signed_params(app: PusherApp, method: str, path: str, body: bytes, timestamp: int,
                  params: dict[str, str] | None = None) -> dict[str, str]:
    """The query of a signed request, as the SDKs make it."""
    out = dict(params or {})
    out.update(auth_key=app.key, auth_timestamp=str(timestamp), auth_version=AUTH_VERSION,
               body_md5=body_md5(body))
    out["auth_signature"] = sign(app.secret, request_string(method, path, out))
    return out


def _flat(query: dict[str, list[str]]) -> dict[str, str]:
    flat: dict[str, str] = {}
    lowered: set[str] = set()
    for key, values in query.items():
        if len(values) != 1 or key.lower() in lowered:
            raise PusherError(400, f"the query parameter {key[:50]!r} is repeated")
        lowered.add(key.lower())
        flat[key] = values[0]
    return flat


def check_request(method: str, path: str, query: dict[str, list[str]], body: bytes,
                  apps: Apps, now: float) -> PusherApp:
    """The app an HTTP API request is signed by; raises PusherError(401, 400
    or 403).  ``path`` is the path as sent (not unescaped), ``query`` the
    decoded parameters, ``now`` the time in seconds."""
    params = _flat(query)
    for name in ("auth_key", "auth_timestamp", "auth_version", "auth_signature"):
        if name not in params:
            raise PusherError(401, f"missing query parameter {name} (the request must be "
                                   "signed with the app's key and secret)")
    app = apps.by_key(params["auth_key"])
    if app is None:
        raise PusherError(401, f"unknown auth_key {params['auth_key'][:128]!r}")
    parts = path.split("/")
    if len(parts) > 2 and parts[1] == "apps" and parts[2] != app.id:
        raise PusherError(401, f"auth_key {app.key!r} is not the key of app "
                               f"{parts[2][:64]!r}")
    if params["auth_version"] != AUTH_VERSION:
        raise PusherError(401, f"unsupported auth_version {params['auth_version'][:20]!r}; "
                               f"use {AUTH_VERSION}")
    stamp = params["auth_timestamp"]
    if not stamp.isdigit() or abs(now - int(stamp)) > TIMESTAMP_WINDOW:
        raise PusherError(401, f"auth_timestamp {stamp[:20]!r} is not within "
                               f"{TIMESTAMP_WINDOW} s of the server's time ({int(now)})")
    signed = {k: v for k, v in params.items() if k != "auth_signature"}
    expected = request_string(method, path, signed)
    if not same(params["auth_signature"], sign(app.secret, expected)):
        raise PusherError(401, f"invalid auth_signature: expected the HMAC SHA256 hex "
                               f"digest of {_shown(expected)} with the app's secret")
    md5 = params.get("body_md5")
    if (body or md5 is not None) and not same(md5 or "", body_md5(body)):
        raise PusherError(400, "body_md5 is not the MD5 of the body" if md5 else
                               "a request with a body must sign its body_md5")
    if not app.enabled:
        raise PusherError(403, f"app {app.id} is disabled")
    return app


# -- webhooks ----------------------------------------------------------------

def webhook_headers(app: PusherApp, body: bytes) -> dict[str, str]:
    """The headers of a webhook POST carrying ``body``."""
    return {"Content-Type": "application/json", "X-Pusher-Key": app.key,
            "X-Pusher-Signature": sign(app.secret, body)}


def check_webhook(app: PusherApp, key: str, signature: str, body: bytes) -> bool:
    """Whether ``body`` with these headers was signed by ``app``."""
    return same(key, app.key) and same(signature, sign(app.secret, body))
