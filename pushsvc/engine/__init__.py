"""The session engine of one process: client ops, publishing, delivery, commands.

The engine sits between the I/O edges and the broker.  The WebSocket edge hands
it connections (``open``/``close``) and text frames (``handle``); the HTTP edge
hands it pushes (``publish``) and commands (``run``); the broker hands it
messages (``deliver``) and commands (``perform``).  It never touches a socket:
a connection is any object with the ``IConnection`` methods.

``core.Engine`` holds the sessions and serves their frames in order; each
concern it hands a request to has a module of its own: ``auth``, ``groups``,
``sending``, ``resume``, ``perform`` and ``hooks``; ``serving`` serves a
session's frames in order.
"""

from .connection import IConnection, Overloaded
from .core import Engine
from .serving import MAX_WAITING

__all__ = ["Engine", "IConnection", "MAX_WAITING", "Overloaded"]
