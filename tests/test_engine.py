"""The engine without sockets: fake connections, a LocalBroker and a Clock."""

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pushsvc.broker.interface import Message
from pushsvc.broker.local import LocalBroker
from pushsvc.commands import make_command
from pushsvc.engine import Engine, IConnection, Overloaded
from pushsvc.history import History, Mailbox
from pushsvc.keeper import Keeper
from pushsvc.ids import IdMaker
from pushsvc.limits import COUNTERS as LIMIT_COUNTERS
from pushsvc.protocol import Address, encode
from tests.helpers import settings


@implementer(IConnection)
class FakeConnection:
    """Records what the engine writes: decoded frames, prepared objects, closes, pings."""

    def __init__(self):
        self.written = []   # decoded send_frame frames and ("prepared", obj) pairs in order
        self.closed = []
        self.alive_checks = []

    def send_frame(self, frame):
        self.written.append(json.loads(frame))

    def send_prepared(self, prepared):
        self.written.append(("prepared", prepared))

    def send_now(self, prepared):
        self.written.append(("now", prepared))

    def close(self, code, reason):
        self.closed.append((code, reason))

    def check_alive(self, now):
        self.alive_checks.append(now)

    def take(self):
        """The frames written since the last take."""
        out, self.written = self.written, []
        return out


class Prepared:
    """What the fake ``prepare`` returns: a new object per call, wrapping the frame."""

    def __init__(self, frame):
        self.frame = frame


class EngineTestCase(unittest.TestCase):
    def setUp(self):
        self.start()

    def start(self, broker=None, **overrides):
        self.clock = Clock()
        self.broker = broker or LocalBroker()
        self.prepared = []
        self.engine = Engine(settings(**overrides), self.broker,
                             IdMaker("test", 0, incarnation="i"), self.clock,
                             prepare=self._prepare)
        self.engine.start()
        self.addCleanup(self.engine.stop)

    def _prepare(self, frame):
        prepared = Prepared(frame)
        self.prepared.append(prepared)
        return prepared

    def open(self, user=None, groups=()):
        session = self.engine.open(FakeConnection())
        if user is not None:
            self.engine.registry.set_user(session, user)
        for group in groups:
            self.engine.registry.join(session, group)
        return session

    def handle(self, session, frame):
        """Feed one client frame (an object, or raw text) and return what was written."""
        text = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
        self.engine.handle(session, text.encode() if isinstance(text, str) else text)
        return session.conn.take()

    def msg(self, prepared):
        """A delivered ``("prepared", obj)`` entry, decoded."""
        self.assertEqual(prepared[0], "prepared")
        return json.loads(prepared[1].frame)


class SessionLifeTests(EngineTestCase):
    def test_fake_connection_provides_interface(self):
        self.assertTrue(verifyObject(IConnection, FakeConnection()))

    def test_open_and_welcome(self):
        s = self.open()
        self.assertEqual(s.id, "test.0.i.1")
        self.assertEqual(self.open().id, "test.0.i.2")
        self.assertEqual(self.engine.welcome(s),
                         b'{"op":"welcome","session":"test.0.i.1","user":null}')
        self.assertEqual(s.conn.written, [])

    def test_start_subscribes_own_worker_channel(self):
        self.assertIs(self.broker.receiver, self.engine)
        self.assertEqual(self.broker.subscriptions, {"worker:test.0"})

    def test_close_cleans_maps_and_subscriptions(self):
        s = self.open(user="alice", groups=("g",))
        self.engine.registry.tag(s, "t")
        self.assertEqual(self.broker.subscriptions, {"worker:test.0", "all", "user:alice",
                                                     "group:g", "tag:t"})
        self.engine.close(s)
        self.assertTrue(self.engine.registry.is_empty())
        self.assertEqual(self.broker.subscriptions, {"worker:test.0"})

    def test_overloaded_past_max_connections(self):
        self.start(max_connections=2)
        first = self.open()
        self.open()
        self.assertRaises(Overloaded, self.engine.open, FakeConnection())
        self.assertEqual((len(self.engine.registry), self.engine.counters["refused_full"]),
                         (2, 1))
        self.engine.close(first)
        self.assertEqual(self.open().id, "test.0.i.3")


