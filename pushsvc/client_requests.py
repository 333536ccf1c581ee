"""The requests of ``PushClient`` (pushsvc/client_reconnecting.py): sending
an op with a ``ref`` on the current connection, or queued until the client is
ready (``request``, ``auth``, ``join``, ``leave``, ``presence``, ``send``,
``ping``), and the fields of ``auth`` and ``join``, whose tokens may be
callables (``_token``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed

from .client_connection import ConnectionClosed, ServerError

if TYPE_CHECKING:
    from .client_reconnecting import _Connection


def _fresh(d: Deferred) -> Deferred:
    """A Deferred with ``d``'s result that is not ``called`` before it has one
    (``d`` may be waiting on another Deferred, and say ``called`` meanwhile)."""
    result = Deferred()
    d.chainDeferred(result)
    return result


class _Requests:
    """PushClient's request methods (a mixin: the state is PushClient's)."""

    def _send(self, conn: _Connection, op: str, fields: dict[str, Any],
              d: Deferred | None = None) -> Deferred:
        d = Deferred() if d is None else d
        if conn is not self.protocol or conn.state != conn.STATE_OPEN:
            d.errback(ConnectionClosed(None, "not connected"))
            return d
        ref = next(self._refs)
        self._pending[ref] = (d, conn)
        conn.sendMessage(json.dumps({"op": op, "ref": ref, **fields}).encode("utf-8"))
        return d

    def request(self, op: str, **fields: Any) -> Deferred:
        """Send any op with a fresh ``ref`` once the client is ready; fires
        with the answer frame."""
        d = Deferred()
        if self.state == "ready":
            return self._send(self.protocol, op, fields, d)
        if self.state == "closed":
            d.errback(ConnectionClosed(None, "the client is closed: call start() first"))
            return d
        self._queue.append((op, fields, d))
        if self.state == "idle":
            self.start().addErrback(lambda _: None)
        return d

    def auth(self, user: str | None = None, token: Any = None) -> Deferred:
        """Bind the session to a user (``user=`` or ``token=``); remembered for
        reconnects. Fires with the ``ok`` frame."""
        credentials = {"token": token} if token is not None else {"user": user}

        def remember(ok):
            self._credentials = credentials
            return ok
        d = _fresh(self._credential_fields(credentials).addCallback(
            lambda fields: self.request("auth", **fields)))
        return d.addCallback(remember)

    def join(self, group: str, token: Any = None, data: Any = None) -> Deferred:
        """Join ``group``; it is joined again after each reconnect, with the
        same ``token`` and ``data`` (a later join of the group replaces the
        ones it gives).  ``token``: a subscription token for the group, or a
        callable returning one (or a Deferred or awaitable of one), called
        for each join: a fresh token on each reconnect.  ``data``: any JSON,
        for the backend or the application's ``on_join``.  Fires with the
        ``ok``; a refusal fails with ``ServerError`` (``group`` set)."""
        options = {key: value for key, value in (("token", token), ("data", data))
                   if value is not None}
        d = _fresh(self._join_fields(group, options).addCallback(
            lambda fields: self.request("join", **fields)))
        return d.addCallbacks(self._joined, self._join_failed,
                              callbackArgs=(group, options), errbackArgs=(group,))

    def _joined(self, ok, group: str, options: dict[str, Any]):
        self.groups.add(group)
        if options:
            self._join_options[group] = {**self._join_options.get(group, {}), **options}
        return ok

    @staticmethod
    def _join_failed(failure, group: str):
        if failure.check(ServerError) and failure.value.group is None:
            failure.value.group = group
        return failure

    def leave(self, group: str) -> Deferred:
        """Leave ``group`` (and stop joining it after reconnects)."""
        def left(ok):
            self._forget(group)
            return ok
        return self.request("leave", group=group).addCallback(left)

    def _forget(self, group: str) -> None:
        self.groups.discard(group)
        self._join_options.pop(group, None)

    def presence(self, group: str) -> Deferred:
        """Who is in ``group`` (a member's question, where its namespace has
        presence on); fires with the ``presence`` frame: ``{"op", "ref",
        "group", "sessions", "anonymous", "users": {user: {"sessions",
        "data"?}}, "more"?}``."""
        return self.request("presence", group=group)

    def send(self, to: dict[str, Any], data: Any = None) -> Deferred:
        """Send ``data`` to an address; fires with the message id."""
        return self.request("send", to=to, data=data).addCallback(lambda ok: ok.get("id"))

    def ping(self) -> Deferred:
        """A ``ping`` op; fires with the ``pong`` (every frame the server sent
        before it has arrived by then)."""
        return self.request("ping")

    def _token(self, token: Any) -> Deferred:
        """A Deferred of ``token``: a string as it is; a callable's answer (a
        string, or a Deferred or awaitable of one)."""
        if not callable(token):
            return succeed(token)
        try:
            result = token()
        except Exception:
            return fail()
        if isinstance(result, Deferred):
            return result
        if inspect.isawaitable(result):
            # Under Twisted's asyncio reactor an awaitable is asyncio's (it
            # awaits asyncio futures): run it as a task of that loop.
            loop = getattr(self.reactor, "_asyncioEventloop", None)
            if loop is not None:
                return Deferred.fromFuture(asyncio.ensure_future(result, loop=loop))
            return ensureDeferred(result)
        return succeed(result)

    def _credential_fields(self, credentials: dict[str, Any]) -> Deferred:
        if "token" in credentials:
            return self._token(credentials["token"]).addCallback(lambda t: {"token": t})
        return succeed(dict(credentials))

    def _join_fields(self, group: str, options: dict[str, Any]) -> Deferred:
        """The fields of a ``join`` of ``group`` with ``options`` (token, data)."""
        fields = {"group": group}
        if "data" in options:
            fields["data"] = options["data"]
        if "token" not in options:
            return succeed(fields)

        def with_token(token):
            fields["token"] = token
            return fields
        return self._token(options["token"]).addCallback(with_token)
