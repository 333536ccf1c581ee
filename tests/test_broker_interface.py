"""Every broker provides the whole ``IBroker``, ``health`` and ``timed`` included."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from pushsvc.broker.amp import AmpBroker
from pushsvc.broker.interface import IBroker
from pushsvc.broker.local import LocalBroker
from pushsvc.broker.redis import RedisBroker
from pushsvc.reloadable import IReloadable
from tests.helpers import settings


class BrokerInterfaceTests(unittest.TestCase):

    def test_local_broker(self):
        broker = LocalBroker()
        self.assertTrue(verifyObject(IBroker, broker))
        self.assertIsNone(broker.health())

    def test_amp_broker(self):
        broker = AmpBroker(clock=Clock())
        self.assertTrue(verifyObject(IBroker, broker))
        self.assertIsNone(broker.health())

    def test_redis_broker(self):
        # Not attached: it makes no connection and starts no timer.
        broker = RedisBroker(settings(redis="redis://127.0.0.1:1/0", node="n"), "n.0",
                             reactor, Clock(), token="t")
        self.assertTrue(verifyObject(IBroker, broker))
        self.assertTrue(verifyObject(IReloadable, broker))
        self.assertEqual(broker.health(),
                         "redis unavailable: not connected yet to redis://127.0.0.1:1/0")
        broker.configure(settings(redis="redis://127.0.0.1:1/0", node="n", ttl=0))
        self.assertIsNone(broker.epoch)            # a reload turned the history off

    def test_sharded_redis_broker(self):
        """Several Redis: the whole interface too (a worker reads ``closed``
        when its master's pipe closes; without it the worker never stopped)."""
        from pushsvc.broker.redis_sharded import ShardedRedisBroker
        urls = "redis://127.0.0.1:1/0 redis://127.0.0.1:2/0"
        broker = ShardedRedisBroker(settings(redis=urls, node="n"), "n.0", reactor, Clock(),
                                    token="t")
        self.assertTrue(verifyObject(IBroker, broker))
        self.assertTrue(verifyObject(IReloadable, broker))
        self.assertFalse(broker.closed)

    def test_brokers_without_a_store_never_time(self):
        observed: list[float] = []
        for broker in (LocalBroker(), AmpBroker(clock=Clock())):
            broker.timed(observed.append)
        self.assertEqual(observed, [])

    def test_the_redis_broker_times_its_script_calls(self):
        broker = RedisBroker(settings(redis="redis://127.0.0.1:1/0", node="n"), "n.0",
                             reactor, Clock(), token="t")
        observed: list[float] = []
        broker.timed(observed.append)

        class Commands:
            def eval(self, script, keys, args):
                return succeed(1)
        broker._cmd.protocol = Commands()
        broker._context.eval("return 1", [], [])
        self.assertEqual(len(observed), 1)
        self.assertGreaterEqual(observed[0], 0)
