"""Answers of the HTTP API: JSON bodies and errors, requests with a body
limit, and ``JsonResource``, the base of every route: handlers return
``(status, body)`` or raise ``ProtocolError``, and ``render`` turns both into a
response in one place."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..protocol import (BAD_REQUEST, FORBIDDEN, NOT_FOUND, RATE_LIMITED, TOO_LARGE,
                        UNAUTHORIZED, ProtocolError, decode_json)

if TYPE_CHECKING:
    from .api import HttpApi

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

    def setHeader(self, name, value):
        # twisted.web names itself in a Server header on every answer: only
        # what http.server_header says goes out (none by default).
        if name.lower() == b"server":
            value = self.channel.site.server_header
            if not value:
                return
        super().setHeader(name, value)

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
        try:
            result = self._call(handler, method, request)
            if not isinstance(result, Deferred):  # answered now: no Deferred to build
                respond(request, *result)
                return NOT_DONE_YET
        except Exception:
            self._failed(Failure(), request)
            return NOT_DONE_YET
        result.addCallback(lambda answer: respond(request, *answer))
        result.addErrback(self._failed, request)
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
                self.api.counters[COUNTED[status]] += 1
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


class Folder(Resource):
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
