"""The client protocol and delivery, over real WebSockets on a loopback port.

Every test talks to a one-process server (tests.helpers.ServerTestCase) with
pushsvc.client clients and asserts the exact frames and close codes clients get.
Clients wait for delivery with ``barrier()`` (a ping answered in order), never
with sleeps; only the server's view of a closed connection, which lags the
client's by a moment, is polled with a deadline (``eventually``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults
from twisted.internet.task import deferLater

from pushsvc.client import ConnectionClosed, ServerError, connect
from pushsvc.protocol import Address
from tests.helpers import ServerTestCase, run

SESSION_ID = re.compile(r"^test\.0\.[0-9a-z]+\.[0-9a-z]+$")
MESSAGE_ID = re.compile(r"^test\.0\.[0-9a-z]+\.M[0-9a-z]+$")


def without_message(test, frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` without the (human) ``message`` of an error, which must be text."""
    frame = dict(frame)
    if frame.get("op") == "error":
        message = frame.pop("message", None)
        test.assertIsInstance(message, str)
        test.assertTrue(message)
    return frame


async def eventually(test, condition: Callable[[], bool], what: str,
                     timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            test.fail(f"still not true after {timeout} s: {what}")
        await deferLater(reactor, 0.005, lambda: None)


class WebSocketTestCase(ServerTestCase):
    """ServerTestCase plus assertions on the frames a client received."""

    async def exchange(self, client, payload: bytes, is_binary: bool = False):
        """Send one raw frame, then a barrier; the frames that came back for it."""
        before = len(client.frames)
        client.sendMessage(payload, isBinary=is_binary)
        pong = await client.barrier()
        after = client.frames[before:]
        self.assertEqual(after[-1], pong)
        return [without_message(self, f) for f in after[:-1]]

    async def ok(self, client, op: str, **fields: Any) -> None:
        """``op`` is answered by a plain ``ok`` echoing the request's ref."""
        reply = await client.request(op, **fields)
        self.assertEqual(reply, {"op": "ok", "ref": reply["ref"]})

    async def refused(self, client, op: str, code: str, **fields: Any) -> None:
        """``op`` is answered by an error frame with ``code`` (and the request's ref)."""
        try:
            reply = await client.request(op, **fields)
        except ServerError as e:
            frame = without_message(self, e.frame)
            self.assertEqual(frame, {"op": "error", "code": code, "ref": frame["ref"]})
        else:
            self.fail(f"{op} {fields} was answered {reply}, not error {code}")

    async def settle(self, *clients) -> None:
        """Every frame the server sent these clients so far has arrived."""
        await gatherResults([c.barrier() for c in clients])

    def assertDelivered(self, client, expected: list[tuple[str, dict, Any]]) -> None:
        """``client`` received exactly these messages: (id, to, data)."""
        got = [(m["id"], m["to"], m["data"]) for m in client.messages]
        self.assertEqual(got, expected, f"messages of session {client.session}")

    async def registry_emptied(self) -> None:
        """The server has taken every closed session out of every map."""
        await eventually(self, self.engine.registry.is_empty, "the registry is empty")
        self.assertEqual(self.server.broker.subscriptions, {"worker:test.0"})


class SessionTests(WebSocketTestCase):
    """welcome, auth, refs, ping; bad frames answered without ending the session."""

    def setUp(self):
        self.start_server()

    @run
    async def test_welcome_on_connect(self):
        c = await self.client()
        self.assertEqual(len(c.frames), 1)
        frame = c.frames[0]
        self.assertEqual(frame, {"op": "welcome", "session": frame["session"], "user": None,
                                 "epoch": self.server.keeper.history.epoch})
        self.assertRegex(frame["session"], SESSION_ID)
        other = await self.client()
        self.assertNotEqual(other.session, c.session)
        self.assertRegex(other.session, SESSION_ID)

    @run
    async def test_auth_welcomes_again_with_the_user(self):
        c = await self.client()
        ok = await c.request("auth", user="alice")
        self.assertEqual(c.frames[1:], [
            {"op": "welcome", "session": c.session, "user": "alice",
             "epoch": self.server.keeper.history.epoch},
            {"op": "ok", "ref": ok["ref"]},
        ])
        self.assertEqual(ok, {"op": "ok", "ref": 1})
        self.assertEqual(self.engine.registry.get(c.session).user, "alice")

    @run
    async def test_auth_as_another_user_is_forbidden(self):
        c = await self.client(user="alice")
        await self.refused(c, "auth", "forbidden", user="bob")
        self.assertEqual(self.engine.registry.get(c.session).user, "alice")
        await self.ok(c, "auth", user="alice")

    @run
    async def test_ok_echoes_string_and_number_refs(self):
        c = await self.client()
        for ref in ("abc", 7, 2.5, True):
            frames = await self.exchange(
                c, json.dumps({"op": "join", "group": "g", "ref": ref}).encode())
            self.assertEqual(frames, [{"op": "ok", "ref": ref}], f"ref {ref!r}")
        # Without a ref a successful request is not answered.
        self.assertEqual(await self.exchange(c, b'{"op":"leave","group":"g"}'), [])

    @run
    async def test_ping_gets_pong(self):
        c = await self.client()
        self.assertEqual(await c.request("ping"), {"op": "pong", "ref": 1})
        self.assertEqual(
            await self.exchange(c, b'{"op":"ping","ref":"p1"}'),
            [{"op": "pong", "ref": "p1"}])
        # The barrier's own pong is the last frame; a ref-less ping still gets one.
        before = len(c.frames)
        c.sendMessage(b'{"op":"ping"}')
        await c.barrier()
        self.assertEqual(c.frames[before], {"op": "pong"})

    @run
    async def test_bad_frames_get_errors_and_the_session_keeps_working(self):
        c = await self.client(user="alice", groups=("lobby",))
        cases = [
            (b"{not json", {"op": "error", "code": "bad_request"}),
            (b"", {"op": "error", "code": "bad_request"}),
            (b"[1, 2]", {"op": "error", "code": "bad_request"}),
            (b'"join"', {"op": "error", "code": "bad_request"}),
            (b'{"ref": 1}', {"op": "error", "code": "bad_request", "ref": 1}),
            (b'{"op": 5, "ref": 2}', {"op": "error", "code": "bad_request", "ref": 2}),
            (b'{"op": "dance", "ref": 3}', {"op": "error", "code": "unknown_op", "ref": 3}),
            (b'{"op": "join", "ref": 4}', {"op": "error", "code": "bad_request", "ref": 4}),
            (b'{"op": "join", "group": 5, "ref": 5}',
             {"op": "error", "code": "bad_request", "ref": 5}),
            (b'{"op": "join", "group": "", "ref": 6}',
             {"op": "error", "code": "bad_request", "ref": 6}),
            (b'{"op": "send", "to": {"group": "lobby"}, "ref": 7}',
             {"op": "error", "code": "bad_request", "ref": 7}),
            (b'{"op": "send", "to": {"planet": "x"}, "data": 1, "ref": 8}',
             {"op": "error", "code": "bad_request", "ref": 8}),
            (b'{"op": "send", "to": "lobby", "data": 1, "ref": 9}',
             {"op": "error", "code": "bad_request", "ref": 9}),
            (b'{"op": "send", "to": {"all": false}, "data": 1, "ref": 10}',
             {"op": "error", "code": "bad_request", "ref": 10}),
            (b'{"op": "auth", "ref": 11}', {"op": "error", "code": "bad_request", "ref": 11}),
            (b'{"op": "ping", "ref": {"a": 1}}', {"op": "error", "code": "bad_request"}),
        ]
        for payload, expected in cases:
            self.assertEqual(await self.exchange(c, payload), [expected], payload)
        # Still the same session, user and groups, and it still receives.
        self.assertEqual(c.close_code, None)
        self.assertEqual(self.engine.registry.get(c.session).groups, {"lobby"})
        msg_id = await self.push({"group": "lobby"}, "after")
        await c.barrier()
        self.assertDelivered(c, [(msg_id, {"group": "lobby"}, "after")])

    @run
    async def test_lone_surrogates_are_answered_and_the_session_keeps_working(self):
        # The JSON escape "\ud800" decodes to a str that has no UTF-8 form.
        c = await self.client(user="alice", groups=("lobby",))
        with self.assertRaises(ServerError) as caught:
            await c.request("join", group="\ud800")
        self.assertEqual(caught.exception.frame, {
            "op": "error", "ref": 3, "code": "bad_request",
            "message": "'group' must be valid Unicode (it holds a lone surrogate)"})
        cases = [
            (rb'{"op": "leave", "group": "g\udfff", "ref": 1}',
             {"op": "error", "code": "bad_request", "ref": 1}),
            (rb'{"op": "auth", "user": "\ud800", "ref": 2}',
             {"op": "error", "code": "bad_request", "ref": 2}),
            (rb'{"op": "send", "to": {"group": ["lobby", "\ud800"]}, "data": 1, "ref": 3}',
             {"op": "error", "code": "bad_request", "ref": 3}),
            (rb'{"op": "\ud800", "ref": 4}', {"op": "error", "code": "unknown_op", "ref": 4}),
            (rb'{"op": "dance", "ref": "\ud800"}',
             {"op": "error", "code": "unknown_op", "ref": "\ud800"}),
            (rb'{"op": "ping", "ref": "\udfff"}', {"op": "pong", "ref": "\udfff"}),
        ]
        for payload, expected in cases:
            self.assertEqual(await self.exchange(c, payload), [expected], payload)
        self.assertEqual([f["message"] for f in c.frames if f.get("code") == "unknown_op"],
                         ["unknown op '\ud800'", "unknown op 'dance'"])
        self.assertEqual(c.close_code, None)
        self.assertEqual(self.engine.registry.get(c.session).groups, {"lobby"})
        self.assertEqual(self.engine.registry.get(c.session).user, "alice")
        msg_id = await self.push({"group": "lobby"}, "after")
        await c.barrier()
        self.assertDelivered(c, [(msg_id, {"group": "lobby"}, "after")])

    @run
    async def test_binary_frame_is_a_bad_request(self):
        c = await self.client(user="alice", groups=("lobby",))
        frames = await self.exchange(c, b'{"op":"ping"}', is_binary=True)
        self.assertEqual(frames, [{"op": "error", "code": "bad_request"}])
        msg_id = await self.push({"user": "alice"}, 1)
        await c.barrier()
        self.assertDelivered(c, [(msg_id, {"user": "alice"}, 1)])


class LimitTests(WebSocketTestCase):
    """Message size, connection count and groups per session."""

    @run
    async def test_frame_over_max_message_bytes_closes_with_1009(self):
        self.start_server(max_message_bytes=1024)
        big = await self.client(user="big")
        other = await self.client(user="other", groups=("g",))
        # Just under the limit is fine.
        frames = await self.exchange(
            big, json.dumps({"op": "ping", "ref": "x" * 990}).encode())
        self.assertEqual(frames, [{"op": "pong", "ref": "x" * 990}])
        big.sendMessage(json.dumps({"op": "ping", "ref": "x" * 2000}).encode())
        self.assertEqual((await big.closed)[0], 1009)
        self.assertEqual(big.close_code, 1009)
        await eventually(self, lambda: self.engine.registry.get(big.session) is None,
                         "the closed session is gone")
        msg_id = await self.push({"group": "g"}, "still here")
        await other.barrier()
        self.assertDelivered(other, [(msg_id, {"group": "g"}, "still here")])

    @run
    async def test_max_connections_refuses_with_1013_until_one_leaves(self):
        self.start_server(max_connections=2)
        first = await self.client(user="a")
        await self.client(user="b")
        try:
            refused = await connect(self.url)
        except ConnectionClosed as e:
            self.assertEqual(e.code, 1013)
        else:
            self.addCleanup(refused.disconnect)
            self.fail("a third client was accepted over max_connections=2")
        self.assertEqual(len(self.engine.registry), 2)
        self.assertEqual(self.engine.counters["refused_full"], 1)
        await first.disconnect()
        await eventually(self, lambda: len(self.engine.registry) == 1, "one session left")
        third = await self.client(user="c")
        self.assertEqual(self.engine.registry.get(third.session).user, "c")
        await self.ok(third, "join", group="g")

    @run
    async def test_max_groups_per_session(self):
        self.start_server(max_groups_per_session=2)
        c = await self.client(user="alice", groups=("a", "b"))
        await self.refused(c, "join", "too_many_groups", group="c")
        # Joining a group it is already in is not a new group.
        await self.ok(c, "join", group="a")
        self.assertEqual(self.engine.registry.get(c.session).groups, {"a", "b"})
        ids = [await self.push({"group": g}, g) for g in ("a", "b", "c")]
        await c.barrier()
        self.assertDelivered(c, [(ids[0], {"group": "a"}, "a"), (ids[1], {"group": "b"}, "b")])


class DeliveryTests(WebSocketTestCase):
    """POST /api/push to each kind of address, each session at most once."""

    def setUp(self):
        self.start_server()

    @run
    async def test_to_session(self):
        c, other = await self.client(user="u"), await self.client(user="u")
        msg_id = await self.push({"session": c.session}, {"n": 1})
        await self.settle(c, other)
        self.assertDelivered(c, [(msg_id, {"session": c.session}, {"n": 1})])
        self.assertDelivered(other, [])

    @run
    async def test_data_with_a_lone_surrogate_is_delivered(self):
        # It goes out escaped ("\\ud800"), which is the same JSON.
        c = await self.client(user="u", groups=("g",))
        data = {"text": "a\ud800b", "caf\u00e9": ["\udfff"]}
        msg_id = await self.push({"user": "u"}, data)
        ok = await c.request("send", to={"group": "g"}, data="\ud800")
        await c.barrier()
        self.assertDelivered(c, [(msg_id, {"user": "u"}, data),
                                 (ok["id"], {"group": "g"}, "\ud800")])

    @run
    async def test_to_unknown_session_reaches_nobody(self):
        c = await self.client(user="u")
        await self.push({"session": c.session + "0"}, 1)
        await self.push({"session": "other.0.x.1"}, 2)
        await c.barrier()
        self.assertDelivered(c, [])

    @run
    async def test_to_user_reaches_each_of_their_sessions(self):
        phone, laptop = await self.client(user="u"), await self.client(user="u")
        other = await self.client(user="v")
        anonymous = await self.client()
        msg_id = await self.push({"user": "u"}, "hi")
        await self.settle(phone, laptop, other, anonymous)
        for c in (phone, laptop):
            self.assertDelivered(c, [(msg_id, {"user": "u"}, "hi")])
        self.assertDelivered(other, [])
        self.assertDelivered(anonymous, [])

    @run
    async def test_to_group(self):
        a = await self.client(user="a", groups=("g",))
        b = await self.client(user="b", groups=("g", "h"))
        outside = await self.client(user="c", groups=("h",))
        msg_id = await self.push({"group": "g"}, [1, 2])
        await self.settle(a, b, outside)
        for c in (a, b):
            self.assertDelivered(c, [(msg_id, {"group": "g"}, [1, 2])])
        self.assertDelivered(outside, [])

    @run
    async def test_to_tag(self):
        vip1, vip2 = await self.client(user="vip"), await self.client(user="vip")
        plain = await self.client(user="plain")
        status, body = await self.http("POST", "/api/tag", {"user": "vip", "tag": "gold"})
        self.assertEqual((status, body), (200, {"sessions": 2}))
        msg_id = await self.push({"tag": "gold"}, "shiny")
        await self.settle(vip1, vip2, plain)
        for c in (vip1, vip2):
            self.assertDelivered(c, [(msg_id, {"tag": "gold"}, "shiny")])
        self.assertDelivered(plain, [])
        # Tags are server-side only; after untag the tag reaches nobody.
        status, body = await self.http("POST", "/api/untag", {"user": "vip", "tag": "gold"})
        self.assertEqual((status, body), (200, {"sessions": 2}))
        await self.push({"tag": "gold"}, "again")
        await self.settle(vip1, vip2)
        for c in (vip1, vip2):
            self.assertDelivered(c, [(msg_id, {"tag": "gold"}, "shiny")])

    @run
    async def test_to_all(self):
        clients = [await self.client(user="a", groups=("g",)), await self.client()]
        msg_id = await self.push({"all": True}, None)
        await self.settle(*clients)
        for c in clients:
            self.assertDelivered(c, [(msg_id, {"all": True}, None)])

    @run
    async def test_a_session_matching_twice_receives_once(self):
        both = await self.client(user="u", groups=("g",))
        only_user = await self.client(user="u")
        only_group = await self.client(user="v", groups=("g",))
        neither = await self.client(user="w", groups=("h",))
        to = {"user": "u", "group": "g", "session": both.session}
        msg_id = await self.push(to, "once")
        await self.settle(both, only_user, only_group, neither)
        for c in (both, only_user, only_group):
            self.assertDelivered(c, [(msg_id, to, "once")])
        self.assertDelivered(neither, [])

    @run
    async def test_a_list_of_groups_reaches_each_member_once(self):
        in_a = await self.client(user="x", groups=("a",))
        in_b = await self.client(user="y", groups=("b",))
        in_both = await self.client(user="z", groups=("a", "b"))
        in_c = await self.client(user="w", groups=("c",))
        to = {"group": ["a", "b"]}
        msg_id = await self.push(to, "list")
        await self.settle(in_a, in_b, in_both, in_c)
        for c in (in_a, in_b, in_both):
            self.assertDelivered(c, [(msg_id, to, "list")])
        self.assertDelivered(in_c, [])

    @run
    async def test_each_message_has_its_own_id_and_arrives_in_order(self):
        c = await self.client(user="u", groups=("g",))
        sent = [(await self.push({"group": "g"}, n), {"group": "g"}, n) for n in range(5)]
        await c.barrier()
        self.assertDelivered(c, sent)
        ids = [msg_id for msg_id, _, _ in sent]
        self.assertEqual(len(set(ids)), 5)
        for msg_id in ids:
            self.assertRegex(msg_id, MESSAGE_ID)
        self.assertNotIn(c.session, ids)


class AloneTests(WebSocketTestCase):
    @run
    async def test_a_message_alone_is_written_at_once_but_after_the_turns_frames(self):
        self.start_server()
        c = await self.client(user="u")
        [conn] = self.server.ws_factory.connections
        to = Address(user=("u",))
        first, second, third = (self.engine.message(to, n) for n in range(3))
        self.engine.deliver(first)               # waits for the end of the turn
        self.engine.deliver(second, alone=True)  # so this one waits behind it
        self.assertEqual(len(conn._out), 2)
        await c.wait_for_messages(2)
        self.engine.deliver(third, alone=True)   # nothing waits: written now
        self.assertIsNone(conn._out)
        self.assertEqual(self.server.ws_factory._unflushed, [])
        await c.wait_for_messages(3)
        self.assertEqual([m["data"] for m in c.messages], [0, 1, 2])


class ClientSendTests(WebSocketTestCase):
    """A client's ``send`` and the client_send policy."""

    async def three(self):
        """alice and bob in group g, carol outside it."""
        return (await self.client(user="alice", groups=("g",)),
                await self.client(user="bob", groups=("g",)),
                await self.client(user="carol"))

    @run
    async def test_joined_policy_lets_members_send_to_their_group(self):
        self.start_server()
        alice, bob, carol = await self.three()
        ok = await alice.request("send", to={"group": "g"}, data={"text": "hi"})
        self.assertEqual(set(ok), {"op", "ref", "id"})
        self.assertEqual(ok["op"], "ok")
        await self.settle(alice, bob, carol)
        expected = {"op": "msg", "pos": 1, "id": ok["id"], "to": {"group": "g"},
                    "data": {"text": "hi"},
                    "from": {"session": alice.session, "user": "alice"}}
        self.assertEqual(alice.messages, [expected])
        self.assertEqual(bob.messages, [expected])
        self.assertEqual(carol.messages, [])

    @run
    async def test_joined_policy_forbids_anything_else(self):
        self.start_server()
        alice, bob, carol = await self.three()
        for to in ({"group": "h"}, {"group": ["g", "h"]}, {"user": "bob"},
                   {"session": bob.session}, {"tag": "t"}, {"all": True},
                   {"group": "g", "user": "carol"}):
            await self.refused(alice, "send", "forbidden", to=to, data=1)
        await self.refused(carol, "send", "forbidden", to={"group": "g"}, data=1)
        await self.settle(alice, bob, carol)
        for c in (alice, bob, carol):
            self.assertEqual(c.messages, [])

    @run
    async def test_anonymous_member_sends_with_null_user(self):
        self.start_server()
        anon = await self.client(groups=("g",))
        ok = await anon.request("send", to={"group": "g"}, data=0)
        self.assertEqual(anon.messages, [
            {"op": "msg", "pos": 1, "id": ok["id"], "to": {"group": "g"}, "data": 0,
             "from": {"session": anon.session, "user": None}}])

    @run
    async def test_any_policy_lets_clients_send_to_users(self):
        self.start_server(client_send="any")
        alice, bob, carol = await self.three()
        ok = await carol.request("send", to={"user": "bob"}, data="psst")
        await self.settle(alice, bob, carol)
        self.assertEqual(bob.messages, [
            {"op": "msg", "pos": 1, "id": ok["id"], "to": {"user": "bob"}, "data": "psst",
             "from": {"session": carol.session, "user": "carol"}}])
        self.assertEqual(alice.messages + carol.messages, [])

    @run
    async def test_none_policy_forbids_every_send(self):
        self.start_server(client_send="none")
        alice, bob, carol = await self.three()
        for to in ({"group": "g"}, {"user": "bob"}, {"all": True}):
            await self.refused(alice, "send", "forbidden", to=to, data=1)
        await self.settle(alice, bob, carol)
        self.assertEqual(alice.messages + bob.messages + carol.messages, [])


class EncodeOnceTests(WebSocketTestCase):

    @run
    async def test_a_push_to_a_group_is_prepared_once(self):
        self.start_server()
        clients = [await self.client(user=f"u{i}", groups=("g",)) for i in range(5)]
        prepared = []
        original = self.engine.prepare

        def counting_prepare(frame):
            prepared.append(frame)
            return original(frame)
        self.engine.prepare = counting_prepare
        msg_id = await self.push({"group": "g"}, {"big": "x" * 100})
        await self.settle(*clients)
        self.assertEqual(len(prepared), 1)
        expected = json.loads(prepared[0])
        self.assertEqual(expected["id"], msg_id)
        for c in clients:
            self.assertEqual(c.messages, [expected])


class MembershipTests(WebSocketTestCase):
    """leave, close, destroy and server-side join."""

    def setUp(self):
        self.start_server()

    @run
    async def test_leave_stops_delivery(self):
        leaver = await self.client(user="a", groups=("g",))
        stayer = await self.client(user="b", groups=("g",))
        first = await self.push({"group": "g"}, 1)
        await self.ok(leaver, "leave", group="g")
        second = await self.push({"group": "g"}, 2)
        await self.settle(leaver, stayer)
        self.assertDelivered(leaver, [(first, {"group": "g"}, 1)])
        self.assertDelivered(stayer, [(first, {"group": "g"}, 1), (second, {"group": "g"}, 2)])
        # Leaving a group one is not in is fine, and the last leave drops the channel.
        await self.ok(leaver, "leave", group="g")
        await stayer.request("leave", group="g")
        self.assertNotIn("group:g", self.server.broker.subscriptions)

    @run
    async def test_closing_removes_a_session_from_every_map(self):
        clients = [await self.client(user="u", groups=("g", "h")),
                   await self.client(user="u", groups=("g",)),
                   await self.client(user="v"),
                   await self.client()]
        status, _ = await self.http("POST", "/api/tag", {"user": "u", "tag": "t"})
        self.assertEqual(status, 200)
        self.assertEqual(self.server.broker.subscriptions, {
            "worker:test.0", "all", "user:u", "user:v", "group:g", "group:h", "tag:t"})
        await clients[0].disconnect()
        await eventually(self, lambda: len(self.engine.registry) == 3, "3 sessions left")
        self.assertEqual(self.server.broker.subscriptions, {
            "worker:test.0", "all", "user:u", "user:v", "group:g", "tag:t"})
        await gatherResults([c.disconnect() for c in clients[1:]])
        await self.registry_emptied()

    @run
    async def test_destroy_tells_members_and_stops_delivery(self):
        a = await self.client(user="a", groups=("g", "h"))
        b = await self.client(user="b", groups=("g",))
        outside = await self.client(user="c", groups=("h",))
        status, body = await self.http("POST", "/api/destroy", {"group": "g"})
        self.assertEqual((status, body), (200, {"sessions": 2}))
        await self.settle(a, b, outside)
        for c in (a, b):
            self.assertEqual(c.frames[-2], {"op": "left", "group": "g", "reason": "destroyed"})
        self.assertNotIn({"op": "left", "group": "g", "reason": "destroyed"}, outside.frames)
        await self.push({"group": "g"}, "gone")
        h_id = await self.push({"group": "h"}, "h")
        await self.settle(a, b, outside)
        self.assertDelivered(a, [(h_id, {"group": "h"}, "h")])
        self.assertDelivered(b, [])
        self.assertEqual(self.engine.registry.group_members("g"), set())
        self.assertNotIn("group:g", self.server.broker.subscriptions)

    @run
    async def test_server_side_join_then_group_pushes_arrive(self):
        phone, laptop = await self.client(user="u"), await self.client(user="u")
        other = await self.client(user="v")
        status, body = await self.http("POST", "/api/join", {"user": "u", "group": "g"})
        self.assertEqual((status, body), (200, {"sessions": 2, "refused": 0}))
        await self.settle(phone, laptop, other)
        for c in (phone, laptop):
            self.assertEqual(c.frames[-2], {"op": "joined", "group": "g", "reason": "server"})
        msg_id = await self.push({"group": "g"}, "welcome aboard")
        await self.settle(phone, laptop, other)
        for c in (phone, laptop):
            self.assertDelivered(c, [(msg_id, {"group": "g"}, "welcome aboard")])
        self.assertDelivered(other, [])
        # And server-side leave takes them out again.
        status, body = await self.http("POST", "/api/leave", {"user": "u", "group": "g"})
        self.assertEqual((status, body), (200, {"sessions": 2}))
        await self.settle(phone, laptop)
        for c in (phone, laptop):
            self.assertEqual(c.frames[-2], {"op": "left", "group": "g", "reason": "server"})
        await self.push({"group": "g"}, "after leave")
        await self.settle(phone, laptop)
        for c in (phone, laptop):
            self.assertDelivered(c, [(msg_id, {"group": "g"}, "welcome aboard")])


class ChurnTests(WebSocketTestCase):
    """Open and close many sessions over real sockets; every map ends empty.
    (tests/test_sessions.py churns ten thousand through the maps alone.)"""

    sessions = 2_000
    batch = 200
    users_per_batch = 50      # so each user has batch / users_per_batch sessions
    groups = 10
    # The server listens with Twisted's default backlog of 50: more connects at
    # once than that overflow it and wait a second for the SYN to be resent.
    connecting = 25

    @run
    async def test_two_thousand_sessions_leave_nothing_behind(self):
        self.start_server()
        connects = DeferredSemaphore(self.connecting)

        async def session(i):
            c = await connects.run(connect, self.url)
            await c.request("auth", user=f"u{i % self.users_per_batch}")
            await c.request("join", group=f"g{i % self.groups}")
            return c

        per_user = self.batch // self.users_per_batch
        for first in range(0, self.sessions, self.batch):
            clients = await gatherResults(
                [ensureDeferred(session(i)) for i in range(first, first + self.batch)],
                consumeErrors=True)
            self.assertEqual(len(self.engine.registry), self.batch)
            self.assertEqual(len(self.engine.registry.groups.members), self.groups)
            for user in range(0, self.users_per_batch, 10):
                status, body = await self.http(
                    "POST", "/api/tag", {"user": f"u{user}", "tag": f"t{first % 3}"})
                self.assertEqual((status, body), (200, {"sessions": per_user}))
            await gatherResults([c.disconnect() for c in clients], consumeErrors=True)
            await eventually(self, lambda: len(self.engine.registry) == 0,
                             f"sessions {first}..{first + self.batch} closed")
        await self.registry_emptied()
        await eventually(self, lambda: not self.server.ws_factory.connections,
                         "no connection left")
        self.assertEqual(self.engine.ids._sessions, self.sessions)
