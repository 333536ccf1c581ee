"""The worker pool of one machine (``--workers N``): a master process binds
the listening sockets and runs the workers, each ``python -m
pushsvc.pool.worker``; the master's hub routes their messages.

    master.py      Master: the service tree (sockets, then the supervisor)
    sockets.py     ListeningSockets: every endpoint, bound in the master
    supervisor.py  Pool: spawn, watch, respawn with backoff, stop, fan-out, reload
    restart.py     the rolling restart (restart-workers)
    process.py     WorkerProcess: one worker as the master sees it: its pipes,
                   the backlog cap, its log lines
    hub.py         Hub and HubProtocol: the master's end of the AMP pipes,
                   routing through the keeper (pushsvc/keeper.py)
    control.py     PoolControl: what the console drives
    worker.py      a worker's main

What both sides share is here: the descriptors of a worker (the AMP pipe on
3 and 4, the listening sockets from 5 on) and the environment variable that
hands it its settings.  The master never imports the worker's module (nor
the engine, nor the WebSocket stack).
"""

from __future__ import annotations

import json

from .. import loglevel

ENV = "PUSHSVC_WORKER"
AMP_IN, AMP_OUT = 3, 4
FIRST_SOCKET = 5

COMMAND_TIMEOUT = 10.0  # seconds a worker has to answer a command
STOP_GRACE = 5.0        # seconds a worker gets beyond close_timeout (and a drain) to exit


def describe(settings, index: int, families: list[int],
             tls: list[str | None] | None = None, epoch: str | None = None) -> str:
    """The ``PUSHSVC_WORKER`` value for worker ``index`` (the master's side);
    ``tls``: per socket, its ``ssl:`` description, or None for plain TCP;
    ``epoch``: the hub's history's."""
    return json.dumps({"settings": settings.to_json(), "index": index,
                       "families": families, "tls": tls or [None] * len(families),
                       "log_level": loglevel.current(), "epoch": epoch})
