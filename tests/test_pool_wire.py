"""Message batches between the workers and the hub.

- ``PackingTests``: the record packing of ``wire.records`` (pure functions).
- ``OutboxTests``, ``AmpBrokerBatchTests``, ``HubBatchTests``: one batch per
  peer and reactor turn, in order, never overtaken by a later command; driven
  by a ``task.Clock`` and fake AMP peers that record what they are sent.
- ``PoolBatchTests``: a real pool; ``/api/batch`` crosses workers in order.
"""

from __future__ import annotations

import json

from twisted.internet.defer import succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial import unittest

from pushsvc.broker.amp import AmpBroker, WorkerProtocol
from pushsvc.broker.interface import Command, Message
from pushsvc.frames import message_frame
from pushsvc.history import History
from pushsvc.pool.master import Pool, WorkerProcess
from pushsvc.wire.amp_args import CHUNK
from pushsvc.wire.batch_pipe import BatchPipe, batch_box, read_boxes
from pushsvc.wire.hub_commands import PublishBatch, RunCommand, Subscribe, Unsubscribe
from pushsvc.wire.records import Outbox, pack_publish, unpack_messages, unpack_publishes
from pushsvc.wire.worker_commands import DeliverBatch, Perform
from pushsvc.protocol import Address
from tests.helpers import eventually, run, settings
from tests.test_pool import PoolTestCase


def pack(records) -> bytes:
    """A PublishBatch of (channels, id, to, frame) records."""
    return b"".join(pack_publish(*r) for r in records)


def relay(batch: bytes) -> bytes:
    """What the hub makes of a PublishBatch for a worker that wants every message."""
    return b"".join(record for _, record in unpack_publishes(batch))


class PackingTests(unittest.TestCase):
    def assertRoundTrip(self, records):
        batch = pack(records)
        self.assertEqual([channels for channels, _ in unpack_publishes(batch)],
                         [list(r[0]) for r in records])
        self.assertEqual(list(unpack_messages(relay(batch))), [r[1:] for r in records])

    def test_round_trip(self):
        self.assertRoundTrip([
            (["user:alice"], "n.0.i.1", b'{"user":"alice"}', b'{"op":"msg","data":1}'),
            (["group:a", "group:b", "tag:t"], "n.0.i.2", b'{"group":["a","b"],"tag":"t"}',
             b'{"op":"msg","data":2}'),
        ])

    def test_empty_fields_and_empty_batch(self):
        self.assertRoundTrip([([], "", b"", b""), ([""], "x", b"", b"")])
        self.assertEqual(list(unpack_publishes(b"")), [])
        self.assertEqual(list(unpack_messages(b"")), [])

    def test_non_ascii(self):
        self.assertRoundTrip([(["group:café", "user:日本語", "tag:\U0001f600", "group:\ud800"],
                               "ü.0.ß.1", "{\"user\":\"日本語\"}".encode(),
                               '{"data":"ünïcödé 😀"}'.encode())])

    def test_frame_over_64_kib(self):
        frame = bytes(range(256)) * 1000  # 256,000 bytes
        self.assertRoundTrip([(["all"], "a", b'{"all":true}', frame),
                              (["all"], "b", b'{"all":true}', b"small")])

    def test_many_records(self):
        self.assertRoundTrip([([f"user:u{i}"], f"id{i}", b'{"user":"u%d"}' % i,
                               b"frame %d" % i) for i in range(10_000)])

    def test_hub_passes_records_on_without_copying(self):
        batch = pack([(["all"], "a", b"{}", b"frame")])
        [(_, record)] = unpack_publishes(batch)
        self.assertIsInstance(record, memoryview)
        self.assertIs(record.obj, batch)

    def test_truncated_batch_is_refused(self):
        batch = pack([(["all"], "a", b"{}", b"frame")])
        with self.assertRaises(ValueError):
            list(unpack_publishes(batch[:-1]))
        with self.assertRaises(ValueError):
            list(unpack_messages(relay(batch)[:-1]))

    def test_batch_over_64_kib_crosses_amp(self):
        batch = pack([(["all"], str(i), b"{}", b"x" * 1000) for i in range(200)])
        box = PublishBatch.makeArguments({"batch": batch}, None)
        self.assertTrue(all(len(value) <= CHUNK for value in box.values()))
        self.assertEqual(PublishBatch.parseArguments(box, None), {"batch": batch})


