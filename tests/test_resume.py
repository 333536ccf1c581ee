"""A client that comes back gets what it missed: ``resume`` over real sockets,
with one process and with a pool of workers."""

from __future__ import annotations

from pushsvc.client import ServerError, connect
from pushsvc.ids import owner
from tests.helpers import ServerTestCase, eventually, run
from tests.test_pool import PoolTestCase

TARGETS = [{"user": "ann"}, {"group": "g1"}, {"group": "g2"}, {"all": True},
           {"group": "elsewhere"}, {"user": "bob"}]


class ResumeMixin:
    """What the resume tests share: pushes to ann's channels (and others)."""

    def welcome(self, client) -> dict:
        return next(f for f in client.frames if f["op"] == "welcome")

    async def missed(self, count: int) -> list[str]:
        """Push ``count`` messages over TARGETS in turn; the ids ann should get."""
        wanted = []
        for n in range(count):
            to = TARGETS[n % len(TARGETS)]
            msg_id = await self.push(to, n)
            if to not in ({"group": "elsewhere"}, {"user": "bob"}):
                wanted.append(msg_id)
        return wanted

    async def come_back(self, since: int, epoch: str, avoid: str | None = None):
        """ann again, in g1 and g2, resuming from ``since``, on a worker other
        than ``avoid``; (client, ok frame)."""
        c = await self.client("ann", groups=("g1", "g2"))
        while avoid is not None and owner(c.session) == avoid:
            await c.disconnect()
            c = await self.client("ann", groups=("g1", "g2"))
        ok = await c.request("resume", since=since, epoch=epoch)
        return c, ok

    async def check_round_trip(self, count: int, elsewhere: bool = False):
        first = await self.client("ann", groups=("g1", "g2"))
        epoch = self.welcome(first)["epoch"]
        seen = await self.push({"user": "ann"}, "before")
        await first.wait_for_messages(1)
        [before] = first.messages
        self.assertEqual(before["id"], seen)
        await first.disconnect()

        wanted = await self.missed(count)
        again, ok = await self.come_back(before["pos"], epoch,
                                         owner(first.session) if elsewhere else None)
        self.assertEqual(ok, {"op": "ok", "ref": ok["ref"], "replayed": len(wanted), "gaps": []})
        self.assertEqual([m["id"] for m in again.messages], wanted)
        positions = [m["pos"] for m in again.messages]
        self.assertEqual(positions, sorted(set(positions)))
        self.assertGreater(positions[0], before["pos"])

        # Live messages follow, once.
        live = await self.push({"group": "g1"}, "live")
        await again.wait_for_messages(len(wanted) + 1)
        await again.barrier()
        self.assertEqual([m["id"] for m in again.messages], wanted + [live])
        return first, again


class OneProcessResumeTests(ResumeMixin, ServerTestCase):
    @run
    async def test_a_client_back_gets_what_it_missed_in_order_once(self):
        self.start_server()
        await self.check_round_trip(60)

    @run
    async def test_gaps_past_the_history_are_told(self):
        self.start_server(max_per_channel=5)
        c = await self.client("ann", groups=("g1",))
        epoch = self.welcome(c)["epoch"]
        await c.disconnect()
        for n in range(8):
            await self.push({"group": "g1"}, n)
        await self.push({"user": "ann"}, "kept")
        again, ok = await self.come_back(0, epoch)
        self.assertEqual(ok["gaps"], ["group:g1"])
        self.assertEqual([m["data"] for m in again.messages], [3, 4, 5, 6, 7, "kept"])

        # A client of another epoch (the server restarted) gets what this
        # epoch keeps, and a gap everywhere.
        other, ok = await self.come_back(0, "another-epoch")
        self.assertEqual(([m["data"] for m in other.messages], ok["replayed"]),
                         ([3, 4, 5, 6, 7, "kept"], 6))
        self.assertEqual(ok["gaps"], ["all", "group:g1", "group:g2", "user:ann"])

    @run
    async def test_bad_resume_requests(self):
        self.start_server()
        c = await self.client("ann")
        for frame in ({"since": -1, "epoch": "e"}, {"since": "1", "epoch": "e"},
                      {"since": True, "epoch": "e"}, {"since": 1}, {"since": 1, "epoch": 5}):
            with self.assertRaises(ServerError) as e:
                await c.request("resume", **frame)
            self.assertEqual(e.exception.frame["code"], "bad_request")
        self.assertEqual((await c.request("ping"))["op"], "pong")

    @run
    async def test_no_history(self):
        self.start_server(ttl=0)
        c = await self.client("ann")
        self.assertNotIn("epoch", self.welcome(c))
        await self.push({"user": "ann"}, "x")
        [message] = await c.wait_for_messages(1)
        self.assertNotIn("pos", message)
        ok = await c.request("resume", since=0, epoch="")
        self.assertEqual((ok["replayed"], ok["gaps"]), (0, ["all", "user:ann"]))


