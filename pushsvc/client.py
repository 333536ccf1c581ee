"""Python clients for pushsvc (docs/clients.md).

``PushClient`` is the one for applications: it stays connected (reconnects
with a jittered backoff, authenticates and joins its groups again, resumes
from the last ``pos``), from Twisted code or, through Twisted's asyncio
reactor, from asyncio code (examples/listen.py, examples/listen_asyncio.py).

``connect`` and ``PushClientProtocol`` are one plain connection that keeps
every frame, used by the tests.

Everything is importable from here; the code is in modules of one job each:
pushsvc/client_connection.py (``connect``, ``PushClientProtocol``, the
errors ``ServerError`` and ``ConnectionClosed``, ``tls_failure``),
pushsvc/client_reconnecting.py (``PushClient``: connecting, states, events,
frames), pushsvc/client_requests.py (its requests) and
pushsvc/client_restore.py (its restoring of a connection: auth, groups,
resume; and the order of its messages).
"""

from .client_connection import (ConnectionClosed, PushClientProtocol, ServerError, connect,
                                tls_failure)
from .client_reconnecting import KICKED, POLICY, STATES, TRY_LATER, PushClient

__all__ = ["ConnectionClosed", "KICKED", "POLICY", "PushClient", "PushClientProtocol",
           "STATES", "ServerError", "TRY_LATER", "connect", "tls_failure"]