class Pipe(BatchPipe):
    """A BatchPipe that records what reaches it, batch or command, in order."""

    batches = {DeliverBatch.commandName: "deliver"}

    def __init__(self):
        super().__init__()
        self.seen: list = []
        self.makeConnection(StringTransport())

    @DeliverBatch.responder
    def deliver(self, batch):
        self.seen.append(("batch", batch))
        return {}

    @Unsubscribe.responder
    def unsubscribe(self, channels):
        self.seen.append(("unsubscribe", channels))
        return {}


class BatchPipeTests(unittest.TestCase):
    """Batches skip AMP's dispatch (wire/batch_pipe.py): the same bytes on
    the wire, the same calls at the other end, in order with AMP's commands."""

    def test_the_box_is_amps_own(self):
        for batch in (b"", b"one message", b"x" * (2 * CHUNK + 10)):
            sender = Pipe()
            sender.callRemote(DeliverBatch, batch=batch)
            self.assertEqual(batch_box(b"DeliverBatch", batch), sender.transport.value())

    def test_batches_and_commands_arrive_in_order(self):
        sender, receiver = Pipe(), Pipe()
        big = b"y" * (CHUNK + 1)
        sender.send_batch(DeliverBatch, b"first")
        sender.callRemote(Unsubscribe, channels=["group:a"])
        sender.callRemote(DeliverBatch, batch=big)  # AMP's own way: read the fast way too
        sender.send_batch(DeliverBatch, b"last")
        data = sender.transport.value()
        for i in range(0, len(data), 1000):  # as a pipe may cut it
            receiver.dataReceived(data[i:i + 1000])
        self.assertEqual(receiver.seen, [("batch", b"first"), ("unsubscribe", ["group:a"]),
                                         ("batch", big), ("batch", b"last")])

    def test_a_box_missing_a_chunk_is_left_to_amp(self):
        """AMP refuses it its own way (here: it drops the pipe), and nothing
        half-read reaches the responder."""
        receiver = Pipe()
        box = amp.AmpBox({b"_command": b"DeliverBatch", b"batch": b"2", b"batch.0": b"a"})
        receiver.dataReceived(box.serialize())
        self.assertEqual(receiver.seen, [])
        self.flushLoggedErrors(KeyError)

    def test_boxes_read_as_amp_reads_them(self):
        """Boxes of every shape, the stream cut at every byte: AMP's parser
        and read_boxes find the same boxes."""
        boxes = [amp.AmpBox({b"_command": b"Subscribe", b"_ask": b"1", b"channels": b""}),
                 amp.AmpBox({b"_answer": b"1"}),
                 amp.AmpBox({b"k" * 255: b"v" * 65535, b"e": b""}),
                 amp.AmpBox({b"_command": b"DeliverBatch", b"batch": b"1", b"batch.0": b"x"})]
        stream = b"".join(box.serialize() for box in boxes)
        reference = []
        parser = amp.BinaryBoxProtocol(type("R", (), {"ampBoxReceived": reference.append,
                                                      "startReceivingBoxes": lambda s, b: None})())
        parser.makeConnection(StringTransport())
        parser.dataReceived(stream)
        self.assertEqual(reference, boxes)
        for cut in range(0, len(stream), 97):
            first, used, too_long = read_boxes(stream[:cut])
            rest, _, _ = read_boxes(stream[used:])
            self.assertEqual((first + rest, too_long), (boxes, False), cut)

    def test_a_key_too_long_cuts_the_pipe(self):
        """AMP's limit: the boxes before it are read, then the pipe is cut."""
        receiver = Pipe()
        good = amp.AmpBox({b"_command": b"Unsubscribe", b"channels": b""}).serialize()
        receiver.dataReceived(good + b"\x01\x00" + b"k" * 256 + good)
        self.assertEqual(receiver.seen, [("unsubscribe", [])])
        self.assertTrue(receiver.transport.disconnecting)
        receiver.dataReceived(good)
        self.assertEqual(len(receiver.seen), 1)

    def test_nothing_is_sent_once_the_pipe_is_gone(self):
        sender = Pipe()
        transport = sender.transport
        sender.connectionLost(Failure(ProcessTerminated()))
        sender.send_batch(DeliverBatch, b"late")  # no error, as callRemote
        self.assertEqual(transport.value(), b"")