class ClientOpTests(EngineTestCase):
    def test_ping(self):
        s = self.open()
        self.assertEqual(self.handle(s, {"op": "ping"}), [{"op": "pong"}])
        self.assertEqual(self.handle(s, {"op": "ping", "ref": "r"}),
                         [{"op": "pong", "ref": "r"}])

    def test_auth_sends_welcome_with_user(self):
        s = self.open()
        self.assertEqual(self.handle(s, {"op": "auth", "user": "alice"}),
                         [{"op": "welcome", "session": s.id, "user": "alice"}])
        self.assertEqual((s.user, self.engine.registry.user_sessions("alice")), ("alice", {s}))
        self.assertEqual(self.handle(s, {"op": "auth", "user": "alice", "ref": 1}),
                         [{"op": "welcome", "session": s.id, "user": "alice"},
                          {"op": "ok", "ref": 1}])
        self.assertIn("user:alice", self.broker.subscriptions)

    def test_auth_token_is_unauthorized_and_closes(self):
        s = self.open()
        message = "token authentication is not configured on this server"
        self.assertEqual(self.handle(s, {"op": "auth", "token": "tok", "ref": 4}),
                         [{"op": "error", "code": "unauthorized", "message": message,
                           "ref": 4}])
        self.assertEqual(s.conn.closed, [(1008, message)])
        self.assertIsNone(s.user)

    def test_auth_as_another_user_is_forbidden(self):
        s = self.open(user="alice")
        self.assertEqual(self.handle(s, {"op": "auth", "user": "mallory", "ref": "x"}),
                         [{"op": "error", "code": "forbidden", "ref": "x",
                           "message": "this session is already bound to another user"}])
        self.assertEqual(s.conn.closed, [])
        self.assertEqual(s.user, "alice")
        self.assertEqual(self.engine.registry.user_sessions("mallory"), set())

    def test_join_and_leave(self):
        s = self.open()
        self.assertEqual(self.handle(s, {"op": "join", "group": "g"}), [])
        self.assertEqual(self.handle(s, {"op": "join", "group": "h", "ref": 2}),
                         [{"op": "ok", "ref": 2}])
        self.assertEqual(s.groups, {"g", "h"})
        self.assertEqual(self.handle(s, {"op": "leave", "group": "g", "ref": 3}),
                         [{"op": "ok", "ref": 3}])
        self.assertEqual(self.handle(s, {"op": "leave", "group": "never", "ref": 4}),
                         [{"op": "ok", "ref": 4}])
        self.assertEqual(s.groups, {"h"})
        self.assertEqual(self.broker.subscriptions, {"worker:test.0", "all", "group:h"})

    def test_too_many_groups(self):
        self.start(max_groups_per_session=2)
        s = self.open(groups=("a", "b"))
        self.assertEqual(self.handle(s, {"op": "join", "group": "c", "ref": 1}),
                         [{"op": "error", "code": "too_many_groups", "ref": 1,
                           "message": "a session may be in at most 2 groups"}])
        self.assertEqual(s.groups, {"a", "b"})
        self.assertEqual(self.handle(s, {"op": "join", "group": "a", "ref": 2}),
                         [{"op": "ok", "ref": 2}])

    def test_bad_frames_answered_and_session_keeps_working(self):
        s = self.open()
        self.assertEqual(self.handle(s, "{nope"),
                         [{"op": "error", "code": "bad_request",
                           "message": "not valid JSON"}])
        self.assertEqual(self.handle(s, "[1]"),
                         [{"op": "error", "code": "bad_request",
                           "message": "a frame must be a JSON object"}])
        self.assertEqual(self.handle(s, {"op": "fly", "ref": 9}),
                         [{"op": "error", "code": "unknown_op", "ref": 9,
                           "message": "unknown op 'fly'"}])
        self.assertEqual(self.handle(s, {"op": "join", "group": 5, "ref": "j"}),
                         [{"op": "error", "code": "bad_request", "ref": "j",
                           "message": "'group' must be a non-empty string"}])
        self.assertEqual(self.handle(s, {"op": "send", "to": {"group": []}, "data": 1,
                                         "ref": 0}),
                         [{"op": "error", "code": "bad_request", "ref": 0,
                           "message": "'to.group' is an empty list"}])
        self.assertEqual(self.handle(s, {"op": "send", "to": {"group": ["a", "b"]}, "data": 1,
                                         "ref": 0}),
                         [{"op": "error", "code": "forbidden", "ref": 0,
                           "message": "not a member of group 'a'"}])
        self.assertEqual(s.conn.closed, [])
        self.assertEqual(self.handle(s, {"op": "ping", "ref": 1}), [{"op": "pong", "ref": 1}])

    def test_too_many_targets(self):
        self.start(max_targets=2)
        s = self.open()
        self.assertEqual(self.handle(s, {"op": "send", "to": {"user": ["a", "b", "c"]},
                                         "data": 1, "ref": 5}),
                         [{"op": "error", "code": "too_large", "ref": 5,
                           "message": "'to' names 3 targets; the limit is 2"}])

    def test_send_policy_joined(self):
        s = self.open(user="alice", groups=("g",))
        self.assertEqual(self.handle(s, {"op": "send", "to": {"user": "bob"}, "data": 1,
                                         "ref": 1}),
                         [{"op": "error", "code": "forbidden", "ref": 1,
                           "message": "clients may only send to groups they have joined"}])
        self.assertEqual(self.prepared, [])
        self.assertEqual(self.engine.counters["published"], 0)

    def test_send_policy_none(self):
        self.start(client_send="none")
        s = self.open(groups=("g",))
        self.assertEqual(self.handle(s, {"op": "send", "to": {"group": "g"}, "data": 1}),
                         [{"op": "error", "code": "forbidden",
                           "message": "clients may not send messages"}])

    def test_send_policy_any(self):
        self.start(client_send="any")
        sender, bob = self.open(), self.open(user="bob")
        written = self.handle(sender, {"op": "send", "to": {"user": "bob"}, "data": "hi",
                                       "ref": 7})
        self.assertEqual(written, [{"op": "ok", "ref": 7, "id": "test.0.i.M1"}])
        self.assertEqual([self.msg(m) for m in bob.conn.take()],
                         [{"op": "msg", "id": "test.0.i.M1", "to": {"user": "bob"},
                           "data": "hi", "from": {"session": sender.id, "user": None}}])

    def test_send_to_joined_group(self):
        alice = self.open(user="alice", groups=("g",))
        bob = self.open(user="bob", groups=("g",))
        outsider = self.open(user="carol", groups=("other",))
        written = self.handle(alice, {"op": "send", "to": {"group": "g"},
                                      "data": {"t": 1}, "ref": "s1"})
        expected = {"op": "msg", "id": "test.0.i.M1", "to": {"group": "g"}, "data": {"t": 1},
                    "from": {"session": alice.id, "user": "alice"}}
        self.assertEqual(len(written), 2)
        self.assertEqual(self.msg(written[0]), expected)
        self.assertEqual(written[1], {"op": "ok", "ref": "s1", "id": "test.0.i.M1"})
        self.assertEqual([self.msg(m) for m in bob.conn.take()], [expected])
        self.assertEqual(outsider.conn.take(), [])
        self.assertEqual(len(self.prepared), 1)
        self.assertEqual(self.engine.counters["sent_by_clients"], 1)

    def test_send_without_ref_gets_no_ok(self):
        alice = self.open(groups=("g",))
        written = self.handle(alice, {"op": "send", "to": {"group": "g"}, "data": None})
        self.assertEqual([self.msg(m)["data"] for m in written], [None])


