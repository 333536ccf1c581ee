"""What the engine asks of a client connection, and the refusal of one too many."""

from __future__ import annotations

from zope.interface import Interface


class IConnection(Interface):
    """What the engine asks of a client connection (the WebSocket edge)."""

    def send_frame(frame):
        """Write one encoded server frame (bytes) to this client."""

    def send_prepared(prepared):
        """Write a frame prepared once for many clients by the engine's
        ``prepare``, at the end of the reactor turn with the turn's others."""

    def send_now(prepared):
        """Write a prepared frame now (after any frames of this turn)."""

    def close(code, reason):
        """Close the connection with a WebSocket close code and reason."""

    def check_alive(now):
        """Ping the client, or drop it if it has been silent too long."""


class Overloaded(Exception):
    """The process holds as many sessions as it may."""
