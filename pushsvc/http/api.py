"""What the HTTP resources and the site share: the engine, the settings, the
API keys, and the limits of the edge (origins, proxies, connections per
address)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from twisted.internet.defer import maybeDeferred
from zope.interface import implementer

from ..wire.values import Command
from ..limits import OriginPolicy, PerAddress, Proxies
from ..protocol import FORBIDDEN, UNAUTHORIZED
from ..reloadable import IReloadable
from .answers import AuthError


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


@implementer(IReloadable)
class HttpApi:
    """Holds what the resources and the site share: the engine, settings,
    API keys, and the limits of the edge (origins, proxies, connections per
    address)."""

    def __init__(self, engine, settings, gather_metrics=None):
        self.engine = engine
        self.counters = engine.counters  # the refusals this edge counts (counters.py)
        if gather_metrics is not None:  # a pool worker asks the master (worker.py)
            self.gather_metrics = gather_metrics
        # Counts survive a reload; only the limit changes.
        self.per_ip = PerAddress(settings.max_connections_per_ip)
        # Connections over the limit that wait for their 429 (as many again).
        self.refusing = PerAddress(settings.max_connections_per_ip)
        self.configure(settings)

    def gather_metrics(self):
        """A Deferred firing with the machine's metric values (pushsvc/metrics.py):
        this one process's, unless another source was given."""
        from ..metrics import local_values
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
