"""Pusher Channels compatibility: the I/O-free layer the Pusher edges use.

- ``apps``: the ``[[pusher.apps]]`` tables and the channel <-> group mapping;
- ``names``: ``PusherError``, close codes, channel names and kinds, socket ids;
- ``protocol``: the WebSocket wire format of Pusher Channels protocol 7;
- ``signatures``: channel, user, HTTP API and webhook signatures;
- ``events``: the HTTP API's routes, bodies and answers, and webhook bodies.

Nothing here does I/O or imports Twisted; docs/pusher.md tells the story.
"""
