"""The worker pool: one master process and N workers on the same listening address.

- ``master``: binds every listening socket (one SO_REUSEPORT socket per worker
  for TCP), spawns the workers (handing them the sockets as inherited
  descriptors and an AMP pipe on fds 3 and 4), serves the hub, restarts
  workers that die.
- ``worker``: the worker process's entry point; it adopts the sockets and runs
  the same ``PushServer`` as ``--workers 0``, with an ``AmpBroker``.
- ``hub``: which worker subscribes to which channel (no I/O).
- ``wire``: the AMP commands, split by direction, and the packing of the
  message batches they carry.
"""
