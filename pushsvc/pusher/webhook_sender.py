"""Pusher webhooks, the HTTP edge: ``WebhookSender`` POSTs each app's batches
to its URLs (the rules are ``webhooks.py``'s), with the pieces of
pushsvc's backend client (``proxy.py``: a persistent ``HTTPConnectionPool``
under a twisted.web ``Agent``, a body read up to a cap, the same words for
why a request failed).

Who sends what (docs/pusher.md, "Webhooks"): ``member_added``,
``member_removed`` and ``client_event`` go from the process where the
Pusher connection is (``serving.PusherServing``); ``channel_occupied`` and
``channel_vacated`` from the keeper of the machine (``watch_occupancy``):
the one process of ``--workers 0``, or the master of a pool, whose hub sees
every worker's subscriptions one at a time; with Redis, from the engine
whose script in Redis changed the channel's marker
(``watch_redis_occupancy``, ``broker/redis_occupancy.py``).

Counted (``counters``: the engine's, or the master's own): ``webhook_sent``
(events answered 2xx), ``webhook_retried`` (requests sent again),
``webhook_dropped`` (events over a full queue, or still queued at the stop)
and ``webhook_failed`` (events of a batch given up after its retries, or of
an app or URL a reload removed).  A full queue is logged once, when it starts
dropping, and once more when it has room again (how many it dropped); a
failing URL once when it starts failing and once when it answers again.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers

from ..proxy import BackendError, BytesProducer, CappedBody, describe_failure
from .apps import Apps, PusherApp, check_apps
from .signatures import webhook_headers
from .webhooks import (MAX_IN_FLIGHT, MAX_QUEUED, TIMEOUT, WINDOW, Destination,
                       occupancy, wants_occupancy)

_log = Logger()

MAX_ANSWER_BYTES = 4096         # of an answer's body, read and forgotten


def current_apps(settings: Callable[[], Any]) -> Callable[[], Apps]:
    """The apps of ``settings()`` (re-read when a reload changes them)."""
    cached: list = [None, None]

    def apps() -> Apps:
        current = settings()
        if cached[0] is not current.pusher_apps:
            separator = current.namespace_separator
            cached[:] = [current.pusher_apps,
                         Apps(check_apps(current.pusher_apps, separator), separator)]
        return cached[1]
    return apps


class WebhookSender:
    """The webhooks of one process.  ``apps()`` gives the configured apps
    (their URLs, events and secrets as a reload leaves them); ``clock`` times
    the windows and retries; ``now()`` is the wall clock of ``time_ms``;
    ``max_queued`` events wait per app and URL, ``max_in_flight`` requests
    are under way at most."""

    def __init__(self, reactor, apps: Callable[[], Apps], counters: Counter | None = None,
                 clock=None, now: Callable[[], float] = time.time, tls=None,
                 max_queued: int = MAX_QUEUED, max_in_flight: int = MAX_IN_FLIGHT):
        self.apps = apps
        self.max_queued = max_queued
        self.max_in_flight = max_in_flight
        self.counters = Counter() if counters is None else counters
        self._clock = clock or reactor
        self._now = now
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent(reactor, tls or BrowserLikePolicyForHTTPS(), pool=self._pool)
        self._destinations: dict[tuple[str, str], Destination] = {}
        self._waiting: deque[Destination] = deque()  # ready, over MAX_IN_FLIGHT
        self.in_flight = 0
        self.closed = False
        self.stopping = False  # the process stops or retires: with Redis, vacating
        # is left to a live node's sweep (watch_redis_occupancy)

    def emit(self, app: PusherApp, event: dict[str, Any]) -> None:
        """Queue ``event`` for each of ``app``'s URLs that asks for it."""
        if self.closed:
            return
        for url in app.webhook_urls(event["name"]):
            dest = self._destinations.get((app.id, url))
            if dest is None:
                dest = self._destinations[app.id, url] = Destination(app.id, url,
                                                                      self.max_queued)
            if dest.add(event):
                self._soon(dest, WINDOW)
                continue
            self.counters["webhook_dropped"] += 1
            if dest.dropped == 1:
                _log.warn("webhooks of app {app} to {url}: {queued} events wait, the most "
                          "kept; events are dropped until it has room", app=app.id, url=url,
                          queued=dest.max_queued)

    def _soon(self, dest: Destination, delay: float) -> None:
        if dest.timer is None and dest.body is None and not self.closed:
            dest.timer = self._clock.callLater(delay, self._send, dest)

    def _send(self, dest: Destination) -> None:
        dest.timer = None
        if dest.body is None and dest.take(int(self._now() * 1000)) is None:
            return
        if self.in_flight >= self.max_in_flight:
            self._waiting.append(dest)
            return
        app = self.apps().by_id(dest.app_id)
        if app is None or dest.url not in (hook.url for hook in app.webhooks):
            self.counters["webhook_failed"] += dest.events + len(dest.pending)
            del self._destinations[dest.app_id, dest.url]
            return
        self.in_flight += 1
        d = Deferred.fromCoroutine(self._post(dest.url, webhook_headers(app, dest.body),
                                              dest.body))
        d.addTimeout(TIMEOUT, self._clock)
        d.addBoth(self._answered, dest)

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        response = await self._agent.request(
            b"POST", url.encode("ascii"),
            Headers({name: [value] for name, value in
                     {**headers, "User-Agent": "pushsvc"}.items()}),
            BytesProducer(body))
        reader = CappedBody(MAX_ANSWER_BYTES, response.length)
        response.deliverBody(reader)
        try:
            await reader.done
        except BackendError:
            pass  # a long answer: its status is what counts
        return response.code

    def _answered(self, result: int | Failure, dest: Destination) -> None:
        self.in_flight -= 1
        if self.closed:  # its events were counted at the close
            return
        if isinstance(result, Failure) or not 200 <= result < 300:
            self._failed(result, dest)
        else:
            self.counters["webhook_sent"] += dest.events
            if dest.attempt:
                _log.info("webhooks of app {app} to {url}: answered again",
                          app=dest.app_id, url=dest.url)
            dest.done()
            dropped = dest.recovered()
            if dropped:
                _log.warn("webhooks of app {app} to {url}: {dropped} events were dropped "
                          "while the queue was full", app=dest.app_id, url=dest.url,
                          dropped=dropped)
            self._soon(dest, 0)  # what came meanwhile has waited long enough
        while self._waiting and self.in_flight < self.max_in_flight:
            self._send(self._waiting.popleft())

    def _failed(self, result: int | Failure, dest: Destination) -> None:
        if isinstance(result, int):
            why = f"the backend answered HTTP {result}"
        else:
            why = describe_failure(result.value) or f"unexpected error ({result.type.__name__})"
        events, first = dest.events, dest.attempt == 0
        delay = dest.failed()
        if delay is None:
            self.counters["webhook_failed"] += events
            _log.warn("webhooks of app {app} to {url}: {events} events given up after "
                      "their retries ({error})", app=dest.app_id, url=dest.url,
                      events=events, error=why)
            self._soon(dest, WINDOW)
            return
        if first:
            _log.warn("webhooks of app {app} to {url}: {error}; retrying", app=dest.app_id,
                      url=dest.url, error=why)
        self.counters["webhook_retried"] += 1
        dest.timer = self._clock.callLater(delay, self._send, dest)

    def close(self) -> Deferred:
        """Send nothing more: what waits is dropped (counted, one log line),
        and the kept-alive connections close."""
        self.closed = True
        left = 0
        for dest in self._destinations.values():
            if dest.timer is not None and dest.timer.active():
                dest.timer.cancel()
            dest.timer = None
            left += len(dest.pending) + dest.events
            dest.pending.clear()
            dest.done()  # a request under way counts nothing more when answered
        if left:
            self.counters["webhook_dropped"] += left
            _log.info("webhooks: {left} events not sent at the stop", left=left)
        self._destinations.clear()
        self._waiting.clear()
        return self._pool.closeCachedConnections()


