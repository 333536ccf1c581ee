"""The history of one keeper: positions, what is kept, replay and gaps."""

from __future__ import annotations

import json

from twisted.trial import unittest

from pushsvc.frames import message_frame, with_position
from pushsvc.history import OVERHEAD, History, Mailbox, kept_channels
from pushsvc.protocol import Address


def frame(n: int) -> bytes:
    return message_frame(f"m{n}", Address(group=("g",)), n)


def data(messages: list[tuple[str, bytes]]) -> list[int]:
    """The data of each replayed message, checking its id."""
    out = []
    for msg_id, raw in messages:
        parsed = json.loads(raw)
        assert parsed["id"] == msg_id
        out.append(parsed["data"])
    return out


class HistoryTests(unittest.TestCase):
    def setUp(self):
        self.history = History(ttl=60, max_messages=5, max_bytes=1 << 20, epoch="E")

    def record(self, n: int, *channels: str, now: float = 0.0) -> dict:
        return json.loads(self.history.record(kept_channels(channels or ("group:g",)),
                                              f"m{n}", frame(n), now))

    def replay(self, channels, since, epoch="E", now=0.0):
        frames, gaps = self.history.replay(channels, since, epoch, now)
        return data(frames), gaps

    def test_kept_channels(self):
        self.assertEqual(kept_channels(["user:u", "group:g", "tag:t", "all", "worker:n.0"]),
                         ("user:u", "group:g", "tag:t", "all"))

    def test_positions_count_up_across_channels_and_go_in_the_frame(self):
        first = self.record(1, "group:g")
        second = self.record(2, "user:u", "group:g")
        self.assertEqual((first["pos"], second["pos"]), (1, 2))
        self.assertEqual(list(first), ["op", "pos", "id", "to", "data"])
        self.assertEqual(first["data"], 1)

    def test_a_session_addressed_message_is_not_kept(self):
        raw = frame(1)
        self.assertIs(self.history.record(kept_channels(["worker:n.0"]), "m1", raw, 0), raw)
        self.assertEqual((len(self.history), self.history.position), (0, 0))

    def test_replay_after_since_each_once_in_order(self):
        self.record(1, "group:g")
        self.record(2, "user:u")
        self.record(3, "group:g", "user:u")
        self.record(4, "group:other")
        self.record(5, "user:u")
        self.assertEqual(self.replay(["group:g", "user:u"], 0), ([1, 2, 3, 5], []))
        self.assertEqual(self.replay(["group:g", "user:u"], 2), ([3, 5], []))
        self.assertEqual(self.replay(["user:u", "group:g"], 5), ([], []))
        self.assertEqual(self.replay(["tag:none"], 0), ([], []))

    def test_the_count_cap_makes_a_gap_for_its_channel_only(self):
        for n in range(1, 8):
            self.record(n, "group:g")
        self.record(8, "user:u")
        self.assertEqual(self.replay(["group:g", "user:u"], 1), ([3, 4, 5, 6, 7, 8], ["group:g"]))
        self.assertEqual(self.replay(["group:g"], 2), ([3, 4, 5, 6, 7], []))

    def test_the_ttl_lets_old_messages_go(self):
        self.record(1, "group:g", now=0)
        self.record(2, "group:g", now=30)
        self.assertEqual(self.replay(["group:g"], 0, now=61), ([2], ["group:g"]))
        self.assertEqual(self.replay(["group:g"], 1, now=61), ([2], []))
        self.assertEqual(self.replay(["group:g"], 1, now=91), ([], ["group:g"]))
        self.assertEqual((len(self.history), self.history.bytes), (0, 0))
        # A channel that is gone entirely: gap when since is below what went.
        self.assertEqual(self.replay(["group:g"], 2, now=91), ([], []))

    def test_a_channel_whose_list_emptied_and_began_again_reports_the_gap(self):
        self.record(1, "group:g", now=0)
        self.record(2, "group:other", now=30)
        self.record(3, "group:g", now=61)  # 1 has expired: group:g's list began again
        self.assertEqual(self.replay(["group:g"], 0, now=61), ([3], ["group:g"]))
        self.assertEqual(self.replay(["group:g"], 1, now=61), ([3], []))

    def test_the_byte_cap_drops_the_oldest(self):
        size = len(with_position(frame(1), 1)) + OVERHEAD
        history = self.history = History(60, 100, max_bytes=3 * size, epoch="E")
        for n in range(1, 6):
            self.record(n, "group:g")
        self.assertEqual(len(history), 3)
        self.assertLessEqual(history.bytes, 3 * size)
        self.assertEqual(self.replay(["group:g"], 0), ([3, 4, 5], ["group:g"]))

    def test_what_leaves_every_channel_is_let_go_at_once(self):
        """Past a channel's count cap a message no channel lists is freed
        then, not at its TTL: its bytes stop counting (issue 17)."""
        for n in range(1, 21):
            self.record(n, "group:g")                 # max_messages = 5
        kept = sum(len(with_position(frame(n), n)) + OVERHEAD for n in range(16, 21))
        self.assertEqual((len(self.history), self.history.bytes), (5, kept))
        self.assertEqual(self.replay(["group:g"], 0), ([16, 17, 18, 19, 20], ["group:g"]))
        self.record(21, "group:g", "user:u")          # listed twice: kept while one lists it
        for n in range(22, 27):
            self.record(n, "group:g")
        self.assertEqual(self.replay(["user:u"], 0)[0], [21])
        for n in range(1, 10_000):                    # the empty entries are compacted
            self.record(100 + n, "group:g")
        self.assertLess(len(self.history._entries), 300)

    def test_a_quiet_channel_survives_a_flood_of_others(self):
        """Strangers flooding their own groups push out their own messages,
        not a quiet user's (issue 17: a flood made it unrecoverable)."""
        big = message_frame("x", Address(group=("g",)), "x" * 60_000)
        self.history = History(60, 100, max_bytes=2_000_000, epoch="E")
        self.history.record(("user:quiet",), "m1", frame(1), 0.0)
        for sender in range(6):
            for n in range(195):
                self.history.record((f"group:flood{sender}",), "x", big, 1.0)
        self.assertLessEqual(self.history.bytes, 2_000_000)
        self.assertEqual(self.replay(["user:quiet"], 0, now=1.0), ([1], []))
        one = self.replay(["group:flood0"], 0, now=1.0)
        self.assertEqual(one[1], ["group:flood0"])    # the flood lost its own, and says so

    def test_a_channel_let_go_whole_for_others_reports_its_gap(self):
        """A channel whose only message went to make room has no list left,
        yet reports what it lost until the floor passes it (its record
        then goes)."""
        big = message_frame("b", Address(group=("big",)), "x" * 1000)
        self.history = History(60, 100, max_bytes=3000, epoch="E")
        self.history.record(("group:q",), "m1", frame(1), 0.0)
        self.history.record(("group:big",), "b", big, 0.0)      # position 2
        for n in range(3, 9):
            self.record(n, f"group:c{n}")                        # big goes for them
        self.assertNotIn("group:big", self.history._channels)
        self.assertEqual(self.replay(["group:big"], 1), ([], ["group:big"]))
        self.assertEqual(self.replay(["group:q"], 0), ([1], []))
        self.history.expire(61.0)                                # past the floor: forgotten
        self.assertEqual(self.history._dropped, {})
        self.assertEqual(self.replay(["group:big"], 1, now=61.0), ([], ["group:big"]))

    def test_another_epoch_or_a_future_position_is_a_gap_everywhere(self):
        """A client of another epoch (the keeper restarted) gets everything
        this epoch keeps, and a gap everywhere; a future position nothing."""
        self.record(1, "group:g")
        self.record(2, "group:other")
        for since in (0, 1, 7):
            self.assertEqual(self.replay(["group:g", "all"], since, epoch="OTHER"),
                             ([1], ["all", "group:g"]))
        self.assertEqual(self.replay(["group:g"], 9), ([], ["group:g"]))

    def test_ttl_zero_keeps_nothing(self):
        history = History(0, 100, 1 << 20)
        raw = frame(1)
        self.assertIs(history.record(("group:g",), "m1", raw, 0), raw)
        self.assertEqual(history.replay(["group:g"], 0, history.epoch, 0), ([], ["group:g"]))


