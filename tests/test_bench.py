"""The load tool: its pure parts (frame and HTTP parsing, statistics, the
report), and one tiny connect workload against a real server.

No other load runs here: ``make bench`` runs the benchmark itself.
"""

import io
import json

from twisted.trial import unittest

from pushsvc.bench.cli import loopback
from pushsvc.bench.crossnode import parse_counts, ratios
from pushsvc.bench.profile import summarize
from pushsvc.bench.report import (BROADCAST, HANDSHAKE, MEMORY, NONE, P99, Figure, Result,
                                  bottleneck, format_table)
from pushsvc.bench.server import ChildServer
from pushsvc.bench.stats import cpu_used, parse_machine, parse_rss, parse_stat, percentile
from pushsvc.bench.wire import (OP_CLOSE, OP_PING, PUSHER_PREFIX, WS_ACCEPT, FrameError,
                                FrameReader, ResponseReader, Tally, check_handshake,
                                client_frame, http_request, parse_push_data, push_data,
                                server_frame)
from pushsvc.bench.workloads import Bench, Options, Progress
from pushsvc.frames import message_frame
from pushsvc.protocol import encode, parse_address

SENT = 1732500000.25


def msg(seq: int, to=None, sent: float = SENT, data=None) -> bytes:
    """A msg frame exactly as the server encodes and frames it."""
    address = parse_address(to or {"group": "b10000"}, 100)
    body = push_data(seq, sent) if data is None else data
    return server_frame(message_frame(f"n.0.inc.{seq:x}", address, body))


class PushDataTests(unittest.TestCase):
    def test_round_trip(self):
        data = push_data(42, SENT)
        self.assertEqual(data, "000000042 1732500000.250000")
        self.assertEqual(parse_push_data(data), (42, SENT))

    def test_not_ours(self):
        for value in (None, 42, "hello", "000000042_1732500000.250000",
                      "00000004x 1732500000.250000", ["000000042 1732500000.250000"]):
            self.assertIsNone(parse_push_data(value), value)


