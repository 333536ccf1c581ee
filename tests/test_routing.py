"""Routing: address -> channels, address -> local recipients, client send policy."""

from twisted.trial import unittest

from pushsvc.protocol import FORBIDDEN, Address, ProtocolError
from pushsvc.namespaces import Namespaces
from pushsvc.routing import channels, recipients
from pushsvc.sessions import Session, SessionRegistry


class ChannelsTests(unittest.TestCase):
    def test_each_kind(self):
        self.assertEqual(channels(Address(user=("u1", "u2"))), {"user:u1", "user:u2"})
        self.assertEqual(channels(Address(group=("g",))), {"group:g"})
        self.assertEqual(channels(Address(tag=("t",))), {"tag:t"})
        self.assertEqual(channels(Address(all=True)), {"all"})

    def test_sessions_map_to_their_worker(self):
        self.assertEqual(
            channels(Address(session=("n1.0.abc.1", "n1.0.def.9", "n2.3.abc.1"))),
            {"worker:n1.0", "worker:n2.3"})

    def test_malformed_session_ids_ignored(self):
        self.assertEqual(channels(Address(session=("nodots", "a.b.c", "a..c.d",
                                                   "a.b.c.d.e"))), set())
        self.assertEqual(channels(Address(session=("bad", "n.1.x.2"), group=("g",))),
                         {"worker:n.1", "group:g"})

    def test_combination(self):
        self.assertEqual(
            channels(Address(session=("n.0.i.1",), user=("u",), group=("g",), tag=("t",))),
            {"worker:n.0", "user:u", "group:g", "tag:t"})

    def test_all_covers_everything(self):
        self.assertEqual(channels(Address(user=("u",), group=("g",), all=True)), {"all"})


class RecipientsTests(unittest.TestCase):
    def setUp(self):
        self.registry = SessionRegistry()
        self.s = {}
        for sid, user, groups, tags in (("a", "alice", ("g1",), ("vip",)),
                                        ("b", "alice", ("g2",), ()),
                                        ("c", "bob", ("g1", "g2"), ("vip",)),
                                        ("d", None, (), ())):
            session = self.s[sid] = Session(sid)
            self.registry.add(session)
            if user:
                self.registry.set_user(session, user)
            for g in groups:
                self.registry.join(session, g)
            for t in tags:
                self.registry.tag(session, t)

    def ids(self, **address):
        found = recipients(self.registry, Address(**address))
        ids = [s.id for s in found]
        self.assertEqual(len(ids), len(set(ids)), "a session appears twice")
        return sorted(ids)

    def test_each_kind(self):
        self.assertEqual(self.ids(user=("alice",)), ["a", "b"])
        self.assertEqual(self.ids(group=("g1",)), ["a", "c"])
        self.assertEqual(self.ids(tag=("vip",)), ["a", "c"])
        self.assertEqual(self.ids(session=("d",)), ["d"])
        self.assertEqual(self.ids(all=True), ["a", "b", "c", "d"])

    def test_unknown_names_select_nobody(self):
        self.assertEqual(self.ids(user=("zoe",), group=("nope",), tag=("x",),
                                  session=("n.0.i.99",)), [])

    def test_union_each_session_once(self):
        # "a" matches by user, group, tag and session id: it is still one recipient.
        self.assertEqual(self.ids(user=("alice",), group=("g1",), tag=("vip",),
                                  session=("a",)), ["a", "b", "c"])
        self.assertEqual(self.ids(group=("g1", "g2")), ["a", "b", "c"])

    def test_all_wins(self):
        self.assertEqual(self.ids(group=("g1",), all=True), ["a", "b", "c", "d"])


def check_client_send(policy, session, address):
    """The send check of a server without namespace tables."""
    return Namespaces({}, client_send=policy).check_send(session, address) or None


class ClientSendTests(unittest.TestCase):
    """policy.client_send for groups without a [namespaces] table."""

    def setUp(self):
        self.session = Session("s")
        self.session.groups = {"g1", "g2"}

    def forbidden(self, policy, **address):
        e = self.assertRaises(ProtocolError, check_client_send, policy, self.session,
                              Address(**address))
        self.assertEqual(e.code, FORBIDDEN)
        return e.message

    def test_any_allows_everything(self):
        for address in (Address(all=True), Address(user=("u",)), Address(group=("x",)),
                        Address(session=("n.0.i.1",), tag=("t",))):
            self.assertIsNone(check_client_send("any", self.session, address))

    def test_joined_allows_joined_groups(self):
        self.assertIsNone(check_client_send("joined", self.session, Address(group=("g1",))))
        self.assertIsNone(check_client_send("joined", self.session,
                                            Address(group=("g2", "g1"))))

    def test_joined_refuses_other_groups(self):
        self.assertEqual(self.forbidden("joined", group=("g1", "x", "y")),
                         "not a member of group 'x'")
        self.assertEqual(self.forbidden("joined", group=("x",), user=("u",)),
                         "not a member of group 'x'")

    def test_joined_refuses_other_kinds(self):
        expected = "clients may only send to groups they have joined"
        self.assertEqual(self.forbidden("joined", user=("u",)), expected)
        self.assertEqual(self.forbidden("joined", tag=("t",)), expected)
        self.assertEqual(self.forbidden("joined", session=("n.0.i.1",)), expected)
        self.assertEqual(self.forbidden("joined", all=True), expected)
        self.assertEqual(self.forbidden("joined", group=("g1",), user=("u",)), expected)

    def test_none_refuses_everything(self):
        self.assertEqual(self.forbidden("none", group=("g1",)), "clients may not send messages")
        self.assertEqual(self.forbidden("none", all=True), "clients may not send messages")