class MailboxTests(unittest.TestCase):
    def setUp(self):
        self.box = Mailbox(ttl=60, max_messages=3, max_bytes=1 << 20)

    def test_take_gives_a_users_messages_once_in_order(self):
        for n in range(2):
            self.assertTrue(self.box.put("ann", f"m{n}", frame(n), now=n))
        self.box.put("bob", "b", frame(9), now=0)
        self.assertEqual(data(self.box.take("ann", now=5)), [0, 1])
        self.assertEqual((self.box.take("ann", now=5), len(self.box)), ([], 1))

    def test_per_user_cap_ttl_and_bytes(self):
        for n in range(5):
            self.box.put("ann", f"m{n}", frame(n), now=n)
        self.assertEqual(data(self.box.take("ann", now=10)), [2, 3, 4])
        self.box.put("ann", "m1", frame(1), now=0)
        self.box.put("ann", "m2", frame(2), now=30)
        self.assertEqual(data(self.box.take("ann", now=61)), [2])
        self.assertEqual(self.box.bytes, 0)
        small = Mailbox(60, 100, max_bytes=len(frame(1)) + OVERHEAD)
        self.assertEqual([small.put("ann", f"m{n}", frame(n), 0) for n in range(2)],
                         [True, False])
        self.box.put("gone", "m3", frame(3), now=0)
        self.box.expire(now=100)
        self.assertEqual((len(self.box), self.box.bytes), (0, 0))
        for n in range(5000):  # taken at once: the bookkeeping does not pile up
            self.box.put("busy", f"m{n}", frame(n), now=200)
            self.box.take("busy", now=200)
        self.assertLess(len(self.box._order), 2000)
