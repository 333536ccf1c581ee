"""The master process of ``--workers N``: binds the sockets, runs the workers
and the AMP hub.

Service tree (``Master``)::

    Master (MultiService)
      ListeningSockets  every endpoint, bound here, never accepted on here
      Pool              spawns the workers, restarts them; its hub routes
                        their messages

Each worker is ``python -m pushsvc.pool.worker`` with its listening sockets on
descriptors 5, 6, ... (one per endpoint), its AMP pipe on 3 (master -> worker)
and 4 (worker -> master), and its stdout/stderr piped back here and re-logged
as ``worker N: ...``.
"""

from __future__ import annotations

from twisted.application.service import MultiService

from .control import PoolControl
from .restart import RestartFailed
from .sockets import ListeningSockets
from . import STOP_GRACE
from .supervisor import MAX_BACKOFF, QUICK_EXIT, Pool
from .process import WorkerProcess
from .hub import HubProtocol

__all__ = ["MAX_BACKOFF", "QUICK_EXIT", "STOP_GRACE", "HubProtocol", "ListeningSockets",
           "Master", "Pool", "PoolControl", "RestartFailed", "WorkerProcess"]


class Master(MultiService):
    """The master process of ``--workers N`` (``pool_options``: Pool's ``clock``
    and ``worker_argv``)."""

    def __init__(self, settings, reactor, count: int, **pool_options):
        super().__init__()
        self.sockets = ListeningSockets(reactor, settings.endpoints, count)
        self.sockets.setServiceParent(self)
        self.pool = Pool(settings, reactor, count, self.sockets, **pool_options)
        self.pool.setServiceParent(self)
        self.control = PoolControl(self.pool)
