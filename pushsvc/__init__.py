"""pushsvc: a real-time WebSocket push server on Twisted and Autobahn."""

__version__ = "0.1.0"
