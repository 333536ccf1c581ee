"""Pusher Channels compatibility (docs/pusher.md).

The I/O-free layer:

- ``apps``: the ``[[pusher.apps]]`` tables and the channel <-> group mapping;
- ``names``: ``PusherError``, close codes, channel names and kinds, socket ids;
- ``protocol``: the WebSocket wire format of Pusher Channels protocol 7;
- ``signatures``: channel, user, HTTP API and webhook signatures;
- ``events``: the HTTP API's routes, bodies and answers, and webhook bodies;
- ``session``: one Pusher connection's state and the rules of its frames;
- ``dialect``: a pushsvc message as a Pusher frame, made once per channel;
- ``presence``: presence members from pushsvc's own presence.

The WebSocket edge ``/app/{key}`` on top of it, with the engine:
``websocket`` (the connections) and ``serving`` (their frames).  The HTTP
API's edge is ``pushsvc/http/pusher_routes.py``.
"""