class FrameReaderTests(unittest.TestCase):
    def reader(self, seq0=100, span=5, sample=False):
        tally = Tally(seq0, span, slots=1)
        return tally, FrameReader(tally, base=0, span=span, sample=sample)

    def test_counts_messages_from_the_real_encoder(self):
        """Every address kind: the fast path finds the sequence number."""
        tally, reader = self.reader()
        stream = b"".join(msg(100 + k, to) for k, to in enumerate([
            {"group": "g"}, {"user": ["a", "b"]}, {"session": "n.0.x.1"}, {"all": True},
            {"tag": "t", "group": "x"}]))
        self.assertEqual(reader.feed(stream, SENT + 1), [])
        self.assertEqual((tally.received, tally.unique, tally.dupes, tally.stray),
                         (5, 5, 0, 0))
        self.assertEqual(bytes(tally.seen), b"\1" * 5)
        self.assertEqual(tally.last, SENT + 1)

    def test_duplicates_and_strays(self):
        tally, reader = self.reader()
        reader.feed(msg(100) + msg(101) + msg(100) + msg(99) + msg(105)
                    + msg(102, data="not ours"), SENT)
        self.assertEqual((tally.received, tally.unique, tally.dupes, tally.stray),
                         (6, 2, 1, 3))

    def test_a_client_that_expects_nothing(self):
        tally = Tally(100, 5, slots=2)
        reader = FrameReader(tally, base=5, span=0)
        reader.feed(msg(100), SENT)
        self.assertEqual((tally.received, tally.stray), (1, 1))

    def test_second_client_slot(self):
        tally = Tally(100, 5, slots=2)
        FrameReader(tally, base=5, span=5).feed(msg(102), SENT)
        self.assertEqual(bytes(tally.seen), b"\0" * 7 + b"\1" + b"\0" * 2)

    def test_split_anywhere(self):
        """Frames cut at every byte boundary parse the same."""
        stream = msg(100) + server_frame(b'{"op":"ok","ref":1}') + msg(101)
        for cut in range(len(stream) + 1):
            tally, reader = self.reader()
            other = reader.feed(stream[:cut], SENT) + reader.feed(stream[cut:], SENT)
            self.assertEqual(other, [(0x81, b'{"op":"ok","ref":1}')], cut)
            self.assertEqual((tally.received, tally.unique), (2, 2), cut)
            self.assertEqual(reader.buf, b"")

    def test_long_lengths(self):
        medium = b'{"op":"pong","pad":"' + b"x" * 300 + b'"}'
        large = b'{"op":"pong","pad":"' + b"y" * 70000 + b'"}'
        tally, reader = self.reader()
        other = reader.feed(server_frame(medium) + msg(100) + server_frame(large), SENT)
        self.assertEqual(other, [(0x81, medium), (0x81, large)])
        self.assertEqual(tally.unique, 1)

    def test_control_frames_are_returned(self):
        tally, reader = self.reader()
        close = server_frame((1013).to_bytes(2, "big") + b"too slow", OP_CLOSE)
        other = reader.feed(server_frame(b"hb", OP_PING) + close, SENT)
        self.assertEqual(other, [(0x89, b"hb"), (0x88, b"\x03\xf5too slow")])

    def test_masked_frame_is_an_error(self):
        _, reader = self.reader()
        self.assertRaises(FrameError, reader.feed, client_frame(b"{}"), SENT)

    def test_sampled_latency(self):
        tally, reader = self.reader(sample=True)
        reader.feed(msg(100, sent=SENT) + msg(101, sent=SENT + 0.5) + msg(100), SENT + 1)
        self.assertEqual(tally.latencies, [1.0, 0.5])
        self.assertEqual((tally.received, tally.unique, tally.dupes), (3, 2, 1))

    def test_sampled_checks_the_fast_path(self):
        """A msg whose data is ours but not last in the frame breaks the fast path."""
        tally, reader = self.reader(sample=True)
        frame = server_frame(encode({"op": "msg", "id": "x", "to": {"group": "g"},
                                     "data": push_data(100, SENT), "from": {"user": "u"}}))
        self.assertRaises(FrameError, reader.feed, frame, SENT)


    def test_pusher_frames_from_the_real_translation(self):
        """--protocol pusher: the Pusher frame of a push, as the server makes
        it, is counted by the same fast path (and checked by a sample)."""
        from pushsvc.pusher.dialect import pusher_frame
        for sample in (False, True):
            tally = Tally(100, 2, slots=1)
            reader = FrameReader(tally, base=0, span=2, sample=sample, prefix=PUSHER_PREFIX)
            native = json.loads(message_frame("m", parse_address({"group": "g"}, 1),
                                              push_data(101, SENT)))
            stream = server_frame(pusher_frame(native, "b400")) + msg(100)
            self.assertEqual(reader.feed(stream, SENT + 1)[0][1][:12], b'{"op":"msg",')
            self.assertEqual((tally.received, tally.unique), (1, 1))


