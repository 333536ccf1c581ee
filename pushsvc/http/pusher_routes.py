"""The Pusher Channels HTTP API (docs/pusher.md): what the official Pusher
server SDKs call, served on pushsvc's port.

    POST /apps/{id}/events                      trigger one event on 1-100 channels
    POST /apps/{id}/batch_events                1-10 events
    GET  /apps/{id}/channels                    occupied channels
    GET  /apps/{id}/channels/{channel}          one channel
    GET  /apps/{id}/channels/{channel}/users    a presence channel's users
    POST /apps/{id}/users/{user}/terminate_connections
    POST /users/{user}/terminate_connections    (where the Python SDK 3.3 sends it)

Every request is authenticated by its Pusher signature (``auth_key``,
``auth_signature``... of ``[[pusher.apps]]``, ``signatures.check_request``),
never by pushsvc's API keys.  The pure layer (``pushsvc.pusher``) parses and
shapes; this module does the I/O: a trigger publishes through the engine, one
message per channel to the group ``pusher.<id>:<channel>``; the channel
figures come from the cluster-wide ``groups`` and ``group`` commands, so they
count every worker and node.  Answers are JSON; errors are Pusher's: the
status and a plain-text explanation.  A trigger over the app's
``max_backend_events_per_second`` (counted in this process,
``pusher.rates.AppRates``) is answered 429 with ``Retry-After``.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import ensureDeferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..commands import make_command
from ..protocol import MAX_NAME, TOO_LARGE, ProtocolError, name
from ..pusher.apps import Apps, PusherApp, check_apps
from ..pusher.dialect import event_message
from ..pusher.events import (ChannelStats, Route, batch_answer, body_limit, channel_answer,
                             channel_stats, channels_answer, parse_batch, parse_info,
                             parse_route, parse_trigger, trigger_answer, user_ids,
                             users_answer)
from ..pusher.names import PRESENCE, PusherError, channel_kind
from ..pusher.rates import AppRates
from ..pusher.signatures import check_request
from .answers import COUNTED, respond

_log = Logger()

KICK_REASON = "connections terminated by Pusher app {}"
MAX_QUERY_FIELDS = 64


def _text_error(request, status: int, message: str) -> None:
    """Pusher's error answer: the status and a plain-text explanation."""
    if request.finished or getattr(request, "gone", False):
        return
    data = message.encode("utf-8", "replace") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


