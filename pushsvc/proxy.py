"""The backend proxy: ask an HTTP backend whether a client may join or send.

For a namespace whose rule is ``proxy`` the engine calls ``BackendProxy.ask``
with a JSON document describing the request; this module POSTs it to the
configured URL and turns the answer into a ``Verdict``.

The request: ``POST <url>`` with ``Content-Type: application/json``,
``User-Agent: pushsvc``, ``Authorization: Bearer <secret>`` when a secret is
configured, and the document as compact JSON (non-ASCII characters escaped).
The document's fields are chosen by the engine.

The answer: an HTTP 2xx status and a JSON object, at most ``MAX_ANSWER_BYTES``:

- ``{"allow": true, "data": ANY}`` -- allowed; ``data`` is optional and is
  handed back to the engine as ``Verdict.data``;
- ``{"allow": false, "reason": "text"}`` -- denied; ``reason`` is optional
  (``null`` counts as absent), is shown to the client and cut at 200
  characters.

Anything else -- another status (redirects are not followed), a malformed or
oversized body, no answer within ``timeout`` seconds, a connection failure,
or more than ``max_in_flight`` questions under way -- is an error, settled by
``on_error``: ``"deny"`` (the default) or ``"allow"``.

Connections are persistent HTTP/1.1 (an ``HTTPConnectionPool``).  When a
kept-alive connection closes before any answer arrives (the backend dropping
an idle connection just as a request goes out), the question is asked once
more on a new connection, so a backend must treat a document as a question
that may occasionally arrive twice.  Times are measured with
``reactor.seconds()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool,
                                PotentialDataLoss, RequestNotSent, RequestTransmissionFailed,
                                ResponseDone, ResponseFailed, ResponseNeverReceived)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from .reloadable import IReloadable

_log = Logger()

MAX_ANSWER_BYTES = 65536
MAX_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class Verdict:
    """The backend's decision on one question."""

    allow: bool
    reason: str | None = None   # shown to the client on deny
    data: Any = None            # JSON value the backend attached (allow only)
    result: str = "allow"       # metric label: "allow", "deny" or "error"


class BackendError(Exception):
    """The backend's answer cannot be used; str() says why in a few words."""


def parse_verdict(status: int, body: bytes) -> Verdict:
    """Turn an HTTP status and body into a Verdict, or raise BackendError."""
    if not 200 <= status < 300:
        raise BackendError(f"the backend answered HTTP {status}")
    if len(body) > MAX_ANSWER_BYTES:
        raise BackendError(f"the backend's answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BackendError("the backend's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise BackendError("the backend's answer is not a JSON object")
    allow = answer.get("allow")
    if not isinstance(allow, bool):
        raise BackendError('the backend\'s answer has no boolean "allow"')
    reason = answer.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BackendError('the backend\'s "reason" is not a string')
    if allow:
        return Verdict(True, data=answer.get("data"), result="allow")
    return Verdict(False, reason=None if reason is None else reason[:MAX_REASON_CHARS],
                   result="deny")


class BackendProxy:
    """Asks one backend URL; ``ask`` fires with a Verdict and never fails.

    ``observe(seconds)`` gets the round-trip time of every exchange that got a
    complete answer (whatever its status); ``count(result)`` gets the Verdict's
    ``result`` once per ``ask``.  ``tls`` is the IPolicyForHTTPS for https://
    URLs (default: ``BrowserLikePolicyForHTTPS()``, the platform's trust).
    """

    def __init__(self, reactor, url: str, *, timeout: float = 2.0, max_in_flight: int = 100,
                 on_error: str = "deny", secret: str = "",
                 observe: Callable[[float], None] | None = None,
                 count: Callable[[str], None] | None = None, tls=None):
        if on_error not in ("deny", "allow"):
            raise ValueError(f"on_error must be 'deny' or 'allow', not {on_error!r}")
        try:
            self._url = url.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"the backend URL must be ASCII (IDNA host names), not {url!r}")
        if URI.fromBytes(self._url).scheme not in (b"http", b"https"):
            raise ValueError(f"the backend URL must be http:// or https://, not {url!r}")
        self.url = url
        self._reactor = reactor
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._on_error = on_error
        self._secret = secret
        self._observe = observe
        self._count = count
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 10
        self._agent = Agent(reactor, tls or BrowserLikePolicyForHTTPS(), pool=self._pool)
        self.in_flight = 0
        self._closed = False
        self._logged_at: float | None = None
        self._unlogged = 0

    def ask(self, document: dict) -> Deferred:
        """POST ``document`` to the backend; fire with its Verdict."""
        if self.in_flight >= self._max_in_flight:
            error = BackendError("too many backend requests in flight")
            return succeed(self._settle(Failure(error)))
        self.in_flight += 1
        d = Deferred.fromCoroutine(self._exchange(document))
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=self._timed_out)
        d.addBoth(self._done)
        return d

    def close(self) -> Deferred:
        """Close the cached persistent connections; those of the requests
        under way (and of any later ones) close as soon as their answer is in."""
        self._closed = True
        return self._pool.closeCachedConnections()

    async def _exchange(self, document: dict) -> Verdict:
        body = json.dumps(document, separators=(",", ":")).encode("ascii")
        started = self._reactor.seconds()
        try:
            response = await self._post(body)
        except (ResponseNeverReceived, RequestNotSent, RequestTransmissionFailed) as e:
            if any(f.check(CancelledError) for f in getattr(e, "reasons", ())):
                raise
            response = await self._post(body)  # see the module docstring
        reader = CappedBody(MAX_ANSWER_BYTES, response.length)
        response.deliverBody(reader)
        try:
            answer = await reader.done
        except BackendError:
            if 200 <= response.code < 300:
                raise
            answer = b""  # an oversized error page: report the status instead
        if self._observe is not None:
            self._observe(self._reactor.seconds() - started)
        return parse_verdict(response.code, answer)

    def _post(self, body: bytes) -> Deferred:
        headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"pushsvc"]})
        if self._secret:
            headers.addRawHeader(b"Authorization", b"Bearer " + self._secret.encode("utf-8"))
        return self._agent.request(b"POST", self._url, headers, BytesProducer(body))

    def _timed_out(self, result, timeout: float) -> Failure:
        return Failure(BackendError(f"the backend did not answer within {timeout:g} seconds"))

    def _done(self, result: Verdict | Failure) -> Verdict:
        self.in_flight -= 1
        if self._closed:  # once the connection is back in the pool
            self._reactor.callLater(0, self._pool.closeCachedConnections)
        return self._settle(result)

    def _settle(self, result: Verdict | Failure) -> Verdict:
        if isinstance(result, Failure):
            why = describe_failure(result.value)
            if why is None:  # a bug: log its traceback
                why = f"unexpected error ({result.type.__name__})"
                self._warn(why, result)
            else:
                self._warn(why)
            if self._on_error == "deny":
                result = Verdict(False, reason=f"the backend could not decide: {why}",
                                 result="error")
            else:
                result = Verdict(True, result="error")
        if self._count is not None:
            self._count(result.result)
        return result

    def _warn(self, why: str, failure: Failure | None = None) -> None:
        """Log an error, at most one line a second; count the ones left out."""
        now = self._reactor.seconds()
        if self._logged_at is not None and now - self._logged_at < 1.0:
            self._unlogged += 1
            return
        more = " ({unlogged} more errors since the last line)" if self._unlogged else ""
        extra = {} if failure is None else {"log_failure": failure}
        _log.warn("backend proxy {url}: {error}" + more, url=self.url, error=why,
                  unlogged=self._unlogged, **extra)
        self._logged_at, self._unlogged = now, 0


