"""The Redis connections' parser (``redis_link._SameTurn``): every reply of a
read is handled in that read's turn, not one bulk string per reactor turn
as txredisapi's parser alone does."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from pushsvc.broker.redis_link import CommandProtocol, _Subscriber


def message(n: int) -> bytes:
    """A pub/sub message as Redis sends it: three bulk strings."""
    body = b"m%d" % n
    return b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$%d\r\n%s\r\n" % (len(body), body)


class Broker:
    """What a subscriber hands its link's broker."""

    def __init__(self):
        self.received = []
        self.close_after = None
        self.proto = None

    def _received(self, channel, payload):
        self.received.append(payload)
        if len(self.received) == self.close_after:
            self.proto.transport.loseConnection()


class SameTurnTests(unittest.TestCase):

    def subscriber(self):
        broker = Broker()
        proto = _Subscriber(charset=None)
        proto.link = type("Link", (), {"broker": broker})()
        proto.callLater = Clock().callLater  # were a turn needed, nothing would come
        proto.makeConnection(StringTransport())
        broker.proto = proto
        return proto, broker

    def test_a_burst_is_handled_in_the_read_that_brought_it(self):
        """Ten thousand messages in one read (txredisapi's parser alone
        handles one bulk string per reactor turn: none of them here), and
        messages cut anywhere across reads, each once, in order."""
        proto, broker = self.subscriber()
        proto.dataReceived(b"".join(message(n) for n in range(10_000)))
        self.assertEqual(broker.received, [b"m%d" % n for n in range(10_000)])
        self.assertFalse(proto.paused)
        del broker.received[:]
        data = b"".join(message(n) for n in range(100))
        for start in range(0, len(data), 7):
            proto.dataReceived(data[start:start + 7])
        self.assertEqual(broker.received, [b"m%d" % n for n in range(100)])

    def test_parsing_stops_once_the_connection_closes(self):
        proto, broker = self.subscriber()
        broker.close_after = 3
        proto.dataReceived(b"".join(message(n) for n in range(10)))
        self.assertEqual(broker.received, [b"m0", b"m1", b"m2"])

    def test_command_replies_answer_their_calls_in_the_same_turn(self):
        proto = CommandProtocol(charset=None)
        proto.callLater = Clock().callLater
        proto.makeConnection(StringTransport())
        calls = [proto.execute_command("GET", f"k{n}") for n in range(3)]
        answers = []
        for d in calls:
            d.addCallback(answers.append)
        proto.dataReceived(b"$2\r\nv0\r\n*2\r\n:1\r\n$2\r\nv1\r\n$-1\r\n")
        self.assertEqual(answers, [b"v0", [1, b"v1"], None])
