"""The HTTP edge: twisted.web resources for ``/ws``, ``/api/...`` and ``/healthz``.

Every answer is JSON.  Handlers return ``(status, body)`` or raise
``ProtocolError``; ``answers.JsonResource.render`` turns both into a response
in one place.  Routes are listed in docs/http-api.md and built by
``routes.build_site``.

The limits at this edge (docs/security.md): ``channel.PushChannel`` is one
HTTP connection, with the request size limit (431), a JSON answer to a
malformed request (400), a deadline for the whole request
(``handshake_timeout``) and the connection's place in the per-address count
(429 past it); ``upgrade.PushWebSocketResource`` checks the ``Origin`` of a
WebSocket handshake (403) and hands the place over to the WebSocket
connection; ``api.HttpApi`` checks API keys (401 without a valid key, 403 for
a read-only key that writes).
"""

from .answers import LimitedRequest
from .channel import PushChannel
from .routes import build_site

__all__ = ["LimitedRequest", "PushChannel", "build_site"]
