"""Every key a Lua script touches is one it declares (issue 15, point 1).

A ``RedisBroker`` on a real redis-server runs each of its scripts (publish
with history, mailbox and eviction, replay, take mail, heartbeat, members;
presence change, beat with a sweep, sync, stop) while a MONITOR connection
watches: Redis shows each script call and then every command the script
runs inside it.  ``COMMAND GETKEYS`` tells the keys
of each command; each must be among the call's KEYS, with no exception
(letting go of another channel's message included), and every key of a call
lies in the slot of the prefix's hash tag.
"""

from __future__ import annotations

import hashlib
import re

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import LineReceiver

from pushsvc.broker.interface import Command
from pushsvc.broker.redis_cluster_slots import key_slot
from pushsvc.broker.redis_presence_lua import (BEAT_SCRIPT, CHANGE_SCRIPT, STOP_SCRIPT,
                                               SYNC_SCRIPT)
from pushsvc.broker.redis_scripts import (HEARTBEAT_SCRIPT, MEMBERS_SCRIPT, PUBLISH_SCRIPT,
                                          REPLAY_SCRIPT, TAKE_MAIL_SCRIPT)
from pushsvc.frames import message_frame
from pushsvc.protocol import Address
from pushsvc.routing import channels as route
from pushsvc.wire.values import Message
from tests.helpers import eventually, run
from tests.test_redis_broker import BrokerTestCase

PREFIX = "{pushsvc:0.0}"   # a logical shard's, as in a Redis Cluster
SCRIPTS = {hashlib.sha1(script.encode()).hexdigest(): name for name, script in (
    ("publish", PUBLISH_SCRIPT), ("replay", REPLAY_SCRIPT), ("take mail", TAKE_MAIL_SCRIPT),
    ("heartbeat", HEARTBEAT_SCRIPT), ("members", MEMBERS_SCRIPT))}
PRESENCE = {hashlib.sha1(script.encode()).hexdigest(): name for name, script in (
    ("presence change", CHANGE_SCRIPT), ("presence beat", BEAT_SCRIPT),
    ("presence sync", SYNC_SCRIPT), ("presence stop", STOP_SCRIPT))}
SCRIPTS.update(PRESENCE)
INDEX = PREFIX.encode() + b"_history_index"