class DeliveryTests(EngineTestCase):
    def publish(self, data="x", **address):
        d = self.engine.publish(Address(**address), data)
        return self.successResultOf(d)

    def test_each_recipient_gets_the_same_prepared_object_once(self):
        both = self.open(user="alice", groups=("g",))
        self.engine.registry.tag(both, "t")
        by_group = self.open(user="bob", groups=("g",))
        by_tag = self.open()
        self.engine.registry.tag(by_tag, "t")
        nobody = self.open(user="zed", groups=("z",))
        msg_id = self.publish({"n": 1}, user=("alice",), group=("g",), tag=("t",))
        self.assertEqual(msg_id, "test.0.i.M1")
        self.assertEqual(len(self.prepared), 1)
        prepared = self.prepared[0]
        self.assertEqual(prepared.frame, encode({"op": "msg", "id": msg_id, "to": {
            "user": "alice", "group": "g", "tag": "t"}, "data": {"n": 1}}))
        for session in (both, by_group, by_tag):
            written = session.conn.take()
            self.assertEqual(len(written), 1, session)
            self.assertIs(written[0][1], prepared)
        self.assertEqual(nobody.conn.take(), [])
        self.assertEqual(self.engine.counters["delivered"], 3)

    def test_one_prepare_per_message(self):
        sessions = [self.open(groups=("g",)) for _ in range(20)]
        ids = [self.publish(i, group=("g",)) for i in range(3)]
        self.assertEqual(ids, ["test.0.i.M1", "test.0.i.M2", "test.0.i.M3"])
        self.assertEqual(len(self.prepared), 3)
        for session in sessions:
            self.assertEqual([p for _, p in session.conn.take()], self.prepared)

    def test_user_with_many_sessions(self):
        phone, laptop = self.open(user="alice"), self.open(user="alice")
        self.publish(user=("alice",))
        self.assertEqual(len(phone.conn.take()), 1)
        self.assertEqual(len(laptop.conn.take()), 1)

    def test_to_session_and_all(self):
        a, b = self.open(), self.open()
        self.publish("one", session=(b.id,))
        self.assertEqual((a.conn.take(), [self.msg(m)["data"] for m in b.conn.take()]),
                         ([], ["one"]))
        self.publish("every", all=True)
        self.assertEqual([self.msg(m)["data"] for m in a.conn.take() + b.conn.take()],
                         ["every", "every"])

    def test_nobody_subscribed_nothing_prepared(self):
        self.open(groups=("g",))
        self.assertEqual(self.publish(group=("elsewhere",)), "test.0.i.M1")
        self.assertEqual(self.prepared, [])
        self.assertEqual(self.engine.counters["published"], 1)

    def test_a_message_alone_in_its_turn_is_written_now(self):
        a = self.open(groups=("g",))
        message = Message("m", Address(group=("g",)), b"{}")
        self.engine.deliver(message)
        self.engine.deliver(message, alone=True)
        self.assertEqual([kind for kind, _ in a.conn.take()], ["prepared", "now"])

    def test_deliver_without_recipients_prepares_nothing(self):
        self.engine.deliver(Message("m", Address(session=("test.0.i.99",)), b"{}"))
        self.assertEqual(self.prepared, [])
        self.assertEqual(self.engine.counters["delivered"], 0)


