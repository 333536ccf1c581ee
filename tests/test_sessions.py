"""SessionRegistry: the session<->user/group/tag maps and channel interest."""

from collections import Counter

from twisted.trial import unittest

from pushsvc.sessions import Session, SessionRegistry


class RegistryTests(unittest.TestCase):
    def setUp(self):
        self.calls = []
        self.registry = SessionRegistry(on_interest=lambda c, w: self.calls.append((c, w)))

    def session(self, sid="s1", user=None):
        session = Session(sid)
        self.registry.add(session)
        if user is not None:
            self.registry.set_user(session, user)
        return session

    def test_add_get_remove(self):
        s = self.session()
        self.assertEqual((len(self.registry), self.registry.get("s1")), (1, s))
        self.assertEqual(list(self.registry.everyone()), [s])
        self.assertTrue(self.registry.remove(s))
        self.assertFalse(self.registry.remove(s))
        self.assertIsNone(self.registry.get("s1"))
        self.assertTrue(self.registry.is_empty())
        self.assertEqual(self.calls, [("all", True), ("all", False)])

    def test_add_twice_refused(self):
        self.session()
        self.assertRaises(ValueError, self.registry.add, Session("s1"))

    def test_remove_other_object_with_same_id_does_nothing(self):
        s = self.session()
        self.assertFalse(self.registry.remove(Session("s1")))
        self.assertIs(self.registry.get("s1"), s)

    def test_all_channel_first_in_last_out(self):
        a, b = self.session("a"), self.session("b")
        self.registry.remove(a)
        self.assertEqual(self.calls, [("all", True)])
        self.registry.remove(b)
        self.assertEqual(self.calls, [("all", True), ("all", False)])

    def test_set_user_and_rebind(self):
        s = self.session()
        self.registry.set_user(s, "alice")
        self.assertEqual((s.user, self.registry.user_sessions("alice")), ("alice", {s}))
        self.registry.set_user(s, "bob")
        self.assertEqual(self.registry.user_sessions("alice"), set())
        self.assertEqual(self.registry.user_sessions("bob"), {s})
        self.assertEqual(self.registry.users.members, {"bob": {s}})
        self.registry.set_user(s, None)
        self.assertEqual((s.user, self.registry.users.members), (None, {}))
        self.assertEqual(self.calls, [("all", True), ("user:alice", True),
                                      ("user:alice", False), ("user:bob", True),
                                      ("user:bob", False)])

    def test_set_same_user_again(self):
        s = self.session(user="alice")
        del self.calls[:]
        self.registry.set_user(s, "alice")
        self.assertEqual(self.registry.user_sessions("alice"), {s})
        self.assertEqual(self.calls, [])

    def test_user_with_many_sessions(self):
        sessions = [self.session(f"s{i}", user="alice") for i in range(5)]
        self.assertEqual(self.registry.user_sessions("alice"), set(sessions))
        for s in sessions[:4]:
            self.registry.remove(s)
        self.assertEqual(self.registry.user_sessions("alice"), {sessions[4]})
        self.registry.remove(sessions[4])
        self.assertEqual(self.calls, [("all", True), ("user:alice", True),
                                      ("user:alice", False), ("all", False)])

    def test_join_leave_return_values(self):
        s = self.session()
        self.assertTrue(self.registry.join(s, "g"))
        self.assertFalse(self.registry.join(s, "g"))
        self.assertEqual((s.groups, self.registry.group_members("g")), ({"g"}, {s}))
        self.assertTrue(self.registry.leave(s, "g"))
        self.assertFalse(self.registry.leave(s, "g"))
        self.assertFalse(self.registry.leave(s, "never"))
        self.assertEqual((s.groups, self.registry.groups.members), (set(), {}))
        self.assertEqual(self.calls, [("all", True), ("group:g", True), ("group:g", False)])

    def test_tag_untag_return_values(self):
        s = self.session()
        self.assertTrue(self.registry.tag(s, "vip"))
        self.assertFalse(self.registry.tag(s, "vip"))
        self.assertEqual((s.tags, self.registry.tagged("vip")), ({"vip"}, {s}))
        self.assertTrue(self.registry.untag(s, "vip"))
        self.assertFalse(self.registry.untag(s, "vip"))
        self.assertEqual((s.tags, self.registry.tags.members), (set(), {}))
        self.assertEqual(self.calls, [("all", True), ("tag:vip", True), ("tag:vip", False)])

    def test_group_interest_once_per_channel(self):
        a, b = self.session("a"), self.session("b")
        self.registry.join(a, "g")
        self.registry.join(b, "g")
        self.registry.leave(a, "g")
        self.registry.join(a, "g")
        self.registry.leave(b, "g")
        self.registry.leave(a, "g")
        self.assertEqual(self.calls, [("all", True), ("group:g", True), ("group:g", False)])

    def test_same_name_different_kinds_are_different_channels(self):
        s = self.session(user="x")
        self.registry.join(s, "x")
        self.registry.tag(s, "x")
        self.registry.remove(s)
        self.assertEqual(self.calls[:4], [("all", True), ("user:x", True),
                                          ("group:x", True), ("tag:x", True)])
        self.assertEqual(sorted(self.calls[4:]),
                         [("all", False), ("group:x", False), ("tag:x", False),
                          ("user:x", False)])
        self.assertEqual(self.calls[-1], ("all", False))

    def test_remove_cleans_every_map(self):
        s = self.session("a", user="alice")
        other = self.session("b", user="alice")
        for g in ("g1", "g2"):
            self.registry.join(s, g)
        self.registry.join(other, "g1")
        self.registry.tag(s, "t")
        self.registry.remove(s)
        self.assertEqual(self.registry.sessions, {"b": other})
        self.assertEqual(self.registry.users.members, {"alice": {other}})
        self.assertEqual(self.registry.groups.members, {"g1": {other}})
        self.assertEqual(self.registry.tags.members, {})
        self.assertEqual((s.user, s.groups, s.tags), (None, set(), set()))
        self.assertFalse(self.registry.is_empty())
        self.registry.remove(other)
        self.assertTrue(self.registry.is_empty())

    def test_describe(self):
        s = self.session("a", user="u")
        self.registry.join(s, "b")
        self.registry.join(s, "a")
        self.registry.tag(s, "t")
        self.assertEqual(s.describe(), {"session": "a", "user": "u",
                                        "groups": ["a", "b"], "tags": ["t"]})

    def test_ten_thousand_sessions_leave_nothing(self):
        sessions = []
        for i in range(10000):
            s = self.session(f"s{i}", user=f"u{i % 300}")
            self.registry.join(s, f"g{i % 50}")
            self.registry.join(s, f"h{i % 7}")
            if i % 3 == 0:
                self.registry.tag(s, f"t{i % 11}")
            sessions.append(s)
        self.assertEqual((len(self.registry), len(self.registry.users.members),
                          len(self.registry.groups.members), len(self.registry.tags.members)),
                         (10000, 300, 57, 11))
        for s in sessions[::2] + sessions[1::2]:
            self.assertTrue(self.registry.remove(s))
        self.assertTrue(self.registry.is_empty())
        self.assertEqual(len(self.registry), 0)
        wanted = Counter(c for c, w in self.calls if w)
        dropped = Counter(c for c, w in self.calls if not w)
        self.assertEqual(wanted, dropped)
        self.assertEqual(len(wanted), 1 + 300 + 57 + 11)
        self.assertEqual(set(wanted.values()), {1})
        self.assertEqual((self.calls[0], self.calls[-1]), (("all", True), ("all", False)))

    def test_default_on_interest(self):
        registry = SessionRegistry()
        s = Session("s")
        registry.add(s)
        registry.join(s, "g")
        self.assertTrue(registry.remove(s))
        self.assertTrue(registry.is_empty())