_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def _unquote(text: bytes) -> bytes:
    """One argument as MONITOR quotes it (``sdscatrepr``)."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i:i + 1] != b"\\":
            out += text[i:i + 1]
            i += 1
        elif text[i + 1:i + 2] == b"x":
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            out += _ESCAPES.get(text[i + 1:i + 2], text[i + 1:i + 2])
            i += 2
    return bytes(out)


class Monitor(LineReceiver):
    """A MONITOR connection: ``lines`` as (client, [arguments])."""

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 24

    def __init__(self):
        self.lines: list[tuple[bytes, list[bytes]]] = []

    def connectionMade(self):
        self.sendLine(b"MONITOR")

    def lineReceived(self, line):
        match = re.match(rb"\+[\d.]+ \[\d+ ([^\]]+)\] ", line)
        if match:
            args = [_unquote(a) for a in _ARG.findall(line[match.end():])]
            self.lines.append((match.group(1), args))


def calls(lines):
    """(script name, declared keys, its other arguments, [commands run
    inside]) per script call (a script of another module named by the start
    of its SHA1)."""
    out = []
    for client, args in lines:
        if client == b"lua":
            if out:
                out[-1][3].append(args)
        elif args and args[0].lower() in (b"eval", b"evalsha"):
            script = args[1] if args[0].lower() == b"evalsha" else hashlib.sha1(
                args[1]).hexdigest().encode()
            count = int(args[2])
            name = SCRIPTS.get(script.decode(), f"script {script.decode()[:8]}")
            out.append((name, set(args[3:3 + count]), set(args[3 + count:]), []))
    return out


def big(msg_id: str, size: int = 0, **to):
    """A message to ``to`` whose data has ``size`` bytes."""
    address = Address(**{k: tuple(v) if isinstance(v, list) else v for k, v in to.items()})
    return route(address), Message(msg_id, address,
                                   message_frame(msg_id, address, "x" * size))


class ScriptKeysTests(BrokerTestCase):

    @run
    async def test_every_key_a_script_touches_is_declared(self):
        redis = await self.start_redis()
        monitor = Monitor()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", redis.port), monitor)
        a, _ = await self.broker("a", redis_prefix=PREFIX, max_per_channel=2,
                                 max_memory=64 * 1024, ttl=0.5)
        b, eb = await self.broker("b", redis_prefix=PREFIX)
        await self.subscribe(b, "group:g0")
        for n in range(3):   # a channel over max_per_channel, a message on two
            a.publish(*big(f"a.0.x.L{n}", group=["g0", "g1"] if n else ["g0"]))
        for n in range(4):   # over max_memory, one call each: another channel's oldest goes
            a.publish(*big(f"a.0.x.B{n}", 20000, group=[f"g{n + 2}"]))
            await deferLater(reactor, 0, lambda: None)  # the end of the turn: a call
        a.publish(*big("a.0.x.S", user=["away", "gone"]), store=True)
        await eventually(lambda: "a.0.x.L2" in eb.delivered, 5, "published")
        replayed = await b.replay(["group:g0", "group:g3"], 0, b.epoch)
        self.assertIn("a.0.x.L2", [msg_id for msg_id, _ in replayed[0]])
        self.assertEqual([msg_id for msg_id, _ in await b.mail("away")], ["a.0.x.S"])
        await a.command(Command("stats", {}))
        await eventually(lambda: len(a.members) == 2, 5, "a heartbeat")
        deadline = reactor.seconds() + 5
        while (await b.replay(["group:g0"], 0, b.epoch))[0]:  # until let go of by time
            self.assertLess(reactor.seconds(), deadline, "nothing was let go of by time")
            await deferLater(reactor, 0.05, lambda: None)
        a.publish(*big("a.0.x.LATE", group=["g9"]))
        await eventually(lambda: any(b"a.0.x.LATE" in arg for _, args in monitor.lines
                                     for arg in args), 5, "the last call")
        redis.call("ECHO", "end")  # MONITOR shows it after every command before it
        await eventually(lambda: monitor.lines[-1] == (monitor.lines[-1][0], [b"ECHO", b"end"])
                         or any(args == [b"ECHO", b"end"] for _, args in monitor.lines), 5)
        seen = await self.check(redis, monitor)
        self.assertLessEqual(set(SCRIPTS.values()) - set(PRESENCE.values()), set(seen))
        # a call let go of a message of a channel it was not handed (the test
        # covers that path): its listing left the index
        self.assertTrue(any(
            args[:2] == [b"ZREM", INDEX] and args[2].split(b"\xff")[0] not in argv
            for name, _, argv, commands in calls(monitor.lines) if name == "publish"
            for args in commands), "no other channel's message was let go of")

    @run
    async def test_every_key_a_presence_script_touches_is_declared(self):
        """Joins and leaves, a dead engine's entries swept by another's
        heartbeat, a sync, a stop."""
        redis = await self.start_redis()
        monitor = Monitor()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", redis.port), monitor)
        (a, _), (b, _) = await self.broker("a", redis_prefix=PREFIX), await self.broker(
            "b", redis_prefix=PREFIX)
        swept = []
        a.on_member = lambda *change: swept.append(change)
        self.assertTrue(await a.member("g", "u", "1.1", True))
        self.assertTrue(await b.member("h", "v", "2.1", True))
        self.assertFalse(await b.member("g", "u", "2.2", True))
        self.assertFalse(await a.member("g", "u", "1.1", False))
        b._members.stop()  # b is silent: a's heartbeat sweeps it
        await eventually(lambda: swept, 5, "the sweep")
        self.assertEqual(sorted(swept), [("g", "u", None, False), ("h", "v", None, False)])
        a._presence._dirty = True  # the next heartbeat syncs
        await eventually(lambda: any(name == "presence sync"
                                     for name, *_ in calls(monitor.lines)), 5, "a sync")
        a._presence.stop()
        redis.call("ECHO", "end")
        await eventually(lambda: any(args == [b"ECHO", b"end"] for _, args in monitor.lines), 5)
        self.assertLessEqual(set(PRESENCE.values()), set(await self.check(redis, monitor)))

    @run
    async def test_an_undeclared_key_fails_the_check(self):
        redis = await self.start_redis()
        monitor = Monitor()
        key = PREFIX.encode() + b"_history"
        monitor.lines = [(b"127.0.0.1:1", [b"EVAL", b"return 0", b"1", key, b"x"]),
                         (b"lua", [b"HGET", key, b"pos"]),
                         (b"lua", [b"GET", PREFIX.encode() + b"_hl:group:x"])]
        with self.assertRaises(self.failureException):
            await self.check(redis, monitor)
        monitor.lines.pop()
        self.assertEqual(await self.check(redis, monitor), {"script 06d3d9b2": 1})

    async def check(self, redis, monitor) -> dict[str, int]:
        """Each call's keys against its declared ones; the calls seen, by script."""
        slot = key_slot(PREFIX.encode())
        keys_of: dict[tuple, list[bytes]] = {}
        seen: dict[str, int] = {}
        for name, declared, _, commands in calls(monitor.lines):
            seen[name] = seen.get(name, 0) + 1
            for key in declared:
                self.assertEqual(key_slot(key), slot, key)
            for args in commands:
                if tuple(args) not in keys_of:
                    try:
                        keys_of[tuple(args)] = redis.call("COMMAND", "GETKEYS", *args)
                    except RuntimeError:  # TIME, PUBLISH, PUBSUB: no keys
                        keys_of[tuple(args)] = []
                for key in keys_of[tuple(args)]:
                    self.assertEqual(key_slot(key), slot, (name, args))
                    self.assertIn(key, declared, f"{name} touched {key!r} undeclared: {args}")
        return seen