class CommandTests(EngineTestCase):
    def run_command(self, name, **body):
        return self.successResultOf(self.engine.run(make_command(name, body)))

    def test_join_user(self):
        self.start(max_groups_per_session=2)
        a, b = self.open(user="alice"), self.open(user="alice", groups=("g",))
        full = self.open(user="alice", groups=("x", "y"))
        other = self.open(user="bob")
        self.assertEqual(self.run_command("join", group="g", user="alice"),
                         {"sessions": 1, "refused": 1})
        self.assertEqual(a.conn.take(), [{"op": "joined", "group": "g", "reason": "server"}])
        self.assertEqual((b.conn.take(), full.conn.take(), other.conn.take()), ([], [], []))
        self.assertEqual(self.engine.registry.group_members("g"), {a, b})

    def test_join_session_and_unknown(self):
        a, b = self.open(), self.open()
        self.assertEqual(self.run_command("join", group="g", session=b.id),
                         {"sessions": 1, "refused": 0})
        self.assertEqual((a.conn.take(), b.conn.take()),
                         ([], [{"op": "joined", "group": "g", "reason": "server"}]))
        self.assertEqual(self.run_command("join", group="g", session="test.0.i.99"),
                         {"sessions": 0, "refused": 0})
        self.assertEqual(self.run_command("join", group="g", user="nobody"),
                         {"sessions": 0, "refused": 0})

    def test_leave(self):
        a, b = self.open(user="alice", groups=("g",)), self.open(user="alice")
        self.assertEqual(self.run_command("leave", group="g", user="alice"), {"sessions": 1})
        self.assertEqual((a.conn.take(), b.conn.take()),
                         ([{"op": "left", "group": "g", "reason": "server"}], []))
        self.assertNotIn("group:g", self.broker.subscriptions)

    def test_destroy(self):
        members = [self.open(groups=("g", "h")) for _ in range(3)]
        self.assertEqual(self.run_command("destroy", group="g"), {"sessions": 3})
        for s in members:
            self.assertEqual(s.conn.take(), [{"op": "left", "group": "g", "reason": "destroyed"}])
            self.assertEqual(s.groups, {"h"})
        self.assertEqual(self.engine.registry.groups.members.keys(), {"h"})
        self.assertNotIn("group:g", self.broker.subscriptions)
        self.assertEqual(self.run_command("destroy", group="g"), {"sessions": 0})

    def test_tag_and_untag(self):
        a, b = self.open(user="alice"), self.open(user="alice")
        self.assertEqual(self.run_command("tag", tag="vip", user="alice"), {"sessions": 2})
        self.assertEqual(self.run_command("tag", tag="vip", session=a.id), {"sessions": 0})
        self.assertEqual(self.engine.registry.tagged("vip"), {a, b})
        self.assertEqual(self.run_command("untag", tag="vip", session=a.id), {"sessions": 1})
        self.assertEqual(self.engine.registry.tagged("vip"), {b})
        self.assertEqual(self.run_command("untag", tag="vip", user="alice"), {"sessions": 1})
        self.assertEqual(self.engine.registry.tags.members, {})
        self.assertEqual((a.conn.written, b.conn.written), ([], []))

    def test_group_user_groups(self):
        a = self.open(user="alice", groups=("g", "h"))
        b = self.open(groups=("g",))
        self.engine.registry.tag(a, "t")
        members = self.run_command("group", group="g")["members"]
        self.assertEqual(sorted(members, key=lambda m: m["session"]),
                         [{"session": a.id, "user": "alice"}, {"session": b.id, "user": None}])
        self.assertEqual(self.run_command("group", group="none"), {"members": []})
        self.assertEqual(self.run_command("user", user="alice"),
                         {"sessions": [{"session": a.id, "user": "alice",
                                        "groups": ["g", "h"], "tags": ["t"]}]})
        self.assertEqual(self.run_command("user", user="nobody"), {"sessions": []})
        self.assertEqual(self.run_command("groups"), {"groups": {"g": 2, "h": 1}})

    def test_stats(self):
        self.open(user="alice", groups=("g",))
        self.open(user="alice")
        self.open(user="bob")
        self.successResultOf(self.engine.publish(Address(group=("g",)), 1))
        self.assertEqual(self.run_command("stats"),
                         {"worker": "test.0", "sessions": 3, "users": 2, "groups": 1,
                          "published": 1,
                          "delivered": 1, "sent_by_clients": 0, "dropped_slow": 0,
                          "refused_full": 0, **dict.fromkeys(LIMIT_COUNTERS, 0),
                          "proxy_allow": 0, "proxy_deny": 0, "proxy_error": 0,
                          "webhook_sent": 0, "webhook_retried": 0, "webhook_dropped": 0,
                          "webhook_failed": 0})