class FakeAmp:
    """An AMP peer that records each call: (command, arguments)."""

    def __init__(self):
        self.calls: list = []
        self.transport = self
        self.lost = False

    def callRemote(self, command, **arguments):
        assert not self.lost
        self.calls.append((command, arguments))
        return succeed({"results": []} if command is RunCommand else {"result": {}})

    def send_batch(self, command, batch):
        """BatchPipe's fast way to send a batch: recorded as the call."""
        self.callRemote(command, batch=batch)

    def loseConnection(self):
        self.lost = True

    def sent(self):
        """The calls; a batch as the list of its messages, (id, to, frame) each."""
        out = []
        for command, arguments in self.calls:
            if command is PublishBatch:
                arguments = list(unpack_messages(relay(arguments["batch"])))
            elif command is DeliverBatch:
                arguments = list(unpack_messages(arguments["batch"]))
            out.append((command, arguments))
        return out


class OutboxTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.sent = []
        self.outbox = Outbox(self.clock, lambda peer, batch: self.sent.append((peer, batch)))

    def test_one_batch_per_peer_at_the_end_of_the_turn(self):
        for record in (b"1", b"2", b"3"):
            self.outbox.add("a", record)
        self.outbox.add("b", b"4")
        self.assertEqual(self.sent, [])
        self.clock.advance(0)
        self.assertEqual(self.sent, [("a", b"123"), ("b", b"4")])
        self.outbox.add("a", b"5")
        self.clock.advance(0)
        self.assertEqual(self.sent[2:], [("a", b"5")])

    def test_flush_sends_at_once_and_cancels_the_turn(self):
        self.outbox.add("a", b"1")
        self.outbox.flush()
        self.assertEqual(self.sent, [("a", b"1")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.outbox.flush()  # nothing queued: nothing sent
        self.assertEqual(len(self.sent), 1)


class Receiver:
    def __init__(self):
        self.delivered: list[Message] = []
        self.alone: list[bool] = []

    def deliver(self, message, alone=False):
        self.delivered.append(message)
        self.alone.append(alone)


def message(n: int, to: Address = Address(user=("u",))) -> Message:
    return Message(f"m{n}", to, b"frame %d" % n)


class AmpBrokerBatchTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.broker = AmpBroker(self.clock)
        self.receiver = Receiver()
        self.broker.attach(self.receiver)
        self.hub = FakeAmp()
        self.broker.connect(self.hub)

    def publish(self, *ns):
        for n in ns:
            self.broker.publish(["user:u"], message(n))

    def test_sends_one_batch_per_turn_and_leaves_local_delivery_to_the_hub(self):
        self.broker.subscribe("user:u")
        self.publish(1, 2, 3)
        self.assertEqual(len(self.hub.calls), 1)  # the Subscribe only
        self.clock.advance(0)
        self.assertEqual(len(self.hub.calls), 2)
        self.assertEqual(self.receiver.delivered, [])
        self.publish(4)
        self.clock.advance(0)
        self.assertEqual(self.hub.sent()[1:], [
            (PublishBatch, [(f"m{n}", b'{"user":"u"}', b"frame %d" % n) for n in (1, 2, 3)]),
            (PublishBatch, [("m4", b'{"user":"u"}', b"frame 4")])])

    def test_no_command_overtakes_a_publish(self):
        self.publish(1)
        self.broker.subscribe("group:g")
        self.publish(2)
        self.broker.unsubscribe("group:g")
        self.publish(3)
        self.broker.command(Command("stats", {}))
        self.publish(4)
        self.broker.close()
        self.assertEqual([(c, [m[0] for m in a] if isinstance(a, list) else a)
                          for c, a in self.hub.sent()], [
            (PublishBatch, ["m1"]), (Subscribe, {"channels": ["group:g"]}),
            (PublishBatch, ["m2"]), (Unsubscribe, {"channels": ["group:g"]}),
            (PublishBatch, ["m3"]), (RunCommand, {"name": "stats", "args": {}}),
            (PublishBatch, ["m4"])])
        self.assertTrue(self.hub.lost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deliver_batch_hands_each_message_over_in_order(self):
        to = Address(group=("g",), tag=("t", "é"))
        batch = relay(pack([(["group:g"], f"m{n}", json.dumps(to.to_json()).encode(),
                             b"frame %d" % n) for n in range(3)]))
        WorkerProtocol(self.broker).deliver(batch)
        self.assertEqual(self.receiver.delivered,
                         [Message(f"m{n}", to, b"frame %d" % n) for n in range(3)])


class FakeWorker:
    def __init__(self, index: int):
        self.index = index
        self.amp = FakeAmp()
        self.ready = True


class HubBatchTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.pool = Pool(settings(ttl=0), None, 3, None, clock=self.clock)
        for index in range(3):
            self.pool.workers[index] = FakeWorker(index)
            self.pool.live.add(self.pool.workers[index])
        self.pool.keeper.table.subscribe(self.pool.workers[0], ["all"])
        self.pool.keeper.table.subscribe(self.pool.workers[1], ["all", "user:u1"])
        self.pool.keeper.table.subscribe(self.pool.workers[2], ["all", "user:u2"])

    def received(self, index: int):
        return self.pool.workers[index].amp.sent()

    def test_one_deliver_batch_per_worker_and_turn(self):
        batch = pack([(["user:u1"], "a", b"A", b"fa"), (["all"], "b", b"B", b"fb"),
                      (["user:u2", "user:u1"], "c", b"C", b"fc"), (["user:u0"], "d", b"D", b"fd")])
        self.pool.hub.forward(self.pool.workers[0], batch)
        self.pool.hub.forward(self.pool.workers[1], pack([(["all"], "e", b"E", b"fe")]))
        self.assertEqual([self.received(i) for i in range(3)], [[], [], []])
        self.clock.advance(0)
        self.assertEqual(self.received(0), [(DeliverBatch, [("b", b"B", b"fb"),
                                                            ("e", b"E", b"fe")])])
        self.assertEqual(self.received(1), [(DeliverBatch, [
            ("a", b"A", b"fa"), ("b", b"B", b"fb"), ("c", b"C", b"fc"), ("e", b"E", b"fe")])])
        self.assertEqual(self.received(2), [(DeliverBatch, [
            ("b", b"B", b"fb"), ("c", b"C", b"fc"), ("e", b"E", b"fe")])])

    def test_the_hub_numbers_and_keeps_what_it_forwards(self):
        self.pool.keeper.history = History(60, 100, 1 << 20, epoch="E")
        frames = [message_frame(f"m{n}", Address(user=("u1",)), n) for n in range(3)]
        self.pool.hub.forward(self.pool.workers[0], pack([(["user:u1"], f"m{n}", b"{}", frame)
                                                      for n, frame in enumerate(frames)]))
        self.pool.hub.forward(self.pool.workers[0], pack([(["worker:n.0"], "s", b"{}", b"fs")]))
        self.clock.advance(0)
        [(_, delivered)] = self.received(1)
        self.assertEqual([(i, json.loads(f)["pos"]) for i, _, f in delivered],
                         [("m0", 1), ("m1", 2), ("m2", 3)])
        self.assertEqual(self.received(0), [])  # worker 0 holds no user:u1
        answer = self.pool.hub.replay(["user:u1"], 1, "E")
        self.assertEqual(answer["gaps"], [])
        self.assertEqual([(i, json.loads(f)["data"]) for i, _, f
                          in unpack_messages(answer["messages"])], [("m1", 1), ("m2", 2)])

    def test_a_command_does_not_overtake_queued_messages(self):
        self.pool.hub.forward(self.pool.workers[0], pack([(["user:u1"], "a", b"A", b"fa")]))
        self.pool.run_command("stats", {})
        self.assertEqual([command for command, _ in self.received(1)], [DeliverBatch, Perform])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_worker_that_ended_meanwhile_gets_nothing(self):
        self.pool.hub.forward(self.pool.workers[0], pack([(["all"], "a", b"A", b"fa")]))
        gone = self.pool.workers[1]
        self.pool.live.discard(gone)  # it ended
        self.pool.workers[1] = FakeWorker(1)  # its replacement
        self.clock.advance(0)
        self.assertEqual((gone.amp.calls, self.received(1)), ([], []))
        self.assertEqual(self.received(2), [(DeliverBatch, [("a", b"A", b"fa")])])


class PoolBatchTests(PoolTestCase):
    @run
    async def test_api_batch_crosses_workers_in_order(self):
        await self.start_pool(2)
        clients, by_worker = await self.spread_clients(10, groups=("g",))
        self.assertEqual(len(by_worker), 2)
        for i, c in enumerate(clients):
            await c.request("auth", user=f"u{i}")
        pushes = [{"to": {"group": "g"} if n % 3 == 0 else {"user": f"u{n % 10}"}, "data": n}
                  for n in range(60)]
        status, body = await self.http("POST", "/api/batch", {"messages": pushes})
        self.assertEqual(status, 202, body)
        self.assertEqual(await self.http("POST", "/api/destroy", {"group": "g"}),
                         (200, {"sessions": 10}))
        await eventually(lambda: all(c.frames[-1]["op"] == "left" for c in clients))
        for i, c in enumerate(clients):
            expected = [n for n in range(60) if n % 3 == 0 or n % 10 == i]
            self.assertEqual([m["data"] for m in c.messages], expected, c.session)
            self.assertEqual([m["id"] for m in c.messages],
                             [body["ids"][n] for n in expected])


class ReplacementTests(unittest.TestCase):
    """The slot bookkeeping of a rolling restart, with the pool's clock."""

    def setUp(self):
        self.clock = Clock()
        self.pool = Pool(settings(workers=1), None, 1, None, clock=self.clock)
        self.old = self.worker()
        self.clock.advance(100)
        self.new = self.worker()
        self.new.replacing = self.old
        self.reason = Failure(ProcessTerminated(exitCode=1))

    def worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.pool, 0)
        self.pool.workers[0] = worker
        self.pool.live.add(worker)
        return worker

    def test_a_replacement_that_fails_to_start_gives_the_slot_back(self):
        self.pool.worker_ended(self.new, self.reason)
        self.assertIs(self.pool.workers[0], self.old)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_replacement_that_dies_while_the_old_one_retires_is_restarted(self):
        self.old.retiring = True
        self.pool.worker_ended(self.new, self.reason)
        self.assertNotIn(0, self.pool.workers)
        [respawn] = self.clock.getDelayedCalls()
        self.pool.worker_ended(self.old, self.reason)
        self.assertEqual(respawn.func, self.pool._respawn)