class RestartTests(ResumeMixin, PoolTestCase):
    """A whole pool restarted: the client comes back with the old epoch."""

    @run
    async def test_what_was_pushed_after_a_restart_is_replayed(self):
        await self.start_pool(2)
        first = await self.client("ann", groups=("g1", "g2"))
        epoch = self.welcome(first)["epoch"]
        await self.push({"user": "ann"}, "before")
        await first.wait_for_messages(1)
        since = first.messages[0]["pos"]
        await first.disconnect()
        await self.master.stopService()                    # the whole server goes
        await self.start_pool(2)                            # and a new one starts
        after = [await self.push(to, n) for n, to in enumerate(TARGETS[:4])]
        again, ok = await self.come_back(since, epoch)
        self.assertNotEqual(self.welcome(again)["epoch"], epoch)
        self.assertEqual((ok["replayed"], ok["gaps"]),
                         (4, ["all", "group:g1", "group:g2", "user:ann"]))
        self.assertEqual([m["id"] for m in again.messages], after)


class PoolResumeTests(ResumeMixin, PoolTestCase):
    @run
    async def test_back_on_another_worker(self):
        await self.start_pool(2)
        first, again = await self.check_round_trip(60, elsewhere=True)
        self.assertNotEqual(owner(first.session), owner(again.session))

    @run
    async def test_live_messages_during_the_replay_come_after_it_once(self):
        await self.start_pool(2)
        c = await self.client("ann", groups=("g1",))
        epoch = self.welcome(c)["epoch"]
        await c.disconnect()
        wanted = [await self.push({"group": "g1"}, n) for n in range(30)]
        again = await self.client("ann", groups=("g1",))
        resumed = again.request("resume", since=0, epoch=epoch)
        live = [await self.push({"group": "g1"}, f"live {n}") for n in range(10)]
        ok = await resumed
        await eventually(lambda: len(again.messages) >= 40)
        await again.barrier()
        self.assertGreaterEqual(ok["replayed"], 30)
        self.assertEqual([m["id"] for m in again.messages], wanted + live)


class MailboxMixin:
    @run
    async def test_stored_pushes_wait_for_an_offline_user(self):
        await self.start()
        online = await self.client("bob")
        stored = [(await self.http("POST", "/api/push", {
            "to": {"user": ["ann", "bob"]}, "data": n, "store": True}))[1]["id"]
            for n in range(3)]
        plain = await self.push({"user": "ann"}, "not stored")
        await online.wait_for_messages(3)
        ann = await self.client("ann")
        self.assertEqual([m["id"] for m in ann.messages], stored)  # before the auth's ok
        self.assertNotIn(plain, [m["id"] for m in ann.messages])
        again = await self.client("ann")
        self.assertEqual(again.messages, [])  # taken by the first
        # bob was online: nothing kept for him.
        bob = await self.client("bob")
        self.assertEqual(bob.messages, [])
        # A resume after the mailbox does not give them twice.
        ok = await ann.request("resume", since=0, epoch=self.welcome(ann)["epoch"])
        await ann.barrier()
        self.assertEqual([m["id"] for m in ann.messages], stored + [plain])
        self.assertEqual(ok["replayed"], 1)

    @run
    async def test_store_must_be_a_boolean(self):
        await self.start()
        status, body = await self.http("POST", "/api/push",
                                       {"to": {"user": "ann"}, "data": 1, "store": "yes"})
        self.assertEqual((status, body["error"]["code"]), (400, "bad_request"))


class OneProcessMailboxTests(MailboxMixin, ResumeMixin, ServerTestCase):
    async def start(self):
        self.start_server()


class PoolMailboxTests(MailboxMixin, ResumeMixin, PoolTestCase):
    async def start(self):
        await self.start_pool(2)


class HeldFromTheStartTests(ResumeMixin, ServerTestCase):
    @run
    async def test_live_messages_wait_for_the_resume_of_a_client_that_said_so(self):
        self.start_server()
        first = await self.client("ann", groups=("g1",))
        epoch = self.welcome(first)["epoch"]
        await first.disconnect()
        missed = [await self.push({"group": "g1"}, n) for n in range(3)]
        again = await connect(self.url + "?resume=1")
        self.addCleanup(self._close_client, again)
        await again.request("auth", user="ann")
        await again.request("join", group="g1")
        live = await self.push({"group": "g1"}, "live")  # before the resume
        await again.barrier()
        self.assertEqual(again.messages, [])
        ok = await again.request("resume", since=0, epoch=epoch)
        await again.barrier()
        self.assertEqual([m["id"] for m in again.messages], missed + [live])
        self.assertEqual(ok["replayed"], 4)  # the live one was kept too: once, in place
