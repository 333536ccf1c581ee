"""Pusher Channels compatibility (docs/pusher.md).

The I/O-free layer:

- ``apps``: the ``[[pusher.apps]]`` tables and the channel <-> group mapping;
- ``names``: ``PusherError``, close codes, channel names and kinds, socket ids;
- ``protocol``: the WebSocket wire format of Pusher Channels protocol 7;
- ``signatures``: channel, user, HTTP API and webhook signatures;
- ``events``: the HTTP API's routes, bodies and answers, and webhook bodies;
- ``session``: one Pusher connection's state and the rules of its frames;
- ``rates``, ``origins``: an app's event rates (4301, 429) and its
  ``allowed_origins``;
- ``dialect``: a pushsvc message as a Pusher frame, made once per channel;
- ``presence``: presence members from pushsvc's own presence;
- ``webhooks``: which webhook event goes where, batches, bounds, retry delays.

The WebSocket edge ``/app/{key}`` on top of it, with the engine:
``websocket`` (the connections) and ``serving`` (their frames); the webhooks'
HTTP edge is ``webhook_sender``.  The HTTP API's edge is
``pushsvc/http/pusher_routes.py``.
"""