class PusherApi(Resource):
    """Serves every Pusher route below where it is mounted (``/apps`` and
    ``/users``); the route is read from the whole path, as signed."""

    isLeaf = True

    def __init__(self, api):
        super().__init__()
        self.api = api
        self._apps: tuple[Any, Apps] | None = None
        self.rates = AppRates()  # max_backend_events_per_second, in this process

    # -- the configured apps (re-read after a reload) --------------------------

    def apps(self) -> Apps:
        settings = self.api.settings
        tables = settings.pusher_apps
        if self._apps is None or self._apps[0] is not tables:
            separator = settings.namespace_separator
            self._apps = (tables, Apps(check_apps(tables, separator), separator))
            self.rates.keep(app.id for app in self._apps[1])
        return self._apps[1]

    # -- one request ---------------------------------------------------------------

    def render(self, request):
        request.notifyFinish().addErrback(lambda _: setattr(request, "gone", True))
        d = ensureDeferred(self._serve(request))
        d.addCallback(lambda body: respond(request, 200, body))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _serve(self, request) -> dict[str, Any]:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "surrogateescape")
        route = parse_route(method, path)
        if request.too_large:
            raise PusherError(413, f"the body is larger than {request.max_body} bytes")
        request.content.seek(0)
        body = request.content.read()
        query_text = request.uri.partition(b"?")[2].decode("latin-1")
        try:
            query = parse_qs(query_text, keep_blank_values=True, errors="replace",
                             max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            raise PusherError(400, f"more than {MAX_QUERY_FIELDS} query parameters")
        apps = self.apps()
        app = check_request(method, path, query, body, apps, time.time())
        limit = body_limit(app, route.name)
        if len(body) > limit:
            raise PusherError(413, f"the body is {len(body)} bytes; the limit for "
                                   f"{route.name} is {limit}")
        handler = getattr(self, "do_" + route.name)
        return await handler(route, app, apps, body, query)

    def _failed(self, failure, request) -> None:
        if failure.check(PusherError) and isinstance(failure.value.code, int):
            status, message = failure.value.code, failure.value.message
        elif failure.check(ProtocolError):
            e = failure.value
            status, message = (413 if e.code == TOO_LARGE else 400), e.message
        else:
            _log.failure("error serving {method} {path}", failure,
                         method=request.method, path=request.path)
            status, message = 500, "internal error"
        if status in COUNTED:
            self.api.counters[COUNTED[status]] += 1
        if status == 405:
            request.setHeader(b"allow", self._allowed(request))
        retry_after = getattr(failure.value, "retry_after", None)
        if retry_after is not None:
            request.setHeader(b"retry-after", b"%d" % retry_after)
        _text_error(request, status, message)

    @staticmethod
    def _allowed(request) -> bytes:
        """The one method the path of a 405 takes."""
        try:
            parse_route("GET", request.path.decode("utf-8", "surrogateescape"))
        except PusherError:
            return b"POST"
        return b"GET"

    # -- what the engine knows ---------------------------------------------------------

    async def _stats(self, apps: Apps, app: PusherApp, channels) -> dict[str, ChannelStats]:
        """Each channel's subscriptions and users, across workers and nodes."""
        channels = list(dict.fromkeys(channels))
        members = await gatherResults([self._members(apps.group_of(app, channel))
                                       for channel in channels])
        return {channel: channel_stats(found) for channel, found in zip(channels, members)}

    def _members(self, group: str):
        """The members of ``group`` (a Deferred); none for a name longer than
        pushsvc's groups may be (nobody can have joined it)."""
        if len(group) > MAX_NAME:
            return succeed([])
        command = make_command("group", {"group": group})
        return self.api.engine.run(command).addCallback(lambda r: r.get("members", []))

    # -- the routes ------------------------------------------------------------------------

    async def _publish(self, apps: Apps, app: PusherApp, triggers) -> None:
        """Publish each trigger to the group of each of its channels, with
        its event name and the socket id it is not for; every message is
        built (and its size checked), and counted against the app's rate
        (429), before any is sent."""
        engine = self.api.engine
        limit = engine.settings.max_message_bytes
        messages = [(event_message(engine.ids.message_id(), apps.group_of(app, channel),
                                   t.name, t.data, limit, t.socket_id), False)
                    for t in triggers for channel in t.channels]
        self.rates.check(app, len(messages), engine.clock.seconds())
        await engine.send_all(messages)

    async def do_events(self, route: Route, app: PusherApp, apps: Apps, body: bytes,
                        query) -> dict[str, Any]:
        trigger = parse_trigger(body, app)
        await self._publish(apps, app, [trigger])
        stats = await self._stats(apps, app, trigger.channels) if trigger.info else {}
        return trigger_answer(trigger, stats)

    async def do_batch_events(self, route: Route, app: PusherApp, apps: Apps, body: bytes,
                              query) -> dict[str, Any]:
        triggers = parse_batch(body, app)
        await self._publish(apps, app, triggers)
        asked = [t.channels[0] for t in triggers if t.info]
        stats = await self._stats(apps, app, asked) if asked else {}
        return batch_answer(triggers, stats)

    async def do_channels(self, route: Route, app: PusherApp, apps: Apps, body: bytes,
                          query) -> dict[str, Any]:
        channels_answer(query, {})  # the query's mistakes first (400)
        result = await self.api.engine.run(make_command("groups", {}))
        stats: dict[str, ChannelStats] = {}
        for group, size in result.get("groups", {}).items():
            channel = apps.channel_of(app, group)
            if channel is not None and size > 0:
                stats[channel] = ChannelStats(subscription_count=size)
        if "user_count" in parse_info((query.get("info") or [None])[0]):
            prefix = (query.get("filter_by_prefix") or [""])[0]
            wanted = [c for c in stats if c.startswith(prefix) and channel_kind(c) == PRESENCE]
            stats.update(await self._stats(apps, app, wanted))
        return channels_answer(query, stats)

    async def do_channel(self, route: Route, app: PusherApp, apps: Apps, body: bytes,
                         query) -> dict[str, Any]:
        channel_answer(route.channel, query, None, app)  # the name and query first (400)
        stats = await self._stats(apps, app, [route.channel])
        return channel_answer(route.channel, query, stats[route.channel], app)

    async def do_users(self, route: Route, app: PusherApp, apps: Apps, body: bytes,
                       query) -> dict[str, Any]:
        users_answer(route.channel, [], app)  # a presence channel's name, or 400
        members = await self._members(apps.group_of(app, route.channel))
        return users_answer(route.channel, user_ids(members), app)

    async def do_terminate_connections(self, route: Route, app: PusherApp, apps: Apps,
                                       body: bytes, query) -> dict[str, Any]:
        # Pusher's user ids are pushsvc's user names (shared by every app):
        # every pushsvc session of that user is closed (docs/pusher.md).
        user = name(route.user, "user")
        await self.api.engine.run(make_command(
            "kick", {"user": user, "reason": KICK_REASON.format(app.id)}))
        return {}