_FAILURES = (  # the first that matches says why
    (ConnectionRefusedError, "the backend refused the connection"),
    (DNSLookupError, "cannot resolve the backend's host name"),
    (ConnectError, "cannot connect to the backend"),
    (ResponseNeverReceived, "the backend closed the connection without answering"),
    (ResponseFailed, "the connection to the backend broke during the answer"),
    ((RequestNotSent, RequestTransmissionFailed), "cannot send the request to the backend"),
)


def describe_failure(exc: BaseException) -> str | None:
    """Say in a few words why an exchange failed; None for an unexpected error."""
    if isinstance(exc, BackendError):
        return str(exc)
    if any(type(f.value).__module__.startswith("OpenSSL") for f in getattr(exc, "reasons", ())):
        return "the TLS handshake with the backend failed"
    return next((why for kind, why in _FAILURES if isinstance(exc, kind)), None)


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written in one go (the webhook
    sender, pusher/webhook_sender.py, posts with it too)."""

    def __init__(self, body: bytes):
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer) -> Deferred:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...


class CappedBody(Protocol):
    """Collects a response body into ``done``; past ``limit`` bytes it fails
    with BackendError and closes the connection instead of reading on."""

    def __init__(self, limit: int, expected):
        self.done: Deferred = Deferred(lambda d: self._close())
        self._limit = limit
        self._expected = expected
        self._parts: list[bytes] = []
        self._size = 0

    def connectionMade(self) -> None:
        if self._expected is not UNKNOWN_LENGTH and self._expected > self._limit:
            self._give_up()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._give_up()
        else:
            self._parts.append(data)

    def connectionLost(self, reason=None) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):  # the latter: ended by a close
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)

    def _give_up(self) -> None:
        self._parts = []
        self.done.errback(BackendError(
            f"the backend's answer is larger than {self._limit} bytes"))
        self._close()

    def _close(self) -> None:
        """Stop reading for good: the connection closes, unfit for reuse."""
        if self.transport is not None:
            self.transport.stopProducing()


# The [proxy] settings: a reload that changes one makes the backends anew.
PROXY_SETTINGS = ("proxy_join_url", "proxy_send_url", "proxy_timeout",
                  "proxy_max_in_flight", "proxy_on_error", "proxy_secret")


@implementer(IReloadable)
class Backends:
    """The backends the [proxy] settings name: ``join`` (``proxy.join_url``)
    and ``send`` (``proxy.send_url``), each None when not set.

    ``make(url, settings, count, observe)`` makes one (a ``BackendProxy``);
    ``count`` and ``observe`` are handed to each (its metrics).
    """

    def __init__(self, make: Callable[..., Any] | None, count: Callable[[str], None],
                 observe: Callable[[], Callable[[float], None]]):
        self._make = make
        self._count = count
        self._observe = observe
        self._settings = None
        self.join: BackendProxy | None = None
        self.send: BackendProxy | None = None

    def configure(self, settings) -> None:
        """Use ``settings``' backends: made anew when a [proxy] setting changed."""
        old, self._settings = self._settings, settings
        if old is not None and all(getattr(old, k) == getattr(settings, k)
                                   for k in PROXY_SETTINGS):
            return
        self.close()
        self.join = self._backend(settings.proxy_join_url, settings)
        self.send = self._backend(settings.proxy_send_url, settings)

    def _backend(self, url: str, settings) -> BackendProxy | None:
        if not url or self._make is None:
            return None
        return self._make(url, settings, self._count, self._observe())

    def close(self) -> None:
        for backend in (self.join, self.send):
            if backend is not None:
                backend.close()
        self.join = self.send = None