class KeepaliveTests(EngineTestCase):
    def test_check_alive_every_interval(self):
        self.start(ping_interval=5.0, ping_timeout=10.0)
        a, b = self.open(), self.open()
        self.clock.advance(4.9)
        self.assertEqual((a.conn.alive_checks, b.conn.alive_checks), ([], []))
        self.clock.advance(0.1)
        self.assertEqual((a.conn.alive_checks, b.conn.alive_checks), ([5.0], [5.0]))
        self.engine.close(b)
        self.clock.advance(5.0)
        self.assertEqual((a.conn.alive_checks, b.conn.alive_checks), ([5.0, 10.0], [5.0]))

    def test_a_conn_closing_itself_during_the_tick(self):
        a, b = self.open(), self.open()
        a.conn.check_alive = lambda now: self.engine.close(a)
        self.clock.advance(self.engine.settings.ping_interval)
        self.assertIsNone(self.engine.registry.get(a.id))
        self.assertEqual(b.conn.alive_checks, [25.0])

    def test_stop(self):
        a = self.open()
        self.engine.stop()
        self.clock.advance(100)
        self.assertEqual(a.conn.alive_checks, [])
        self.engine.stop()



class SlowBroker(LocalBroker):
    """A broker whose subscriptions stand only when the test confirms them."""

    def __init__(self):
        super().__init__()
        self.waiting: dict[str, Deferred] = {}

    def subscribe(self, channel):
        super().subscribe(channel)
        d = self.waiting[channel] = Deferred()
        return d

    def confirm(self, channel):
        self.waiting.pop(channel).callback(None)


