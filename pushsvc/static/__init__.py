"""The files a browser gets from pushsvc: the demo page at ``/`` and the
browser client at ``/pushsvc.js`` (docs/clients.md).

They never need an API key. Each is read once, when the site is built, and
served from memory with an ``ETag`` (a request whose ``If-None-Match`` names
it gets ``304``), ``Cache-Control`` (the scripts may be cached for 10 minutes;
the page is checked again each time) and headers that keep other sites from
framing the page or browsers from guessing types.
"""

from __future__ import annotations

import hashlib
import json
import os

from twisted.web.resource import Resource

HERE = os.path.dirname(os.path.abspath(__file__))

JAVASCRIPT = b"application/javascript; charset=utf-8"
HTML = b"text/html; charset=utf-8"

# The demo page loads its own scripts and talks to its own /ws; nothing else.
PAGE_POLICY = (b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               b"connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
               b"form-action 'none'; frame-ancestors 'none'")

# route -> (file, content type, Cache-Control)
FILES = {
    "": ("index.html", HTML, b"no-cache"),
    "pushsvc.js": ("pushsvc.js", JAVASCRIPT, b"public, max-age=600"),
    "demo.js": ("demo.js", JAVASCRIPT, b"public, max-age=600"),
}


class StaticFile(Resource):
    """One file, from memory; ``GET`` and ``HEAD`` only, no path below it."""

    isLeaf = True

    def __init__(self, path: str, content_type: bytes, cache_control: bytes):
        super().__init__()
        with open(path, "rb") as f:
            self.body = f.read()
        self.content_type = content_type
        self.cache_control = cache_control
        self.etag = b'"' + hashlib.sha256(self.body).hexdigest()[:32].encode("ascii") + b'"'

    def render(self, request):
        if any(request.postpath):
            return _error(request, 404, "not_found",
                          f"no such route: {request.path.decode('latin-1')}")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET")
            return _error(request, 405, "method_not_allowed",
                          f"{request.method.decode('latin-1')} is not allowed here")
        request.setHeader(b"etag", self.etag)
        request.setHeader(b"cache-control", self.cache_control)
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.content_type == HTML:
            request.setHeader(b"content-security-policy", PAGE_POLICY)
            request.setHeader(b"x-frame-options", b"DENY")
            request.setHeader(b"referrer-policy", b"no-referrer")
        wanted = request.getHeader(b"if-none-match") or b""
        if wanted.strip() == b"*" or self.etag in [t.strip() for t in wanted.split(b",")]:
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", self.content_type)
        if request.method == b"HEAD":  # the length, without the body twisted.web would eat
            request.setHeader(b"content-length", b"%d" % len(self.body))
            return b""
        return self.body


def _error(request, status: int, code: str, message: str) -> bytes:
    """A JSON error, as the rest of the HTTP edge answers them."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    body = {"error": {"code": code, "message": message}}
    return json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"


def routes() -> dict[str, Resource]:
    """The static routes, for the root of the site: ``/``, ``/pushsvc.js``,
    ``/demo.js``."""
    return {route: StaticFile(os.path.join(HERE, name), content_type, cache)
            for route, (name, content_type, cache) in FILES.items()}