class HandshakeTests(unittest.TestCase):
    def test_accept(self):
        check_handshake(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Sec-WebSocket-Accept: " + WS_ACCEPT + b"\r\n\r\n")

    def test_refused(self):
        for head in (b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
                     b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n"):
            self.assertRaises(FrameError, check_handshake, head)

    def test_client_frames_are_masked_with_zero(self):
        self.assertEqual(client_frame(b"hi"), b"\x81\x82\0\0\0\0hi")
        self.assertEqual(client_frame(b"x" * 200)[:4], b"\x81\xfe\x00\xc8")
        self.assertEqual(client_frame(b"x" * 70000)[:10],
                         b"\x81\xff" + (70000).to_bytes(8, "big"))


class HttpTests(unittest.TestCase):
    def test_request(self):
        self.assertEqual(
            http_request("POST", "/api/push", "h:1", b"{}", api_key="k"),
            b"POST /api/push HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer k\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(http_request("GET", "/healthz", "h:1"),
                         b"GET /healthz HTTP/1.1\r\nHost: h:1\r\n\r\n")

    def test_pipelined_responses_in_pieces(self):
        stream = (b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"b\r\n{\"id\":\"x\"}\n\r\n3\r\nabc\r\n0\r\n\r\n"
                  b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 4\r\n\r\nbig\n"
                  b"HTTP/1.1 204 No Content\r\n\r\n")
        expected = [(202, b'{"id":"x"}\nabc'), (413, b"big\n"), (204, b"")]
        for size in (1, 7, len(stream)):
            reader = ResponseReader()
            got = []
            for at in range(0, len(stream), size):
                got += reader.feed(stream[at:at + size])
            self.assertEqual(got, expected, size)


class StatsTests(unittest.TestCase):
    def test_percentile(self):
        values = [float(v) for v in range(1, 101)]
        self.assertEqual([percentile(values, p) for p in (0, 50, 99, 100)],
                         [1.0, 50.0, 99.0, 100.0])
        self.assertEqual(percentile([7.0], 99), 7.0)
        self.assertIsNone(percentile([], 50))

    def test_parse_stat(self):
        line = ("4242 (twistd (w) 1) S 4200 4242 4200 0 -1 4194560 100 0 0 0 "
                "250 130 0 0 20 0 1 0 100 1000 50 0 0 0")
        ppid, seconds = parse_stat(line)
        self.assertEqual(ppid, 4200)
        self.assertAlmostEqual(seconds, 380 / __import__("os").sysconf("SC_CLK_TCK"))

    def test_parse_rss(self):
        self.assertEqual(parse_rss("Name:\tx\nVmRSS:\t  1234 kB\nVmSwap: 0 kB\n"), 1234 * 1024)
        self.assertEqual(parse_rss("Name:\tkworker\n"), 0)

    def test_cpu_used(self):
        self.assertEqual(cpu_used({1: 1.0, 2: 5.0, 3: 9.0}, {1: 4.0, 2: 5.5, 4: 2.0}),
                         [3.0, 2.0, 0.5])

    def test_parse_machine(self):
        tick = __import__("os").sysconf("SC_CLK_TCK")
        busy = parse_machine("cpu  100 1 20 5000 7 2 3 4 0 0\ncpu0 1 2 3 4\n")
        self.assertAlmostEqual(busy, 130 / tick)


class ReportTests(unittest.TestCase):
    def results(self):
        return [
            Result("connect 10,000 clients",
                   [Figure("server RSS per client", 9.54, "KB", MEMORY),
                    Figure("failed", 0, "", NONE)],
                   wall=2.0, server=[1.8, 0.1], client=[0.3, 0.2], others=0.0),
            Result("broadcast 10,000 x 200",
                   [Figure("deliveries/s", 312345.6, "/s", BROADCAST),
                    Figure("latency p99", 120.25, "ms", P99)],
                   wall=10.0, server=None, client=[1.0], others=None,
                   notes=["stopped waiting after 60 s"]),
        ]

    def test_table(self):
        table = format_table(self.results(), "header line", cores=2)
        lines = table.splitlines()
        self.assertEqual(lines[0], "header line")
        row = next(l for l in lines if "server RSS per client" in l).split()
        self.assertEqual(row[-6:], ["9.5", "KB", "<=", "8.0", "KB", "MISSED"])
        self.assertEqual(next(l for l in lines if "failed" in l).split()[-1], "met")
        self.assertIn("312,346/s  >= 300,000/s  met", table)
        self.assertIn("120.2 ms  < 100.0 ms    MISSED", table)
        cpu = next(l for l in lines if l.startswith("connect") and " s " in l).split()
        self.assertEqual(cpu[3:], ["2.0", "s", "0.95", "0.90", "0.05", "0.25", "0.15",
                                   "0.00", "server"])
        self.assertIn("n/a", next(l for l in lines if "broadcast" in l and " s " in l))
        self.assertIn("  broadcast 10,000 x 200: stopped waiting after 60 s", lines)

    def test_bottleneck(self):
        def result(server, client, others=0.0):
            return Result("w", [], wall=1.0, server=server, client=client, others=others)
        self.assertEqual(bottleneck(result([0.9, 0.1], [0.3]), 2), "server")
        self.assertEqual(bottleneck(result([0.5], [0.95]), 2), "client")
        self.assertEqual(bottleneck(result([0.7, 0.7], [0.5]), 2), "all cores")
        self.assertEqual(bottleneck(result([0.5], [0.2], others=0.5), 2), "others busy!")
        self.assertEqual(bottleneck(result([0.5], [0.5], others=0.9), 2),
                         "all cores, others busy!")
        self.assertEqual(bottleneck(result([0.2], [0.2]), 2), "-")


class ProfileTests(unittest.TestCase):
    def test_summary(self):
        profile = summarize([
            'process 10:"twistd -n pushsvc";run (twisted/internet/base.py:1)'
            ';doWrite (twisted/internet/tcp.py:241) 6\n',
            'process 10:"twistd -n pushsvc";run (twisted/internet/base.py:1)'
            ';deliver (pushsvc/engine.py:200);dumps (json/__init__.py:231) 3\n',
            'process 10:"twistd -n pushsvc";process 11:"python -m pushsvc.pool.worker"'
            ';run (twisted/internet/base.py:2) 1\n',
        ])
        self.assertEqual(profile.samples, 10)
        self.assertEqual(profile.own.most_common(1),
                         [("doWrite (twisted/internet/tcp.py)", 6)])
        self.assertEqual(profile.total["run (twisted/internet/base.py)"], 10)
        self.assertEqual(profile.by_package, {"twisted": 7, "json": 3})
        self.assertEqual(profile.by_process, {'process 10:"twistd -n pushsvc"': 9,
                                              'process 11:"python -m pushsvc.pool.worker"': 1})
        self.assertIn(" 60.0%  doWrite (twisted/internet/tcp.py)", profile.format())


class CliTests(unittest.TestCase):
    def test_loopback_only(self):
        self.assertEqual(loopback("ws://127.0.0.1:8080/ws"), ("127.0.0.1", 8080))
        self.assertEqual(loopback("localhost:9000"), ("127.0.0.1", 9000))
        self.assertEqual(loopback("http://127.0.0.2:81"), ("127.0.0.2", 81))
        for url in ("ws://10.0.0.1:8080/ws", "ws://example.com/ws", "ws://[::1]:80/ws"):
            self.assertRaises(SystemExit, loopback, url)


class CrossNodeTests(unittest.TestCase):
    """``--cross-node``: its shard counts and the ratios it prints (the runs
    start Redis and two nodes: ``make bench`` runs them)."""

    def test_counts_and_ratios(self):
        self.assertEqual(parse_counts("1,3"), [1, 3])
        for bad in ("", "0,3", "a", "1,17"):
            with self.assertRaises(ValueError):
                parse_counts(bad)
        self.assertEqual(ratios({1: [100.0, 10.0], 3: [150.0, None]}, [1, 3]),
                         ["cross-node deliveries/s, 3 shards over 1: broadcast 1.50, "
                          "unicast -"])
        self.assertEqual(ratios({1: [100.0, 10.0]}, [1, 3]), [])


class ConnectRunTests(unittest.TestCase):
    """The connect workload, 40 clients, against ``twistd pushsvc --workers 0``
    started as the bench starts it: the figures of the table are all there
    and agree with each other."""

    def test_handshake_figures(self):
        server = ChildServer("0", [], self.mktemp())
        bench = None
        try:
            server.wait_healthy(30)
            bench = Bench(server, Options(clients=40, small_group=1, timeout=20),
                          Progress(io.StringIO()))
            result = bench.connect()
        finally:
            if bench:
                bench.close()
            server.stop()
        figures = {f.name: f for f in result.figures}
        self.assertEqual(list(figures), [
            "connects/s", "handshake p50", "handshake p99", "handshake max",
            "server CPU per connect", "server RSS per client", "failed"])
        self.assertEqual(figures["failed"].value, 0)
        p50, p99, peak = (figures[f"handshake {p}"].value for p in ("p50", "p99", "max"))
        self.assertTrue(0 < p50 <= p99 <= peak < 20_000, (p50, p99, peak))
        self.assertEqual((figures["handshake p99"].unit, figures["handshake p99"].target),
                         ("ms", HANDSHAKE))
        self.assertGreater(figures["connects/s"].value, 0)
        # Some CPU, and less than the whole run's wall time on every core.
        cpu = figures["server CPU per connect"].value
        self.assertTrue(0 <= cpu < result.wall * 2 * 1e6 / 40, cpu)
        table = format_table([result], "header", cores=2)
        self.assertRegex(table, r"handshake p99 +[0-9.,]+ ms +< 100.0 ms")
        self.assertRegex(table, r"server CPU per connect +[0-9.,]+ µs")
