"""The HTTP edge: twisted.web resources for ``/ws``, ``/api/...`` and ``/healthz``.

Every answer is JSON.  Handlers return ``(status, body)`` or raise
``ProtocolError``; ``JsonResource.render`` turns both into a response in one
place.  Routes are listed in docs/http-api.md.

The limits at this edge (docs/security.md): ``PushChannel`` is one HTTP
connection, with the request size limit (431), a JSON answer to a malformed
request (400), a deadline for the whole request (``handshake_timeout``) and
the connection's place in the per-address count (429 past it);
``PushWebSocketResource`` checks the ``Origin`` of a WebSocket handshake
(403) and hands the place over to the WebSocket connection; ``HttpApi``
checks API keys (401 without a valid key, 403 for a read-only key that
writes).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from typing import Any, Callable

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .broker.interface import Command
from .commands import make_command, merge
from .limits import OriginPolicy, PerAddress, Proxies, address_key
from .protocol import (BAD_REQUEST, FORBIDDEN, NOT_FOUND, RATE_LIMITED, TOO_LARGE,
                       UNAUTHORIZED, ProtocolError, decode_json, parse_push, parse_store)

_log = Logger()

METHOD_NOT_ALLOWED = "method_not_allowed"
STATUS = {BAD_REQUEST: 400, UNAUTHORIZED: 401, FORBIDDEN: 403, NOT_FOUND: 404,
          METHOD_NOT_ALLOWED: 405, TOO_LARGE: 413, RATE_LIMITED: 429}

# The counter (in engine.counters) of each error status the edge answers.
COUNTED = {400: "http_invalid", 401: "http_bad_key", 403: "http_forbidden",
           413: "http_too_large", 431: "http_too_large"}

CHALLENGE = b'Bearer realm="pushsvc"'


class AuthError(ProtocolError):
    """A request without the right API key: 401 or 403, with the
    ``WWW-Authenticate`` challenge RFC 6750 describes."""

    def __init__(self, code: str, message: str, error: str | None = None):
        super().__init__(code, message)
        self.challenge = CHALLENGE + (f', error="{error}"'.encode("ascii") if error else b"")


class LimitedRequest(Request):
    """A request whose body is dropped, not stored, once it passes the limit.

    The body is kept in memory whatever its size: it is at most ``max_body``
    bytes, and Twisted would put a large or chunked one in a temporary file.
    """

    max_body = 65536
    too_large = False
    _received = 0

    def process(self):
        channel = self.channel
        if getattr(channel, "refused", False):
            # Its address holds max_connections_per_ip connections already.
            channel.persistent = False
            self.setHeader(b"connection", b"close")
            limit = channel.site.api.per_ip.limit
            respond(self, 429, error_body(
                RATE_LIMITED, f"too many connections from your address: at most "
                              f"{limit} at once"))
            return
        super().process()

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
    data = json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(data))  # no chunked framing
    request.write(data)
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
            self.api.check_key(request, write=method not in ("GET", "HEAD"))
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
            if status in COUNTED:
                self.api.engine.counters[COUNTED[status]] += 1
            if isinstance(e, AuthError):
                request.setHeader(b"www-authenticate", e.challenge)
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
        d = self.api.engine.publish(to, data, store=parse_store(body))
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
                messages.append((engine.message(to, data), parse_store(item, where)))
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
    nodes (``broker.health()``; a broker without it is always healthy)."""

    authenticate = False

    def GET(self, request):
        sessions = len(self.api.engine.registry)
        problem = getattr(self.api.engine.broker, "health", lambda: None)()
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
        from .metrics import render
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


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class HttpApi:
    """Holds what the resources and the site share: the engine, settings,
    API keys, and the limits of the edge (origins, proxies, connections per
    address)."""

    def __init__(self, engine, settings):
        self.engine = engine
        # Counts survive a reload; only the limit changes.
        self.per_ip = PerAddress(settings.max_connections_per_ip)
        # Connections over the limit that wait for their 429 (as many again).
        self.refusing = PerAddress(settings.max_connections_per_ip)
        self.configure(settings)

    def gather_metrics(self):
        """A Deferred firing with the machine's metric values (pushsvc/metrics.py):
        this one process's; a pool worker asks the master instead (worker.py)."""
        from .metrics import local_values
        return maybeDeferred(local_values, self.engine)

    def configure(self, settings) -> None:
        """Use ``settings`` from now on (a reload)."""
        self.settings = settings
        # (SHA-256 of the key, may write): digests have one length, so
        # comparing them takes the same time whatever the key's length.
        self._keys = ([(_digest(k.encode("utf-8")), True) for k in settings.api_keys]
                      + [(_digest(k.encode("utf-8")), False) for k in settings.api_read_keys])
        self.origins = OriginPolicy(settings.allowed_origins)
        self.proxies = Proxies(settings.trusted_proxies)
        self.per_ip.limit = self.refusing.limit = settings.max_connections_per_ip

    def check_key(self, request, write: bool = True) -> None:
        """Nothing when API keys are off or the request's bearer key may do
        this; else AuthError: 401 (no key, or not a valid one), 403 (a
        read-only key and ``write``)."""
        if not self._keys:
            return
        header = request.getHeader(b"authorization") or b""
        scheme, _, key = header.partition(b" ")
        key = key.strip()
        if scheme.lower() != b"bearer" or not key:
            raise AuthError(UNAUTHORIZED, "send 'Authorization: Bearer <api key>'")
        # Compare with every key, so the time taken says nothing about which matched.
        digest = _digest(key)
        valid = may_write = False
        for known, writes in self._keys:
            match = hmac.compare_digest(digest, known)
            valid |= match
            may_write |= match and writes
        if not valid:
            raise AuthError(UNAUTHORIZED, "the API key is not valid", "invalid_token")
        if write and not may_write:
            raise AuthError(FORBIDDEN, "this API key may only read (GET)",
                            "insufficient_scope")

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