class SubscriptionOrderTests(EngineTestCase):
    """Replies wait until the broker routes the session's channels here."""

    def setUp(self):
        self.start(broker=SlowBroker())
        self.broker.confirm("worker:test.0")

    def test_replies_wait_for_the_workers_own_channel(self):
        self.start(broker=SlowBroker())  # a fresh engine: nothing confirmed
        s = self.engine.open(FakeConnection())
        self.broker.confirm("all")
        self.engine.handle(s, b'{"op":"ping","ref":1}')
        self.assertEqual(s.conn.take(), [])
        self.broker.confirm("worker:test.0")
        self.assertEqual(s.conn.take(), [{"op": "pong", "ref": 1}])

    def test_ok_to_auth_and_join_waits_for_the_subscription(self):
        s = self.engine.open(FakeConnection())
        self.broker.confirm("all")
        self.engine.handle(s, b'{"op":"auth","user":"alice","ref":1}')
        self.engine.handle(s, b'{"op":"ping","ref":2}')  # after, so it waits too
        self.assertEqual(s.conn.take(), [])
        self.broker.confirm("user:alice")
        self.assertEqual(s.conn.take(), [
            {"op": "welcome", "session": s.id, "user": "alice"},
            {"op": "ok", "ref": 1}, {"op": "pong", "ref": 2}])

        self.engine.handle(s, b'{"op":"join","group":"g","ref":3}')
        self.assertEqual(s.conn.take(), [])
        self.broker.confirm("group:g")
        self.assertEqual(s.conn.take(), [{"op": "ok", "ref": 3}])
        self.engine.handle(s, b'{"op":"ping","ref":4}')  # nothing pending: at once
        self.assertEqual(s.conn.take(), [{"op": "pong", "ref": 4}])

    def test_other_sessions_do_not_wait(self):
        a, b = self.engine.open(FakeConnection()), self.engine.open(FakeConnection())
        self.engine.handle(a, b'{"op":"join","group":"g","ref":1}')
        self.engine.handle(b, b'{"op":"ping","ref":1}')
        self.assertEqual((a.conn.take(), b.conn.take()), ([], []))  # both are in 'all'
        self.broker.confirm("all")
        self.assertEqual(b.conn.take(), [{"op": "pong", "ref": 1}])
        self.assertEqual(a.conn.take(), [])
        self.broker.confirm("group:g")
        self.assertEqual(a.conn.take(), [{"op": "ok", "ref": 1}])

    def test_server_side_join_answers_once_subscribed(self):
        s = self.engine.open(FakeConnection())
        self.broker.confirm("all")
        self.engine.registry.set_user(s, "bob")
        self.broker.confirm("user:bob")
        d = self.engine.perform(make_command("join", {"user": "bob", "group": "g"}))
        self.assertNoResult(d)
        self.broker.confirm("group:g")
        self.assertEqual(self.successResultOf(d), {"sessions": 1, "refused": 0})
        self.assertEqual(s.conn.take(), [{"op": "joined", "group": "g", "reason": "server"}])

    def test_refused_auth_closes_after_its_error(self):
        s = self.engine.open(FakeConnection())  # 'all' not confirmed yet
        self.engine.handle(s, b'{"op":"auth","token":"t","ref":1}')
        self.assertEqual((s.conn.take(), s.conn.closed), ([], []))
        self.broker.confirm("all")
        self.assertEqual(s.conn.take(), [{"op": "error", "code": "unauthorized", "ref": 1,
                                          "message": "token authentication is not "
                                                     "configured on this server"}])
        self.assertEqual(s.conn.closed, [(1008, "token authentication is not configured "
                                                "on this server")])


