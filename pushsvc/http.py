"""The HTTP edge: twisted.web resources for ``/ws``, ``/api/...`` and ``/healthz``.

Every answer is JSON.  Handlers return ``(status, body)`` or raise
``ProtocolError``; ``JsonResource.render`` turns both into a response in one
place.  Routes are listed in docs/http-api.md.
"""

from __future__ import annotations

import hmac
import io
import json
from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .broker.interface import Command
from .commands import make_command, merge
from .protocol import (BAD_REQUEST, FORBIDDEN, NOT_FOUND, TOO_LARGE, UNAUTHORIZED,
                       ProtocolError, decode_json, parse_push)

_log = Logger()

METHOD_NOT_ALLOWED = "method_not_allowed"
STATUS = {BAD_REQUEST: 400, UNAUTHORIZED: 401, FORBIDDEN: 403, NOT_FOUND: 404,
          METHOD_NOT_ALLOWED: 405, TOO_LARGE: 413, "rate_limited": 429}


class LimitedRequest(Request):
    """A request whose body is dropped, not stored, once it passes the limit.

    The body is kept in memory whatever its size: it is at most ``max_body``
    bytes, and Twisted would put a large or chunked one in a temporary file.
    """

    max_body = 65536
    too_large = False
    _received = 0

    def gotLength(self, length):
        # Instead of Request.gotLength, which only picks where the body goes.
        if length is not None and length > self.max_body:
            self.too_large = True
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self.too_large = True
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)


def json_body(request: LimitedRequest, limit: int) -> Any:
    """The request body as JSON, or ProtocolError (larger than ``limit``, or not JSON)."""
    request.content.seek(0)
    body = b"" if request.too_large else request.content.read(limit + 1)
    if request.too_large or len(body) > limit:
        raise ProtocolError(TOO_LARGE, f"the body is larger than {limit} bytes")
    return decode_json(body)


def respond(request, status: int, body: Any) -> None:
    if request.finished or getattr(request, "gone", False):
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.write(json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n")
    request.finish()


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class JsonResource(Resource):
    """A leaf that answers JSON.  Subclasses define ``GET``/``POST`` handlers
    taking ``(request, *path)`` and returning ``(status, body)`` or a Deferred
    of it.  ``path_lengths`` are how many path segments may follow the resource."""

    isLeaf = True
    path_lengths: tuple[int, ...] = (0,)
    authenticate = True

    def __init__(self, api: "HttpApi"):
        super().__init__()
        self.api = api

    def render(self, request):
        request.notifyFinish().addErrback(lambda _: setattr(request, "gone", True))
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, method, None) if method in ("GET", "POST") else None
        d = maybeDeferred(self._call, handler, method, request)
        d.addCallback(lambda result: respond(request, *result))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _call(self, handler: Callable | None, method: str, request) -> Any:
        if self.authenticate:
            self.api.check_key(request)
        try:
            path = [p.decode("utf-8") for p in request.postpath if p]
        except UnicodeDecodeError:
            raise ProtocolError(BAD_REQUEST, "the path is not valid UTF-8")
        if len(path) not in self.path_lengths:
            raise ProtocolError(NOT_FOUND, f"no such route: {request.path.decode('latin-1')}")
        if handler is None:
            raise ProtocolError(METHOD_NOT_ALLOWED, f"{method} is not allowed here")
        return handler(request, *path)

    def _failed(self, failure, request) -> None:
        if failure.check(ProtocolError):
            e = failure.value
            status = STATUS.get(e.code, 400)
            if status == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="pushsvc"')
            elif status == 405:
                allowed = [m for m in ("GET", "POST") if hasattr(self, m)]
                request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            respond(request, status, error_body(e.code, e.message))
        else:
            _log.failure("error serving {method} {path}", failure,
                         method=request.method, path=request.path)
            respond(request, 500, error_body("internal", "internal error"))


class NotFound(JsonResource):
    authenticate = False

    def _call(self, handler, method, request):
        raise ProtocolError(NOT_FOUND, f"no such route: {request.path.decode('latin-1')}")


class Push(JsonResource):
    """``POST /api/push`` {"to": ADDRESS, "data": ANY} -> 202 {"id": ...}"""

    def POST(self, request):
        settings = self.api.settings
        body = json_body(request, settings.max_message_bytes)
        to, data = parse_push(body, settings.max_targets)
        d = self.api.engine.publish(to, data)
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
                messages.append(engine.message(*parse_push(item, settings.max_targets, where)))
            except ProtocolError as e:
                raise ProtocolError(e.code, e.message if e.message.startswith(where)
                                    else f"{where}: {e.message}")
        d = gatherResults([engine.send(m) for m in messages])
        return d.addCallback(lambda ids: (202, {"ids": ids}))


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
    """``GET /healthz``: 200 when this server can accept and deliver."""

    authenticate = False

    def GET(self, request):
        return 200, {"status": "ok", "sessions": len(self.api.engine.registry)}


class HttpApi:
    """Holds what the resources share: the engine, settings and API keys."""

    def __init__(self, engine, settings):
        self.engine = engine
        self.configure(settings)

    def configure(self, settings) -> None:
        """Use ``settings`` from now on (a reload)."""
        self.settings = settings
        self._keys = [k.encode("utf-8") for k in settings.api_keys]

    def check_key(self, request) -> None:
        """401 unless API keys are off or the bearer key is one of them."""
        if not self._keys:
            return
        header = request.getHeader(b"authorization") or b""
        scheme, _, key = header.partition(b" ")
        if scheme.lower() != b"bearer" or not key:
            raise ProtocolError(UNAUTHORIZED, "send 'Authorization: Bearer <api key>'")
        # Compare with every key, so the time taken says nothing about which matched.
        if not sum(hmac.compare_digest(key.strip(), k) for k in self._keys):
            raise ProtocolError(UNAUTHORIZED, "the API key is not valid")

    def query(self, command: Command, **extra: Any):
        return self.engine.run(command).addCallback(lambda result: (200, {**extra, **result}))


class _Folder(Resource):
    """A resource with fixed children; anything else is a JSON 404."""

    def __init__(self, not_found: Resource, children: dict[str, Resource]):
        super().__init__()
        self.not_found = not_found
        for path, child in children.items():
            self.putChild(path.encode("ascii"), child)

    def getChild(self, path, request):
        return self.not_found

    def render(self, request):
        return self.not_found.render(request)


class PushSite(Site):
    """The site of ``/ws``, the HTTP API and ``/healthz``.

    It logs no access line per request: a push API serves thousands a second.
    """

    api: HttpApi

    def log(self, request):
        pass

    def configure(self, settings) -> None:
        """Use ``settings`` from now on (a reload); timeouts apply to new connections."""
        self.api.configure(settings)
        self.requestFactory.max_body = max(settings.max_message_bytes,
                                           settings.max_batch_bytes)
        self.timeOut = settings.handshake_timeout


def build_site(engine, ws_factory, settings, reactor=None) -> PushSite:
    """The twisted.web site serving ``/ws``, the HTTP API and ``/healthz``."""
    api = HttpApi(engine, settings)
    not_found = NotFound(api)
    commands = {name: CommandRoute(api, name)
                for name in ("join", "leave", "destroy", "tag", "untag", "kick")}
    root = _Folder(not_found, {
        "ws": WebSocketResource(ws_factory),
        "healthz": Health(api),
        "api": _Folder(not_found, {
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
    site.requestFactory = type("Request", (LimitedRequest,), {})  # its own max_body
    site.displayTracebacks = False
    site.noisy = False
    site.configure(settings)
    return site