class PushWebSocketResource(WebSocketResource):
    """``/ws``: checks the handshake's ``Origin`` (403), counts a client that
    came through a trusted proxy by the address the proxy forwarded (429),
    then upgrades, handing the connection's per-address slot to the
    WebSocket protocol (the HTTP channel is done with once it upgrades)."""

    def __init__(self, factory, api: HttpApi):
        super().__init__(factory)
        self.api = api

    def render(self, request):
        api = self.api
        origin = request.getHeader(b"origin")
        if origin is not None:
            origin = origin.decode("latin-1")
            if not api.origins.allows(origin):
                api.engine.counters["refused_origin"] += 1
                return _refuse(request, 403, FORBIDDEN,
                               f"origin {origin[:200]!r} is not allowed")
        channel = request.channel
        proxied = getattr(channel, "proxied", False)
        if proxied:
            client = api.proxies.client(channel.transport.getPeer().host,
                                        request.requestHeaders.getRawHeaders(b"x-forwarded-for"))
            slot = api.per_ip.acquire(address_key(client))
            if slot is None:
                api.engine.counters["refused_ip"] += 1
                channel.persistent = False
                request.setHeader(b"connection", b"close")
                return _refuse(request, 429, RATE_LIMITED,
                               f"too many connections from your address: at most "
                               f"{api.per_ip.limit} at once")
        else:
            slot, channel.ip_slot = getattr(channel, "ip_slot", None), None
        factory = self._factory
        factory.next_slot = slot
        try:
            return super().render(request)
        finally:
            if factory.next_slot is not None:  # no WebSocket protocol took it
                factory.next_slot = None
                if proxied:
                    slot.release()
                else:
                    channel.ip_slot = slot


def _refuse(request, status: int, code: str, message: str):
    respond(request, status, error_body(code, message))
    return NOT_DONE_YET