class ReplayTests(EngineTestCase):
    """``resume`` in the engine, with a replay the test answers when it likes."""

    def setUp(self):
        self.history = History(60, 100, 1 << 20, epoch="E")
        self.start(broker=LocalBroker(Keeper(self.history, Mailbox(60, 100, 1 << 20)), Clock()))
        self.asked = []
        self.answer = Deferred()
        self.broker.replay = lambda *args: self.asked.append(args) or self.answer

    def publish(self, data, **address):
        return self.successResultOf(self.engine.publish(Address(**address), data))

    def test_live_messages_wait_for_the_replay_and_come_once(self):
        missed = self.publish("missed", group=("g",))   # before the session is back
        s = self.open(user="ann", groups=("g",))
        self.assertEqual(self.handle(s, {"op": "resume", "ref": 1, "since": 0, "epoch": "E"}), [])
        self.assertEqual(self.asked, [(["all", "user:ann", "group:g"], 0, "E")])
        both = self.publish("both", group=("g",))        # in the replay and live
        self.assertEqual(s.conn.take(), [])
        self.answer.callback(self.history.replay(["group:g"], 0, "E", 0))
        later = self.publish("later", group=("g",))
        written = s.conn.take()
        self.assertEqual([(w["id"], w["pos"]) for w in written[:2]], [(missed, 1), (both, 2)])
        self.assertEqual(written[2], {"op": "ok", "ref": 1, "replayed": 2, "gaps": []})
        self.assertEqual(self.msg(written[3])["id"], later)
        self.assertEqual(len(written), 4)

    def test_frames_sent_during_the_replay_are_served_after_it(self):
        s = self.open(user="ann")
        self.handle(s, {"op": "resume", "ref": 1, "since": 0, "epoch": "E"})
        self.assertEqual(self.handle(s, {"op": "ping", "ref": 2}), [])
        self.answer.callback(([], []))
        self.assertEqual([w["op"] for w in s.conn.take()], ["ok", "pong"])

    def test_a_failed_replay_is_unavailable_and_lets_live_messages_go(self):
        s = self.open(user="ann")
        self.handle(s, {"op": "resume", "ref": 1, "since": 0, "epoch": "E"})
        live = self.publish("live", user=("ann",))
        self.answer.errback(RuntimeError("hub gone"))
        written = s.conn.take()
        self.assertEqual(self.msg(written[0])["id"], live)
        self.assertEqual((written[1]["op"], written[1]["code"]), ("error", "unavailable"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.answer = Deferred()  # it may try again
        self.handle(s, {"op": "resume", "ref": 2, "since": 0, "epoch": "E"})
        self.assertEqual(len(self.asked), 2)

    def test_a_session_closed_during_the_replay_is_forgotten(self):
        s = self.open(user="ann")
        self.handle(s, {"op": "resume", "ref": 1, "since": 0, "epoch": "E"})
        self.engine.close(s)
        self.answer.callback(([], []))
        self.assertEqual((s.conn.take(), self.engine.replays.held), ([], {}))

    def test_a_session_held_from_its_start_gets_the_replay_first_and_nothing_twice(self):
        s = self.open(user="ann", groups=("g",))
        self.engine.hold(s)                                   # connected with ?resume=1
        seen = self.publish("seen before", group=("g",))      # pos 1: the client had it
        missed = self.publish("missed", group=("g",))         # pos 2
        self.assertEqual(s.conn.take(), [])
        self.handle(s, {"op": "resume", "ref": 1, "since": 1, "epoch": "E"})
        live = self.publish("live", group=("g",))             # pos 3, during the replay
        self.answer.callback(self.history.replay(["group:g"], 1, "E", 0))
        # The replay has 2 and 3; the held 1 (seen) and 3 (replayed) are dropped.
        self.assertEqual([w.get("id", w["op"]) for w in s.conn.take()], [missed, live, "ok"])
        self.assertNotEqual(seen, missed)

    def test_a_session_resumes_once(self):
        s = self.open(user="ann")
        self.handle(s, {"op": "resume", "ref": 1, "since": 0, "epoch": "E"})
        self.answer.callback(([], []))
        s.conn.take()
        [error] = self.handle(s, {"op": "resume", "ref": 2, "since": 0, "epoch": "E"})
        self.assertEqual((error["code"], error["ref"]), ("bad_request", 2))
        self.assertEqual(len(self.asked), 1)

    def test_a_client_from_another_epoch_gets_every_held_message(self):
        s = self.open(user="ann", groups=("g",))
        self.engine.hold(s)
        live = self.publish("live", group=("g",))            # pos 1 in this epoch
        self.handle(s, {"op": "resume", "ref": 1, "since": 500, "epoch": "OLD"})
        self.answer.callback(([], ["group:g"]))
        written = s.conn.take()
        self.assertEqual(self.msg(written[0])["id"], live)  # not taken for one the client had
        self.assertEqual(written[1]["op"], "ok")

    def test_what_a_held_session_may_hold_is_bounded_by_max_buffered_bytes(self):
        self.start(broker=LocalBroker(Keeper(self.history, Mailbox(60, 100, 1 << 20)), Clock()), max_buffered_bytes=4096)
        s = self.open(user="ann")
        self.engine.hold(s)
        for n in range(10):
            self.publish("x" * 1000, user=("ann",))
        self.assertEqual(s.conn.closed, [(1013, "too many messages during the resume")])


class MailLaterBroker(LocalBroker):
    """A broker whose mailbox answers only when the test says."""

    def __init__(self):
        super().__init__(Keeper(History(60, 100, 1 << 20), Mailbox(60, 100, 1 << 20)))
        self.mail_answers: list[Deferred] = []

    def mail(self, user):
        d = Deferred()
        self.mail_answers.append(d)
        return d


class SessionTablesTests(EngineTestCase):
    """The engine's parts forget a closed session (engine/core.py ``close``)."""

    def test_a_closed_session_leaves_nothing_behind(self):
        self.start(broker=MailLaterBroker(), ttl=60)
        s = self.engine.open(FakeConnection())
        self.engine.handle(s, encode({"op": "resume", "since": 0, "epoch": self.broker.epoch,
                                      "ref": 1}))
        replays, auth = self.engine.replays, self.engine.auth
        self.assertIn(s, replays.resumed)  # its replay under way
        self.engine.close(s)
        self.assertEqual((auth.timers, replays.held, replays.resumed, replays.mailed,
                          self.engine.gates), ({}, {}, set(), {}, {}))

    def test_a_closed_sessions_auth_timeout_stops(self):
        self.start(auth_mode="required")
        s = self.engine.open(FakeConnection())
        timer = self.engine.auth.timers[s]
        self.engine.close(s)
        self.assertEqual((self.engine.auth.timers, timer.active()), ({}, False))

    def test_mail_that_comes_after_the_close_is_not_kept(self):
        self.start(broker=MailLaterBroker())
        s = self.engine.open(FakeConnection())
        self.engine.handle(s, b'{"op":"auth","user":"alice","ref":1}')
        self.engine.close(s)
        [answer] = self.broker.mail_answers
        answer.callback([("M1", b'{"op":"msg","id":"M1"}')])
        self.assertEqual(self.engine.replays.mailed, {})
