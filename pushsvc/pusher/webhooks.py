"""Pusher webhooks, the rules without I/O: which event goes to which URL,
events gathered into batches, the bounds, the retry delays.  The HTTP edge
is ``webhook_sender.py``.

What this follows: Pusher's webhooks page.  A request is ``POST URL`` with
the JSON body ``{"time_ms": T, "events": [..]}`` (``events.webhook_body``),
``X-Pusher-Key`` and ``X-Pusher-Signature`` = the hex HMAC-SHA256 of the body
with the app's secret (``signatures.webhook_headers``), which the official
SDKs' ``validate_webhook`` checks (with ``time_ms`` within 5 minutes of
their clock).  The events: ``channel_occupied``/``channel_vacated``
(``channel``), ``member_added``/``member_removed`` (``channel``,
``user_id``), ``client_event`` (``channel``, ``event``, ``data``,
``socket_id``, and ``user_id`` on presence channels).

Each ``{url, events}`` entry of an app's ``webhooks`` gets the events it
lists, in a ``Destination`` of its own (one per app and URL):

- **batched**: an event waits ``WINDOW`` seconds for others to go with it,
  at most ``MAX_BATCH`` to a request; one request at a time per destination,
  so its batches arrive in order, and what comes while one is under way goes
  as soon as it is answered;
- **retried**: a batch that gets no 2xx answer (a connection failure, a
  timeout, another status) is sent again, the same body, after each of
  ``RETRY_DELAYS`` in turn, then given up;
- **bounded**: at most ``MAX_QUEUED`` events wait per destination (an event
  over it is dropped, and counted), and at most ``MAX_IN_FLIGHT`` requests
  are under way per process (the others wait their turn).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .apps import Apps, PusherApp
from .events import webhook_body, webhook_event

WINDOW = 0.25                   # seconds events gather before their request
MAX_BATCH = 100                 # events per request
MAX_QUEUED = 10_000             # events waiting per app and URL
MAX_IN_FLIGHT = 16              # requests under way per process
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # then the batch is given up
TIMEOUT = 10.0                  # seconds for an answer

GROUP_PREFIX = "group:"         # a group's channel in the keeper's table (routing.py)


def occupancy(apps: Apps, channel: str, occupied: bool) -> tuple[PusherApp, dict] | None:
    """The ``channel_occupied``/``channel_vacated`` event of a keeper's
    channel (``group:pusher.ID:C``) and its app, or None for a channel that
    is no Pusher app's."""
    if not channel.startswith(GROUP_PREFIX):
        return None
    found = apps.locate(channel[len(GROUP_PREFIX):])
    if found is None:
        return None
    app, name = found
    return app, webhook_event("channel_occupied" if occupied else "channel_vacated", name)


def wants_occupancy(apps: Apps, channel: str) -> bool:
    """Whether a keeper's channel is a Pusher app's group whose webhooks ask
    for ``channel_occupied`` or ``channel_vacated`` (with Redis, only those
    cost a round trip: ``broker/redis_occupancy.py``)."""
    found = occupancy(apps, channel, True)
    return found is not None and any(found[0].webhook_urls(name) for name in
                                     ("channel_occupied", "channel_vacated"))


class Destination:
    """One URL of one app: the events waiting for it, and the batch being
    sent (or waiting to be sent again)."""

    def __init__(self, app_id: str, url: str, max_queued: int = MAX_QUEUED,
                 max_batch: int = MAX_BATCH):
        self.app_id = app_id
        self.url = url
        self.max_queued = max_queued
        self.max_batch = max_batch
        self.pending: deque[dict[str, Any]] = deque()
        self.body: bytes | None = None   # the batch under way
        self.events = 0                  # how many events it holds
        self.attempt = 0                 # failed attempts of this batch
        self.dropped = 0                 # events dropped since the queue last had room
        self.timer = None                # the edge's DelayedCall

    def add(self, event: dict[str, Any]) -> bool:
        """Queue ``event``; False when the queue is full (dropped, counted)."""
        if len(self.pending) >= self.max_queued:
            self.dropped += 1
            return False
        self.pending.append(event)
        return True

    def take(self, time_ms: int) -> bytes | None:
        """The body of the next batch (it is under way from now on), or None
        when nothing waits."""
        if not self.pending:
            return None
        count = min(len(self.pending), self.max_batch)
        events = [self.pending.popleft() for _ in range(count)]
        self.body, self.events, self.attempt = webhook_body(events, time_ms), count, 0
        return self.body

    def failed(self) -> float | None:
        """The batch failed: the delay before it is sent again, or None when
        it is given up (its events forgotten)."""
        self.attempt += 1
        if self.attempt <= len(RETRY_DELAYS):
            return RETRY_DELAYS[self.attempt - 1]
        self.done()
        return None

    def done(self) -> None:
        """The batch is through (or given up)."""
        self.body, self.events, self.attempt = None, 0, 0

    def recovered(self) -> int:
        """How many events were dropped since the queue last had room (and
        start counting anew): the edge logs it once the queue has room."""
        dropped, self.dropped = self.dropped, 0
        return dropped

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_queued