class PushChannel(HTTPChannel):
    """One HTTP connection (until it upgrades to a WebSocket), with limits:

    - the request line and headers at most ``max_header_bytes`` (and Twisted's
      ``maxHeaders``, 500 headers), else a JSON 431; any other malformed
      request gets a JSON 400 (Twisted answers a bare 400, or nothing);
    - a whole request within ``handshake_timeout`` of the connection (or the
      previous answer), however slowly it trickles in, else the connection
      is closed (``slow_handshakes``);
    - its place in the per-address count (``ip_slot``); a connection over the
      limit (``refused``) gets 429 to its request, one over twice the limit
      (``abort_now``) is cut off at once.

    After an error answer the connection reads and drops what the client
    still sends until the client closes, for at most ``close_timeout``:
    closing at once with unread data would reset the connection, and the
    client might lose the answer.
    """

    ip_slot = None
    refused = False
    abort_now = False
    proxied = False       # from a trusted proxy: counted per client at /ws
    _deadline = None      # the call that ends a request taking too long
    _partial = False      # bytes of a request have arrived, not all of it
    _served = False       # a whole request has arrived
    _closing = False      # an error answer was written; input is dropped
    _linger = None        # the call that cuts off the client after it

    def connectionMade(self):
        super().connectionMade()
        if self.abort_now:
            self.transport.abortConnection()
            return
        self._arm()

    def dataReceived(self, data):
        if self._closing:
            return
        if self._deadline is not None:
            self._partial = True
        super().dataReceived(data)

    def lineReceived(self, line):
        if not self._closing:
            super().lineReceived(line)

    def rawDataReceived(self, data):
        if not self._closing:
            super().rawDataReceived(data)

    def allContentReceived(self):
        self._disarm()
        self._partial, self._served = False, True
        super().allContentReceived()

    def requestDone(self, request):
        if self.persistent and not self._closing:
            self._arm()  # the next request's deadline (a pipelined one may be here)
        super().requestDone(request)

    def timeoutConnection(self):
        self._disarm()
        if self._partial or not self._served:
            self.site.api.engine.counters["slow_handshakes"] += 1
        super().timeoutConnection()

    def connectionLost(self, reason):
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self.ip_slot is not None:
            self.ip_slot.release()
        super().connectionLost(reason)

    def _arm(self):
        self._disarm()
        self._deadline = self.callLater(self.site.api.settings.handshake_timeout,
                                        self._expired)

    def _disarm(self):
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expired(self):
        self._deadline = None
        self.setTimeout(None)
        self.timeoutConnection()

    # -- malformed requests ---------------------------------------------------

    def lineLengthExceeded(self, line):
        # One line (request line or header) longer than max_header_bytes.
        self._too_large()

    def _respondToBadRequestAndDisconnect(self):
        # Twisted's one way out for every malformed request.
        if (self._receivedHeaderSize > self.totalHeadersSize
                or self._receivedHeaderCount > self.maxHeaders):
            self._too_large()
        else:
            self.answer_and_close(400, BAD_REQUEST, "not a valid HTTP request")

    def _too_large(self):
        self.answer_and_close(431, TOO_LARGE,
                              f"the request line and headers are larger than "
                              f"{self.totalHeadersSize} bytes, or more than "
                              f"{self.maxHeaders} headers")

    def answer_and_close(self, status: int, code: str, message: str) -> None:
        """Write a JSON error answer, then close once the client has it."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._disarm()
        self.setTimeout(None)
        self.site.api.engine.counters[COUNTED.get(status, "http_invalid")] += 1
        body = json.dumps(error_body(code, message), separators=(",", ":")).encode() + b"\n"
        phrase = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                             b"cache-control: no-store\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s"
                             % (status, phrase, len(body), body))
        self._buffer = b""  # lines LineReceiver holds
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.loseConnection()
            return
        self._networkProducer.unregisterProducer()
        half_close()
        self.transport.resumeProducing()
        self._linger = self.callLater(self.site.api.settings.close_timeout,
                                      self.transport.abortConnection)


class PushSite(Site):
    """The site of ``/ws``, the HTTP API and ``/healthz``.

    It logs no access line per request: a push API serves thousands a second.
    """

    api: HttpApi
    protocol = PushChannel  # HTTP/1.1 only (no HTTP/2: WebSockets need 1.1)

    def log(self, request):
        pass

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        settings = self.api.settings
        channel.totalHeadersSize = channel.MAX_LENGTH = settings.max_header_bytes
        host = getattr(addr, "host", None)
        if host is None:  # not TCP (a unix socket): nothing to count
            return channel
        api = self.api
        if api.proxies.trusts(host):
            channel.proxied = True
            return channel
        key = address_key(host)
        channel.ip_slot = api.per_ip.acquire(key)
        if channel.ip_slot is None:
            api.engine.counters["refused_ip"] += 1
            channel.ip_slot = api.refusing.acquire(key)
            if channel.ip_slot is None:
                channel.abort_now = True
            else:
                channel.refused = True
        return channel

    def configure(self, settings) -> None:
        """Use ``settings`` from now on (a reload); timeouts and the header
        limit apply to new connections."""
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
    from .static import routes as static_routes  # "/", "/pushsvc.js": docs/clients.md
    root = _Folder(not_found, {
        "ws": PushWebSocketResource(ws_factory, api),
        "healthz": Health(api),
        "metrics": Metrics(api),  # Prometheus: a read key will do (docs/http-api.md)
        **static_routes(),  # no API key: the demo page and the browser client
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
