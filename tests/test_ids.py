"""Session and message ids: unique across a process and across restarts."""

from twisted.trial import unittest

from pushsvc.ids import IdMaker, base36, new_incarnation, owner


class Base36Tests(unittest.TestCase):
    def test_values(self):
        self.assertEqual([base36(n) for n in (0, 1, 9, 10, 35, 36, 1295, 1296)],
                         ["0", "1", "9", "a", "z", "10", "zz", "100"])

    def test_round_trip(self):
        for n in list(range(2000)) + [36 ** 12 - 1, 36 ** 12, 2 ** 64]:
            self.assertEqual(int(base36(n), 36), n)


class OwnerTests(unittest.TestCase):
    def test_owner(self):
        self.assertEqual(owner("web-1.3.kx9a0001.2s"), "web-1.3")

    def test_malformed(self):
        for bad in ("", "x", "a.b", "a.b.c", "a.b.c.d.e", ".b.c.d", "a..c.d", "a.b.c.",
                    "...", "a.b..d"):
            self.assertIsNone(owner(bad), bad)


class IdMakerTests(unittest.TestCase):
    def test_shape(self):
        ids = IdMaker("n1", 4, incarnation="inc")
        self.assertEqual([ids.session_id() for _ in range(3)],
                         ["n1.4.inc.1", "n1.4.inc.2", "n1.4.inc.3"])
        self.assertEqual([ids.message_id() for _ in range(2)], ["n1.4.inc.M1", "n1.4.inc.M2"])
        self.assertEqual(ids.owner, "n1.4")

    def test_message_ids_are_never_session_ids(self):
        ids = IdMaker("n", 0)
        self.assertNotEqual(ids.session_id(), ids.message_id())  # the first of each
        sessions = [ids.session_id() for _ in range(5000)]
        messages = [ids.message_id() for _ in range(5000)]
        self.assertEqual(len(set(sessions)), 5000)
        self.assertEqual(len(set(messages)), 5000)
        self.assertEqual(set(sessions) & set(messages), set())
        self.assertEqual({owner(i) for i in sessions}, {"n.0"})

    def test_counter_past_old_limit(self):
        ids = IdMaker("n", 0, incarnation="i")
        made = {ids.session_id() for _ in range(100001)}
        self.assertEqual(len(made), 100001)
        self.assertEqual(ids.session_id(), "n.0.i." + base36(100002))

    def test_unique_within_and_across_restarts(self):
        first, second = IdMaker("n", 2), IdMaker("n", 2)  # the same worker, restarted
        made = [first.session_id() for _ in range(20000)]
        made += [second.session_id() for _ in range(20000)]
        self.assertEqual(len(set(made)), 40000)
        self.assertNotEqual(first.prefix, second.prefix)
        self.assertEqual({owner(i) for i in made}, {"n.2"})

    def test_message_ids_unique_and_owned(self):
        ids = IdMaker("n", 1)
        made = {ids.message_id() for _ in range(10000)}
        self.assertEqual(len(made), 10000)
        self.assertEqual({owner(i) for i in made}, {"n.1"})

    def test_incarnation_is_id_safe(self):
        incarnation = new_incarnation()
        self.assertRegex(incarnation, r"^[0-9a-z]{13,}$")
        self.assertEqual(owner(f"n.0.{incarnation}.1"), "n.0")
