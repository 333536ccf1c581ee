"""Brokers carry messages and commands between the processes that hold sessions.

``interface.IBroker`` is the contract; ``local.LocalBroker`` serves one
process, ``amp.AmpBroker`` a pool worker through the master's hub, and
``redis.RedisBroker`` any engine of many nodes through Redis (a facade over
its parts, the ``redis_*`` modules).  The session engine never knows which
one it talks to; ``make_broker`` picks one.
"""

from __future__ import annotations

from typing import Any, Callable


def make_broker(settings, worker: int, reactor, clock=None, *,
                otherwise: Callable[[], Any], master_pid: int | None = None):
    """The broker of engine ``worker`` of this node: a ``RedisBroker`` when
    ``settings.redis`` is set (a ``ShardedRedisBroker`` for several URLs,
    a ``ClusterRedisBroker`` for a Redis Cluster), else ``otherwise()`` (the local or AMP one).

    ``master_pid``: the pid of this node's master, for a pool worker (it
    tells this node's processes from another node's with the same name).
    """
    if not settings.redis:
        return otherwise()
    from .redis import RedisBroker, node_token
    from .redis_cluster import ClusterRedisBroker
    from .redis_sharded import ShardedRedisBroker
    if settings.redis.startswith("redis+cluster://"):
        kind = ClusterRedisBroker
    else:
        kind = ShardedRedisBroker if len(settings.redis.split()) > 1 else RedisBroker
    return kind(settings, f"{settings.node}.{worker}", reactor, clock,
                token=node_token(master_pid) if master_pid else None)
