"""The routes of the HTTP API (docs/http-api.md) and the site that serves
them with ``/ws``, ``/healthz``, ``/metrics`` and the static files."""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred
from twisted.web.server import NOT_DONE_YET

from ..commands import ACTIONS, make_command, merge
from ..protocol import (BAD_REQUEST, TOO_LARGE, ProtocolError, parse_event, parse_push,
                        parse_store)
from .answers import Folder, JsonResource, LimitedRequest, NotFound, json_body
from .api import HttpApi
from .channel import PushSite
from .upgrade import PushWebSocketResource


class Push(JsonResource):
    """``POST /api/push`` {"to": ADDRESS, "data": ANY} -> 202 {"id": ...}"""

    def POST(self, request):
        settings = self.api.settings
        body = json_body(request, settings.max_message_bytes)
        to, data = parse_push(body, settings.max_targets)
        d = self.api.engine.publish(to, data, store=parse_store(body), event=parse_event(body))
        return d.addCallback(lambda msg_id: (202, {"id": msg_id}))


class Batch(JsonResource):
    """``POST /api/batch`` {"messages": [{"to": ..., "data": ...}, ...]}
    -> 202 {"ids": [...]}.  Every message is checked before any is sent."""

    def POST(self, request):
        settings, engine = self.api.settings, self.api.engine
        body = json_body(request, settings.max_batch_bytes)
        items = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise ProtocolError(BAD_REQUEST, "the body must be {\"messages\": [...]} "
                                             "with at least one message")
        if len(items) > settings.max_batch_messages:
            raise ProtocolError(TOO_LARGE, f"{len(items)} messages; the limit is "
                                           f"{settings.max_batch_messages}")
        messages = []
        for i, item in enumerate(items):
            where = f"messages[{i}]"
            try:
                to, data = parse_push(item, settings.max_targets, where)
                messages.append((engine.message(to, data, event=parse_event(item, where)),
                                 parse_store(item, where)))
            except ProtocolError as e:
                raise ProtocolError(e.code, e.message if e.message.startswith(where)
                                    else f"{where}: {e.message}")
        return engine.send_all(messages).addCallback(lambda ids: (202, {"ids": ids}))


class CommandRoute(JsonResource):
    """``POST /api/<command>`` with the command's arguments as the body."""

    def __init__(self, api: "HttpApi", command: str):
        super().__init__(api)
        self.command = command

    def POST(self, request):
        command = make_command(self.command,
                               json_body(request, self.api.settings.max_message_bytes))
        return self.api.engine.run(command).addCallback(lambda result: (200, result))


class Groups(JsonResource):
    """``GET /api/groups`` (every group and its size) and ``GET /api/groups/G``."""

    path_lengths = (0, 1)

    def GET(self, request, group=None):
        if group is None:
            return self.api.query(make_command("groups", {}))
        return self.api.query(make_command("group", {"group": group}), group=group)


class User(JsonResource):
    """``GET /api/users/U``: the user's sessions with their groups and tags."""

    path_lengths = (1,)

    def GET(self, request, user):
        def shape(result):
            status, body = result
            return status, {"user": user, "online": bool(body["sessions"]), **body}
        return self.api.query(make_command("user", {"user": user})).addCallback(shape)


class Stats(JsonResource):
    """``GET /api/stats``: totals, and each worker's own figures under ``workers``."""

    def GET(self, request):
        def shape(results):
            totals = merge([{k: v for k, v in r.items() if k != "worker"} for r in results])
            return 200, {**totals, "workers": sorted(results, key=lambda r: r["worker"])}
        return self.api.engine.run_each(make_command("stats", {})).addCallback(shape)


class Health(JsonResource):
    """``GET /healthz``: 200 when this server can accept and deliver; 503
    ``degraded`` with the reason while its broker cannot reach the other
    nodes (``broker.health()``)."""

    authenticate = False

    def GET(self, request):
        sessions = len(self.api.engine.registry)
        problem = self.api.engine.broker.health()
        if problem:
            return 503, {"status": "degraded", "reason": problem, "sessions": sessions}
        return 200, {"status": "ok", "sessions": sessions}


class Metrics(JsonResource):
    """``GET /metrics``: the Prometheus exposition for the whole machine
    (pushsvc/metrics.py), with the same API key rule as the other reading
    routes: any valid key, a read key is enough; none when no keys are set.
    Errors are JSON like the API's."""

    def render(self, request):
        request.notifyFinish().addErrback(lambda _: setattr(request, "gone", True))
        method = request.method.decode("ascii", "replace")
        handler = self.GET if method == "GET" else None
        d = maybeDeferred(self._call, handler, method, request)
        d.addCallback(self._write, request)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def GET(self, request):
        from ..metrics import render
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        return self.api.gather_metrics().addCallback(render, accept)

    @staticmethod
    def _write(result, request) -> None:
        body, content_type = result
        if request.finished or getattr(request, "gone", False):
            return
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


def build_site(engine, ws_factory, settings, reactor=None, gather_metrics=None) -> PushSite:
    """The twisted.web site serving ``/ws``, the HTTP API and ``/healthz``;
    ``gather_metrics()`` gives the machine's metric values (default: this
    process's, ``HttpApi.gather_metrics``)."""
    api = HttpApi(engine, settings, gather_metrics)
    not_found = NotFound(api)
    commands = {name: CommandRoute(api, name) for name in ACTIONS}
    from ..static import routes as static_routes  # "/", "/pushsvc.js": docs/clients.md
    from .pusher_routes import PusherApi  # Pusher's HTTP API, by signature: docs/pusher.md
    from ..pusher.websocket import PusherEdge  # /app/{key}: Pusher clients (docs/pusher.md)
    pusher_api = PusherApi(api)
    pusher_edge = PusherEdge(engine, ws_factory, pusher_api.apps)
    root = Folder(not_found, {
        "ws": PushWebSocketResource(ws_factory, api),
        "app": PushWebSocketResource(pusher_edge, api),  # the same checks as /ws
        "healthz": Health(api),
        "metrics": Metrics(api),  # Prometheus: a read key will do (docs/http-api.md)
        **static_routes(),  # no API key: the demo page and the browser client
        "apps": pusher_api,   # /apps/{id}/...: Pusher signatures, not API keys
        "users": pusher_api,  # /users/{user}/terminate_connections (Pusher's Python SDK)
        "api": Folder(not_found, {
            "push": Push(api),
            "batch": Batch(api),
            "groups": Groups(api),
            "users": User(api),
            "stats": Stats(api),
            **commands,
        }),
    })

    # Bodies are JSON whatever their Content-Type: never parse them as a form.
    site = PushSite(root, reactor=reactor, parsePOSTFormSubmission=False)
    site.api = api
    site.pusher = pusher_edge  # its webhooks: the one process's occupancy (server.py)
    site.requestFactory = type("Request", (LimitedRequest,), {})  # its own max_body
    site.displayTracebacks = False
    site.noisy = False
    site.configure(settings)
    return site