class SenderService(Service):
    """Closes a ``WebhookSender`` when its process stops."""

    def __init__(self, sender: WebhookSender):
        self.sender = sender

    def stopService(self):
        super().stopService()
        return self.sender.close()


def _announcer(sender: WebhookSender) -> Callable[[str, bool], None]:
    """``changed(channel, occupied)``: the event of a Pusher app's group, to
    its app's URLs (nothing for any other channel)."""
    def changed(channel: str, occupied: bool) -> None:
        found = occupancy(sender.apps(), channel, occupied)
        if found is not None:
            sender.emit(*found)
    return changed


def watch_occupancy(table, sender: WebhookSender) -> None:
    """Send ``channel_occupied``/``channel_vacated`` as ``table`` (a keeper's
    ``SubscriptionTable``) sees a group of a Pusher app get its first
    subscriber and lose its last."""
    table.watcher = _announcer(sender)


def watch_redis_occupancy(broker, sender: WebhookSender) -> None:
    """Send ``channel_occupied``/``channel_vacated`` as Redis says (a Redis
    broker's ``watch_occupancy``) for the groups of Pusher apps whose
    webhooks ask for them.  Once ``sender.stopping``, this process syncs
    nothing more: the channels its closing connections vacate are left to
    a live node's sweep (what it queued then would be dropped at its stop)."""
    broker.watch_occupancy(lambda channel: wants_occupancy(sender.apps(), channel),
                           _announcer(sender), lambda: not sender.stopping)
